"""`pixword fit` and `pixword validate`, top to bottom: build the run's parts and module, make
the Trainer, fit, validate the final model, write the summary.

Distributed set-up lives in the config only (`trainer.strategy`, `devices`, `num_nodes`;
system/parallel.py); what may change on --resume is system/resume.py; the run folder and the
Trainer are fit/trainer.py; summary.json is fit/summary.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from pixword_lit.fit.memory import keep_freed_memory
from pixword_lit.fit.preempt import Preempted, RunControl
from pixword_lit.fit.summary import finish_run, record_preemption
from pixword_lit.fit.trainer import is_launcher_rank0, make_trainer, prepare_run_dir, run_dir_of
from pixword_lit.infer import export
from pixword_lit.system import checkpoints
from pixword_lit.system import resume as resume_rules
from pixword_lit.system.build import build_datamodule, build_module, build_parts
from pixword_lit.system.config import ConfigError, load_config
from pixword_lit.system.config import validate as check

# each DataLoader worker builds whole, distinct batches (data/stream.py), so __len__ is exact
warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined")


def fit(cfg: DictConfig, resume: str | None = None, overwrite: bool = False,
        anyway: bool = False) -> dict | None:
    """Train; returns the summary (on rank 0; None on the others). Raises Preempted (on every
    rank) when a preemption signal stopped the run, after recording it. `anyway`
    (--resume-anyway): resume even with another data order (system/resume.py)."""
    keep_freed_memory()  # glibc: no fresh pages every step (fit/memory.py)
    run_dir = run_dir_of(cfg)
    control = RunControl(run_dir / "checkpoints", list(cfg.run.preempt_signals),
                         cfg.run.ckpt_every_n_steps, None)
    control.install()  # from here a signal stops the run at the next optimizer step
    try:
        return _fit(cfg, resume, overwrite, run_dir, control, anyway)
    finally:
        control.uninstall()


def _fit(cfg: DictConfig, resume: str | None, overwrite: bool, run_dir, control: RunControl,
         anyway: bool = False):
    # 1. the run folder and the checkpoint to resume from, refused before anything loads
    prepare_run_dir(run_dir, resume, overwrite)
    ckpt_path = checkpoints.find_resume_checkpoint(run_dir, resume) if resume else None
    control.resumed_from = [ckpt_path] if ckpt_path else []
    resume_rules.resolve_global_batch(cfg)  # data.global_batch_size -> accumulate_grad_batches
    if ckpt_path:
        resumed = resume_rules.check_resume(ckpt_path, cfg, anyway, announce=is_launcher_rank0())
        saved, control.resume_changes = resumed.saved, resumed.changes
    # 2. build: shards, tokenizer, folding, module, data (their errors surface here)
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    parts = build_parts(cfg, run_dir)
    if ckpt_path:
        resume_rules.refuse_mismatch(ckpt_path, resume_rules.derived_differences(
            saved, parts.vocab.n_words, parts.folding_state), resume=True)
    module, dm = build_module(parts), build_datamodule(parts)
    if is_launcher_rank0():
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    # 3. the trainer, 4. fit
    trainer = make_trainer(cfg, run_dir, control=control)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except Preempted as stop:
        record_preemption(cfg, module, trainer, control, stop, run_dir)
        raise
    # 5. validate the final weights in memory (never a checkpoint Lightning would pick)
    trainer.validate(module, datamodule=dm, ckpt_path=None, verbose=False)
    # 6. the summary (rank 0)
    return finish_run(cfg, module, trainer, control, parts, run_dir)


def validate(ckpt: str, overrides: list[str]) -> dict:
    """Evaluate a checkpoint (a .ckpt file, a sharded fsdp checkpoint folder or an export folder)."""
    saved = export.saved_hparams(ckpt)  # read safely (or an export folder); bad -> one line
    try:
        cfg = OmegaConf.merge(load_config(), saved["config"], OmegaConf.from_dotlist(overrides))
    except Exception as e:  # OmegaConf names the key
        raise ConfigError(f"{e}") from None
    resume_rules.refuse_mismatch(ckpt, resume_rules.config_differences(
        saved["config"], OmegaConf.to_container(cfg, resolve=True), resume=False), resume=False)
    cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.num_nodes = "auto", 1, 1
    check(cfg)
    parts = build_parts(cfg, None, saved["folding_state"])
    resume_rules.refuse_mismatch(ckpt, resume_rules.derived_differences(
        saved, parts.vocab.n_words, parts.folding_state), resume=False)
    module = export.load_module(ckpt)  # a sharded folder is converted aside, not kept
    trainer = make_trainer(cfg, Path(ckpt).parent, logger=False)
    trainer.validate(module, datamodule=build_datamodule(parts), ckpt_path=None, verbose=False)
    return {k: float(v) for k, v in module.last_val.items()}
