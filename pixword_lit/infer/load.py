"""A trained run for inference: checkpoint -> model, vocabulary, folding, tokenizer, prompts.

Everything comes from the checkpoint (config, word tokenizer, fold factor or palette), so a
checkpoint copied alone to another machine still generates. Used by `pixword generate`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from data_prep.errors import BadInput
from data_prep.imageio import IMAGE_EXTS, load_rgb, png_bytes
from pixword_lit.data.elements import SkipImage
from pixword_lit.data.shards import read_shard, resolve_shards
from pixword_lit.data.stream import SampleBuilder
from pixword_lit.files import atomic_save, atomic_write
from pixword_lit.infer.export import load_module
from pixword_lit.infer.generate import GenerateError, Generation, Sampling, generate
from pixword_lit.infer.images import blank, generate_images, kept_windows, to_rgb
from pixword_lit.model.tokens import N_SPECIAL, special_tokens_problem


@dataclass
class TrainedModel:
    """A trained model ready for inference, with what turns text and images into its inputs."""

    model: torch.nn.Module  # PixWordModel, eval mode
    cfg: DictConfig
    vocab: object
    tokenizer: object  # tokenizers.Tokenizer
    builder: SampleBuilder

    def text(self, s: str) -> np.ndarray:
        if self.tokenizer is None:
            raise GenerateError("this model was trained on images only: it has no words for a prompt")
        return np.array(self.tokenizer.encode(s, add_special_tokens=False).ids, dtype=np.int64)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def encode(self, elements: list[dict], raw: dict, key: str) -> list:
        """A document's element dicts (text, or image naming a file of its shard sample `raw`)
        -> token arrays and Windows, as the training loader builds them."""
        return [self.text(e["text"]) if e["type"] == "text" else self.image(raw[e["file"]], key)
                for e in elements]

    def image(self, data: bytes, name: str):
        """Encoded image bytes -> Windows, exactly as the training loader builds them."""
        try:
            return self.builder.windows(data)
        except SkipImage as e:
            raise GenerateError(f"{name}: {e}, and this run skips such images "
                                "(data.small_images: skip)") from e


def load_run(ckpt: str, tokenizer: str | None = None, words: bool = True) -> TrainedModel:
    """`words`: the caller generates text, so the model must know words (not image-only).
    The checkpoint is read safely (weights_only; checkpoints.py), a sharded folder converted
    aside, an export folder from safetensors (export.py); a missing, damaged or hostile one
    raises CheckpointError naming the file."""
    module = load_module(ckpt)  # a checkpoint file, sharded folder or export folder (export.py)
    cfg = module.cfg
    image_only = cfg.data.mode == "image_only" or module.vocab.n_words <= N_SPECIAL
    if words and image_only:
        raise GenerateError(f"{ckpt}: this model was trained on images only (data.mode: "
                            f"{cfg.data.mode}); it never learned words to generate")
    tok = None if image_only else _tokenizer(module, tokenizer, ckpt)
    builder = SampleBuilder(cfg.model, cfg.data, module.vocab, module.folding, tok)
    return TrainedModel(module.model.eval(), cfg, module.vocab, tok, builder)


def documents(spec: str, key: str = "--data"):
    """(key, raw shard sample, element dicts, index of the last image or None) of every
    document in the mixed shards `spec` (a folder, brace pattern or pipe: URL); errors name
    the argument `key`."""
    shards = resolve_shards(spec, None, "mixed", key)
    for url in shards.urls:
        for raw in read_shard(url):
            els = json.loads(raw["json"])["elements"]
            last = max((i for i, e in enumerate(els) if e["type"] == "image"), default=None)
            yield f"{url}:{raw['__key__']}", raw, els, last


def _tokenizer(module, override: str | None, ckpt: str):
    from tokenizers import Tokenizer

    if override:
        if not Path(override).is_file():
            raise GenerateError(f"--tokenizer: {override}: no such file")
        try:
            tok = Tokenizer.from_file(override)
        except Exception as e:  # not JSON, not a tokenizer: the library's message, one line
            raise GenerateError(f"--tokenizer: {override} cannot be loaded: {e}") from None
        where = f"--tokenizer: {override}"
    elif module.hparams.get("tokenizer"):
        tok = Tokenizer.from_str(module.hparams["tokenizer"])
        where = f"{ckpt}: its stored tokenizer"
    else:
        raise GenerateError(f"{ckpt}: the checkpoint holds no word tokenizer (written before "
                            "tokenizers were stored); pass --tokenizer PATH to the run's tokenizer.json")
    problem = special_tokens_problem(tok)  # ids 0-5: the layout every word id relies on
    if problem:
        raise GenerateError(f"{where} {problem}: not the tokenizer of this run")
    if tok.get_vocab_size() > module.vocab.n_words:
        raise GenerateError(f"{where} has {tok.get_vocab_size()} words, the model "
                            f"{module.vocab.n_words}: not the tokenizer of this run")
    return tok


def read_image(path: str | Path) -> bytes:
    """Any image file -> the 8-bit RGB PNG bytes `pixword prep` would have stored."""
    try:
        return png_bytes(load_rgb(path))
    except BadInput as e:
        raise GenerateError(f"{e}") from e


def image_prompts(run: TrainedModel, paths: list[Path], before: str, after: str) -> list[dict]:
    out = []
    for p in paths:
        elements = [run.text(before)] if before else []
        elements += [run.image(read_image(p), str(p))]
        if after:
            elements.append(run.text(after))
        out.append({"input": str(p), "prompt": after, "elements": elements})
    return out


def shard_prompts(run: TrainedModel, spec: str, after: str) -> list[dict]:
    """Every document of a split whose text continues after its last image: the prompt is
    everything up to and including that image, then `after`; `truth` is the rest."""
    out = []
    for key, raw, els, last in documents(spec):
        if last is None or last == len(els) - 1:
            continue
        elements = run.encode(els[: last + 1], raw, key)
        if after:
            elements.append(run.text(after))
        truth = " ".join(e["text"] for e in els[last + 1 :] if e["type"] == "text")
        out.append({"input": key, "prompt": after, "elements": elements, "truth": truth})
    return out


def run_prompts(run: TrainedModel, prompts: list[dict], sampling: Sampling, batch_size: int) -> list[dict]:
    records = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        t0 = time.perf_counter()
        gens: list[Generation] = generate(run.model, [p["elements"] for p in chunk], run.vocab,
                                          run.cfg.data.max_seq_len, sampling)
        seconds = (time.perf_counter() - t0) / len(chunk)
        for p, g in zip(chunk, gens):
            rec = {k: v for k, v in p.items() if k != "elements"}
            rec.update(output=run.decode(g.tokens), tokens=g.tokens, stop=g.stop,
                       seconds=round(seconds, 4))
            records.append(rec)
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Written aside and renamed: an interrupted run never leaves half a file."""
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def images_in(folder: str) -> list[Path]:
    d = Path(folder)
    if not d.is_dir():
        raise GenerateError(f"--images: {folder}: not a folder")
    files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise GenerateError(f"--images: {folder}: no image files")
    return files


def images_to_files(run: TrainedModel, n: int, prompt: str, complete: str | None, keep_rows: int | None,
                    sampling, out: Path, label: str) -> dict:
    """`pixword generate --sample N` / `--complete IMAGE`: OUT/samples.png and samples.json."""
    from PIL import Image

    m = run.cfg.model
    elements = [run.text(prompt)] if prompt else []
    keep = None
    if complete:
        template = run.image(read_image(complete), complete)
        keep_rows = m.image_size // 2 if keep_rows is None else keep_rows
        keep = kept_windows(m.image_size, m.window_size, keep_rows)
    else:
        template = blank(m.image_size, m.window_size, run.vocab.pix_pad)
    samples = generate_images(run.model, elements, template, run.vocab, n, sampling, keep,
                            run.cfg.data.max_seq_len)
    folding = run.builder.folding
    panels = [to_rgb(template.pix, folding, m.image_size, m.window_size)] if complete else []
    panels += [to_rgb(smp.pix, folding, m.image_size, m.window_size) for smp in samples]
    sep = np.full((m.image_size, 2, 3), 255, np.uint8)
    row = np.concatenate([x for p in panels for x in (p, sep)][:-1], 1)
    scale = max(1, 256 // m.image_size)
    picture = Image.fromarray(np.ascontiguousarray(row.repeat(scale, 0).repeat(scale, 1)))
    atomic_save(out / "samples.png", lambda tmp: picture.save(tmp, format="PNG"))
    record = {
        "checkpoint": label, "prompt": prompt, "complete": complete,
        "kept_window_rows": int(keep.sum()) // (m.image_size // m.window_size) if keep is not None else 0,
        "temperature": sampling.temperature, "top_k": sampling.top_k, "seed": sampling.seed,
        "window_size": m.window_size, "image_size": m.image_size,
        "samples": [{"pix": smp.pix.tolist(), "logprob": smp.logprob, "sampled_pixels": smp.sampled}
                    for smp in samples],
    }
    atomic_write(out / "samples.json", json.dumps(record))
    return record
