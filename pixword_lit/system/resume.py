"""What may change on `pixword fit --resume`, checked before any weights load.

- Fixed, always (`FIXED`, `FIXED_ON_RESUME` here): what the model is and computes (`model.*` but
  `model.compile`, `data.mode`) and what the optimizer state restores (`optim.lr`, `betas`,
  `eps`, `weight_decay`); the word vocabulary and the folding (after the data is read).
- Fixed for the data order, unless `--resume-anyway` (here): the data (`data.train`,
  `data.val`), the order (`run.seed`, `data.shuffle`) and the global batch size G = processes
  x `data.batch_size` x `trainer.accumulate_grad_batches`. With these unchanged a resumed run
  trains on the same samples in the same global order as the uninterrupted one, on any number
  of processes that divides G (stream.py). `--resume-anyway` goes on with a warning and the
  changes are recorded in summary.json (`resume_changes`).
- Free: everything else (world size, batch size and accumulation at the same G, workers,
  precision, max_steps, validation and checkpoint intervals, ...).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pixword_lit.system import checkpoints
from pixword_lit.system.checkpoints import CheckpointError
from pixword_lit.system.config import ConfigError, flatten

# Settings that change parameter shapes or what the model computes and predicts: a checkpoint
# only continues (or is validated) with the values it was trained with.
FIXED = ("model.", "data.mode")
FREE = ("model.compile",)  # how the model runs, not what it computes: may change on resume
# Resume only: the optimizer state in the checkpoint restores these, so a new value would be
# silently ignored.
FIXED_ON_RESUME = ("optim.lr", "optim.betas", "optim.eps", "optim.weight_decay")
COMPONENTS = ("model.folding.", "model.attention.", "model.embedding.")


def config_differences(saved: dict, now: dict, resume: bool) -> list[str]:
    """'key: A in the checkpoint, B now' for every fixed key whose value differs."""
    keys = FIXED + (FIXED_ON_RESUME if resume else ())
    a, b = flatten(saved), flatten(now)
    out = []
    for k in sorted(set(a) | set(b)):
        if (not k.startswith(keys) and k not in keys) or k in FREE:
            continue
        if k in a and k in b:
            if a[k] != b[k]:
                out.append(f"{k}: {a[k]!r} in the checkpoint, {b[k]!r} now")
        elif _related(k, b if k in a else a):  # e.g. a component parameter only one side has
            out.append(f"{k}: {a.get(k, '(not set)')!r} in the checkpoint, "
                       f"{b.get(k, '(not set)')!r} now")
    return [s.replace("'(not set)'", "(not set)") for s in out]


def derived_differences(hp: dict, n_words: int, folding_state: dict) -> list[str]:
    """What the config alone does not show: the word vocabulary (tokenizer) and the folding
    (a fitted palette)."""
    out = []
    if int(hp.get("n_words", n_words)) != int(n_words):
        out.append(f"word vocabulary (data.tokenizer / model.vocab_size): {hp['n_words']} tokens "
                   f"in the checkpoint, {n_words} now")
    old = hp.get("folding_state")
    if old is not None and old != folding_state:
        out.append(f"folding: {_describe_folding(old)} in the checkpoint, "
                   f"{_describe_folding(folding_state)} now")
    return out


def _describe_folding(state: dict) -> str:
    if state.get("name") == "palette":
        pal = state.get("palette") or []
        return f"a {len(pal)}-color palette starting {pal[:1]}"
    return f"{state.get('name')} factor {state.get('factor')}"


def refuse_mismatch(path, differences: list[str], resume: bool) -> None:
    if not differences:
        return
    todo = ("drop these overrides (or set them back in the config) to continue that run, or "
            "start a new run with --overwrite or another run.dir" if resume else
            "drop these overrides: validate evaluates the checkpoint's own model")
    raise CheckpointError(f"{path} was trained with other settings: {'; '.join(differences)}. "
                          f"To use it, {todo}")


def _related(key: str, other: dict) -> bool:
    """A key only one side has still differs when the other side sets its parent or its
    children (null vs a mapping), or it is a component's parameter; a key the other side lacks
    entirely is a schema change and is not compared."""
    return key.startswith(COMPONENTS) or any(
        key.startswith(o + ".") or o.startswith(key + ".") for o in other)


def schedule_length(cfg) -> int:
    return cfg["optim"]["decay_steps"] or max(cfg["trainer"]["max_steps"], 1)


def warn_schedule_change(cfg: DictConfig, before: dict, step: int) -> None:
    """--resume with another cosine length (decay_steps null and max_steps changed): say so.
    `before`: the checkpoint's config, `step`: its global step."""
    old, new = schedule_length(before), schedule_length(cfg)
    if old == new:
        return
    print(
        f"pixword fit: warning: the learning-rate schedule changes at step {step}: steps 1-{step} "
        f"followed a cosine decay over {old} steps, the rest follows one over {new} steps "
        f"(optim.decay_steps is null, so the length is trainer.max_steps, {old} -> {new}). "
        f"Pass optim.decay_steps={old} to continue the original schedule; for a run that matches "
        f"one trained straight to {new}, set optim.decay_steps={new} from its start.",
        file=sys.stderr, flush=True,
    )


DATA_ORDER = ("data.train", "data.val", "data.shuffle", "run.seed")
GLOBAL_BATCH = "global batch size"


def world_size(cfg) -> int:
    """Processes of a run from its trainer settings (Lightning's reading of `devices`)."""
    t = cfg["trainer"]
    devices, nodes = t["devices"], int(t.get("num_nodes", 1) or 1)
    if isinstance(devices, str) and devices not in ("auto", "-1"):
        devices = [d for d in devices.split(",") if d.strip()] if "," in devices else int(devices)
    if devices in ("auto", -1, "-1"):  # every GPU there is; on CPU one process
        gpu = t["accelerator"] in ("gpu", "cuda") or (
            t["accelerator"] == "auto" and torch.cuda.is_available())
        devices = torch.cuda.device_count() if gpu else 1
    n = len(devices) if isinstance(devices, (list, tuple)) else int(devices)
    return max(n, 1) * nodes


def global_batch_size(cfg) -> int:
    return world_size(cfg) * int(cfg["data"]["batch_size"]) * int(cfg["trainer"]["accumulate_grad_batches"])


def resolve_global_batch(cfg: DictConfig) -> None:
    """`data.global_batch_size` set: trainer.accumulate_grad_batches = G / (processes x B)."""
    g = cfg.data.get("global_batch_size")
    if g is None:
        return
    per_step = world_size(cfg) * cfg.data.batch_size
    if g < 1 or g % per_step:
        raise ConfigError(f"data.global_batch_size: {g} is not a multiple of processes x "
                          f"data.batch_size = {world_size(cfg)} x {cfg.data.batch_size}")
    accum = g // per_step
    if cfg.trainer.accumulate_grad_batches not in (1, accum):
        raise ConfigError(f"data.global_batch_size: {g} needs trainer.accumulate_grad_batches "
                          f"{accum} on {world_size(cfg)} processes, not "
                          f"{cfg.trainer.accumulate_grad_batches}; set one of the two")
    cfg.trainer.accumulate_grad_batches = accum


def saved_global_batch(meta: dict, config: dict) -> int:
    """G of the run that wrote a checkpoint: its loader's record, else from its config."""
    try:
        state = meta["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
        if "global_batch_size" in state:
            return int(state["global_batch_size"])
        world = int(state["world_size"])  # written before global batches: G = W x B x A
        return world * int(config["data"]["batch_size"]) * int(config["trainer"]["accumulate_grad_batches"])
    except (KeyError, IndexError, TypeError):
        return global_batch_size(config)


@dataclass
class Resumed:
    """A checked resume: the checkpoint's stored hyper-parameters, its step, and the
    data-order changes let through by --resume-anyway (for summary.json)."""

    saved: dict
    step: int
    changes: list[dict] = field(default_factory=list)


def check_resume(ckpt_path: str, cfg: DictConfig, anyway: bool = False,
                 announce: bool = True) -> Resumed:
    """Refuse a resume that changes what the checkpoint fixes (CheckpointError, one line
    naming each key and both values); data-order changes pass with `anyway`, warned; a
    changed schedule length is warned (`announce`: this process prints)."""
    meta = checkpoints.read_meta(Path(ckpt_path))
    saved = checkpoints.saved_hparams(ckpt_path, meta)
    now = OmegaConf.to_container(cfg, resolve=True)
    refuse_mismatch(ckpt_path, config_differences(
        saved["config"], now, resume=True), resume=True)
    step = int(meta.get("global_step", 0))
    if announce:
        warn_schedule_change(cfg, saved["config"], step)
    changes = order_changes(saved["config"], now, saved_global_batch(meta, saved["config"]))
    if changes and not anyway:
        said = "; ".join(f"{c['key']}: {c['checkpoint']!r} in the checkpoint, {c['now']!r} now"
                         for c in changes)
        raise CheckpointError(
            f"{ckpt_path}: --resume would change the data order: {said}. Set them back to "
            "continue that run exactly, or pass --resume-anyway to go on with the change "
            "(recorded in summary.json)")
    for c in changes:
        print(f"pixword fit: warning: --resume-anyway: {c['key']} changes at step {step} "
              f"({c['checkpoint']!r} -> {c['now']!r}); the run no longer follows one data "
              "order", file=sys.stderr, flush=True)
    return Resumed(saved, step, [{**c, "checkpoint_path": str(ckpt_path), "step": step}
                                 for c in changes])


def order_changes(saved: dict, now: dict, saved_g: int) -> list[dict]:
    """The data-order settings that differ: [{key, checkpoint, now}]."""
    a, b = flatten(saved), flatten(now)
    out = [{"key": k, "checkpoint": a.get(k), "now": b.get(k)}
           for k in DATA_ORDER if a.get(k) != b.get(k)]
    g = global_batch_size(now)
    if saved_g != g:
        out.append({"key": GLOBAL_BATCH, "checkpoint": saved_g, "now": g})
    return out
