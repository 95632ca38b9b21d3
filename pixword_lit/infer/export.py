"""`pixword export CKPT --out DIR`: a trained model as a folder that loads without pickle.

The folder holds

- `model.safetensors`: `PixWordLit.state_dict()`: `model.*` are `PixWordModel`'s weights,
  `color_counts`, `tokens_seen`, `pix_tokens_seen` the run's counters (`pixword validate`'s
  color-frequency baseline needs `color_counts`). safetensors is a JSON header and raw
  tensor bytes: reading it runs no code, and model hubs, timm and transformers load it;
- `config.yaml`: the run's resolved config;
- `tokenizer.json`: the word tokenizer (absent for image-only models);
- `pixword.json`: what the config does not say (word vocabulary size, folding: fold factor or
  fitted palette), the format version, and where the weights came from (source checkpoint,
  its step, git commits).

`generate`, `eval captions` and `validate` accept such a folder wherever they take a
checkpoint: `load_module` and `saved_hparams` below read either. Writing is atomic: the
folder is written aside and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from pixword_lit.system import checkpoints
from pixword_lit.system.checkpoints import CheckpointError
from pixword_lit.system.lit_module import PixWordLit

WEIGHTS, CONFIG, TOKENIZER, META = "model.safetensors", "config.yaml", "tokenizer.json", "pixword.json"
FORMAT, FORMAT_VERSION = "pixword-export", 1


class ExportError(CheckpointError):
    """A bad --out, or an export folder that cannot be read; the message names the path."""


def is_export(path) -> bool:
    """An export folder (or what is left of one, so that loading names the missing file): a
    folder with any of its files and none of a sharded fsdp checkpoint's (meta.pt, .metadata)."""
    p = Path(path)
    if not p.is_dir() or (p / checkpoints.METADATA).exists() or (p / checkpoints.DCP_INDEX).exists():
        return False
    return any((p / n).exists() for n in (META, WEIGHTS, CONFIG, TOKENIZER))


# ---- reading: a checkpoint file, a sharded folder or an export folder ----------------------
def saved_hparams(path) -> dict:
    """The stored `config`, `n_words`, `folding_state` and `tokenizer` (JSON text or None)
    of a checkpoint or an export folder, read safely; bad input -> CheckpointError."""
    if is_export(path):
        return read_export(Path(path))[0]
    return checkpoints.saved_hparams(Path(path))


def load_module(path) -> PixWordLit:
    """A checkpoint file, a sharded fsdp checkpoint folder (converted aside) or an export
    folder -> the PixWordLit it holds, on the CPU. Checkpoints are read with weights_only."""
    if is_export(path):
        return load_export(path)
    checkpoints.saved_hparams(Path(path))  # readable, and a pixword checkpoint
    return PixWordLit.load_trained(path)


def read_export(folder: Path) -> tuple[dict, dict]:
    """-> (hparams as a checkpoint stores them, pixword.json); a missing or bad file -> one line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such export folder")
    need = [META, CONFIG, WEIGHTS]
    missing = [n for n in need if not (folder / n).is_file()]
    if missing:
        raise ExportError(f"{folder}: export folder without {missing[0]} (it needs {', '.join(need)})")
    meta = _read_json(folder / META)
    if meta.get("format") != FORMAT or not isinstance(meta.get("format_version"), int):
        raise ExportError(f"{folder / META}: not a pixword export (format {meta.get('format')!r})")
    if meta["format_version"] > FORMAT_VERSION:
        raise ExportError(f"{folder / META}: format version {meta['format_version']} is newer than "
                          f"this pixword reads ({FORMAT_VERSION}); update pixword")
    for key in ("n_words", "folding_state"):
        if key not in meta:
            raise ExportError(f"{folder / META}: no {key!r}")
    try:
        config = OmegaConf.to_container(OmegaConf.load(folder / CONFIG), resolve=True)
    except Exception as e:  # OmegaConf / YAML name the position
        raise ExportError(f"{folder / CONFIG}: unreadable ({_first_line(e)})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ExportError(f"{folder / CONFIG}: not a pixword config (no model: section)")
    tokenizer = None
    if meta.get("tokenizer"):
        if not (folder / TOKENIZER).is_file():
            raise ExportError(f"{folder}: export folder without {TOKENIZER} (pixword.json names it)")
        tokenizer = (folder / TOKENIZER).read_text()
    hp = {"config": config, "n_words": int(meta["n_words"]), "folding_state": meta["folding_state"],
          "tokenizer": tokenizer}
    return hp, meta


def load_export(folder) -> PixWordLit:
    """An export folder -> the same PixWordLit its checkpoint gives (weights and counters)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    hp, _ = read_export(folder)
    try:
        module = PixWordLit(hp["config"], hp["n_words"], hp["folding_state"], hp["tokenizer"])
    except Exception as e:
        raise ExportError(f"{folder / CONFIG}: cannot build the model from it ({_first_line(e)})") from None
    try:
        state = load_file(folder / WEIGHTS, device="cpu")
    except Exception as e:  # safetensors' SafetensorError: header or sizes do not add up
        raise ExportError(f"{folder / WEIGHTS}: unreadable, truncated or damaged "
                          f"({_first_line(e)})") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"{folder / WEIGHTS}: its tensors do not fit {CONFIG} and {META} "
                          f"({_first_line(e)})") from None
    return module


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: unreadable JSON ({_first_line(e)})") from None
    if not isinstance(obj, dict):
        raise ExportError(f"{path}: not a JSON object")
    return obj


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return re.sub(r"\s+", " ", text.splitlines()[0])[:200]


# ---- writing --------------------------------------------------------------------------------
def export(ckpt, out, overwrite: bool = False, git_commit: str | None = None) -> Path:
    """Write the export folder `out` from a checkpoint (file, sharded folder, or another
    export). `git_commit`: the exporting checkout's (the CLI passes it). -> `out`."""
    from safetensors.torch import save_file

    src, out = Path(ckpt), Path(out)
    _check_out(out, overwrite)
    if is_export(src):
        hp, old = read_export(src)
        step, run_commit = old.get("global_step"), old.get("run_git_commit")
    else:
        meta = checkpoints.read_meta(src)  # missing, damaged or refused -> one line naming it
        hp, step = checkpoints.saved_hparams(src, meta), meta.get("global_step")
        run_commit = _run_commit(src)
    module = load_module(src)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    record = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "n_words": int(hp["n_words"]), "folding_state": hp["folding_state"],
        "tokenizer": TOKENIZER if hp.get("tokenizer") else None,
        "weights": "PixWordLit.state_dict(): model.* = PixWordModel; color_counts, tokens_seen, "
                   "pix_tokens_seen = the run's counters",
        "source_checkpoint": str(src.resolve()), "global_step": step,
        "git_commit": git_commit, "run_git_commit": run_commit,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(state, tmp / WEIGHTS, metadata={"format": "pt"})  # "pt": what transformers expects
        (tmp / CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.create(hp["config"])))
        shutil.copymode(tmp / CONFIG, tmp / WEIGHTS)  # safetensors writes 0600; the umask's mode
        if hp.get("tokenizer"):
            (tmp / TOKENIZER).write_text(hp["tokenizer"])
        (tmp / META).write_text(json.dumps(record, indent=2) + "\n")
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out: {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"--out: {out} is not empty; pass --overwrite to replace an earlier export")
        if not is_export(out):  # --overwrite deletes the folder: only ever an earlier export
            raise ExportError(f"--out: {out} is not empty and not a pixword export (no {META}); "
                              "--overwrite replaces only an earlier export")


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; an earlier export is moved aside first, then removed."""
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    if out.is_dir() and any(out.iterdir()):
        os.replace(out, old)
    os.replace(tmp, out)  # onto a missing or an empty folder
    shutil.rmtree(old, ignore_errors=True)


def _run_commit(src: Path) -> str | None:
    """The git commit the run was trained with: RUN/summary.json beside RUN/checkpoints/."""
    p = src.resolve()
    summary = (p.parent.parent if p.parent.name == "checkpoints" else p.parent) / "summary.json"
    try:
        return json.loads(summary.read_text()).get("git_commit")
    except (OSError, ValueError, AttributeError):
        return None
