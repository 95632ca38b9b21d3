"""`prep llava`: the LLaVA pretraining files (chat.json + images folder or zip) -> shards.

The paper pretrains on LLaVA-CC3M-Pretrain-595K; `blip_laion_cc_sbu_558k.json`
(LLaVA-Pretrain) has the same schema: a JSON list of
`{"id", "image", "conversations": [{"from": "human", "value": "...<image>..."},
{"from": "gpt", "value": CAPTION}]}`.

- image_only: one image-only sample per entry (the paper's image-only pretraining set);
  the conversation is not read.
- mixed: one document per entry in the paper's format, as in the authors' own example
  (`Provide a brief description of the given image. <|image|>GCC_train_002582585.jpg
  <|/image|> olive oil is ...`): the human turn's text around `<image>` with the image in
  its place, then the caption (`--prompt keep`); or only the image and the caption
  (`--prompt drop`). An entry whose image is missing or unreadable is skipped whole.

Entries keep the JSON's order; the split is by image name (stable, see shards.py).
Malformed entries and missing or unreadable images are skipped and reported.
"""

import json
from pathlib import Path

from .documents import CLOSE, OPEN
from .errors import BadInput, UsageError
from .imageio import shard_image
from .mixed import _check_geometry, build_documents
from .pipeline import WORKER, run_items
from .shards import DatasetWriter, assign_splits
from .sources import MissingImage, image_spec, open_images

MODES = ("image_only", "mixed")
PROMPTS = ("keep", "drop")
IMAGE_TOKEN = "<image>"


def read_entries(path: Path) -> list:
    """The JSON list; UsageError (one line, naming the file) if it is not one."""
    try:
        data = json.loads(Path(path).read_bytes())
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e}") from e
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, list):
        raise UsageError(f"{path} is not a JSON list of entries (LLaVA chat.json format)")
    if not data:
        raise UsageError(f"{path} holds no entries")
    return data


def entry_image(entry, where: str) -> str:
    if not isinstance(entry, dict):
        raise BadInput(f"{where}: entry is not a JSON object", "malformed_entry")
    name = entry.get("image")
    if not isinstance(name, str) or not name.strip():
        raise BadInput(f"{where}: no \"image\" file name", "malformed_entry")
    return name.strip()


def entry_elements(entry, where: str, prompt: str) -> list[dict]:
    """The entry as a document in the paper's format (see the module docstring)."""
    name = entry_image(entry, where)
    turns = entry.get("conversations")
    if not isinstance(turns, list):
        raise BadInput(f"{where}: no \"conversations\" list", "malformed_entry")
    said = {}
    for turn in turns:
        if isinstance(turn, dict) and isinstance(turn.get("value"), str):
            said.setdefault(turn.get("from"), turn["value"])
    if "human" not in said or not said.get("gpt", "").strip():
        raise BadInput(f"{where}: needs a \"human\" turn and a non-empty \"gpt\" turn",
                       "malformed_entry")  # fmt: skip
    human, caption = said["human"], said["gpt"].strip()
    if any(tag in text for tag in (OPEN, CLOSE) for text in (human, caption)):
        raise BadInput(f"{where}: text contains {OPEN} or {CLOSE}", "malformed_entry")
    if human.count(IMAGE_TOKEN) != 1:
        raise BadInput(f"{where}: the human turn must hold {IMAGE_TOKEN} exactly once",
                       "malformed_entry")  # fmt: skip
    before, after = (t.strip() for t in human.split(IMAGE_TOKEN))
    image = {"type": "image", "name": name}
    parts = [before, image, after] if prompt == "keep" else [image]
    parts.append(caption)
    return [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts if p]


def build_llava(
    json_path: Path,
    images: Path,
    out: Path,
    *,
    mode: str = "image_only",
    prompt: str = "keep",
    image_size: int = 224,
    window_size: int = 16,
    max_seq_len: int = 1024,
    vocab_size: int = 32000,
    val_fraction: float = 0.05,
    shard_size: int = 1000,
    max_side: int = 224,
    store: str = "original",
    seed: int = 0,
    tokenizer: Path | None = None,
    workers: int = 1,
    progress: bool | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the LLaVA entries as image-only or mixed samples; return the report."""
    json_path, out = Path(json_path), Path(out)
    if mode not in MODES or prompt not in PROMPTS:
        raise ValueError(f"mode must be one of {MODES} and prompt one of {PROMPTS}")
    spec = image_spec(images)
    entries = read_entries(json_path)
    args = {
        "command": "llava", "json": str(json_path), "images": str(images), "out": str(out),
        "mode": mode, "val_fraction": val_fraction, "shard_size": shard_size,
        "max_side": max_side, "store": store, "seed": seed,
    }  # fmt: skip
    if mode == "image_only":
        named = []
        for i, entry in enumerate(entries):
            where = f"{json_path.name}#{i}"
            try:
                named.append((where, entry_image(entry, where), None))
            except BadInput as e:
                named.append((where, None, e))  # nothing is written for it
        split = assign_splits([n for _, n, e in named if e is None], seed, val_fraction)
        items = [(split.get(n, "train"), (where, n, e)) for where, n, e in named]
        writer = DatasetWriter(out, "images", shard_size, args, len(items), overwrite)
        if writer.complete:
            return writer.saved_report()
        config = {"images": spec, "max_side": max_side, "store": store}
        return run_items(writer, items, llava_image_work, config, workers=workers,
                         progress=progress, label="prep llava")  # fmt: skip
    _check_geometry(image_size, window_size)
    parsed = []  # (where, image name, elements or None, BadInput or None)
    for i, entry in enumerate(entries):
        where = f"{json_path.name}#{i}"
        try:
            parsed.append((where, entry_image(entry, where), entry_elements(entry, where, prompt), None))
        except BadInput as e:
            parsed.append((where, None, None, e))
    split = assign_splits([n for _, n, els, _ in parsed if els is not None], seed, val_fraction)
    documents = [(where, split.get(n, "train"), els, e) for where, n, els, e in parsed]
    args.update(prompt=prompt, image_size=image_size, window_size=window_size,
                max_seq_len=max_seq_len, vocab_size=vocab_size)  # fmt: skip
    return build_documents(
        documents, spec, out, args, image_size=image_size, window_size=window_size,
        max_seq_len=max_seq_len, vocab_size=vocab_size, shard_size=shard_size,
        max_side=max_side, store=store, tokenizer=tokenizer, require_images=True,
        workers=workers, progress=progress, overwrite=overwrite, label="prep llava",
    )  # fmt: skip


def llava_image_work(payload):
    """Worker: one entry's image -> one image-only sample, or a skip."""
    where, name, err = payload
    if err is not None:
        return [], [(where, err)]
    if "image_source" not in WORKER:
        WORKER["image_source"] = open_images(WORKER["images"])
    try:
        path, data = WORKER["image_source"].read(name)
    except MissingImage as e:
        return [], [(e.where, BadInput(f"{where}: image not found at {e.where}", "missing_image"))]
    except BadInput as e:
        return [], [(name, e)]
    try:
        img = shard_image(data, WORKER["max_side"], WORKER["store"])
    except BadInput as e:
        return [], [(path, BadInput(e.reason.replace("<bytes>", path), e.kind))]
    return [([{"type": "image", "name": name}], where, [img])], []
