"""What may change when a run resumes from a checkpoint (`pixword fit --resume`), or when a
checkpoint is validated with overrides, and what is refused before any weights load.

Fixed: what changes parameter shapes or what the model computes (`model.*` except
`model.compile`, `data.mode`), the derived word vocabulary and folding; on resume also the
optimizer settings that its restored state would silently override. A changed schedule
length is allowed, with a warning saying what the run then follows.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pixword_lit.system import checkpoints
from pixword_lit.system.checkpoints import CheckpointError
from pixword_lit.system.config import flatten

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


def check_resume(ckpt_path: str, cfg: DictConfig, announce: bool) -> dict:
    """Refuse a resume whose config changes a fixed setting (before any data or weights are
    read); warn about a changed schedule (`announce`: this process prints). -> the
    checkpoint's hyperparameters, for `derived_differences` once the run's parts exist."""
    meta = checkpoints.read_meta(Path(ckpt_path))
    saved = checkpoints.saved_hparams(ckpt_path, meta)
    refuse_mismatch(ckpt_path, config_differences(
        saved["config"], OmegaConf.to_container(cfg, resolve=True), resume=True), resume=True)
    if announce:
        warn_schedule_change(cfg, saved["config"], int(meta.get("global_step", 0)))
    return saved


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
