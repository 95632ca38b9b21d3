"""The run folder and the Lightning Trainer of a fit or a validation: strategy, callbacks,
checkpointing (every checkpoint after a step or a validation, written atomically), logger."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from pixword_lit.fit.callbacks import run_callbacks
from pixword_lit.fit.preempt import StepCheckpoint, disable_lightning_signals
from pixword_lit.system import parallel
from pixword_lit.system.config import ConfigError
from pixword_lit.system.parallel import AtomicCheckpointIO


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.run.dir or Path(cfg.trainer.default_root_dir) / cfg.run.name)


def is_launcher_rank0() -> bool:
    """True in the process the user started (Lightning's launcher re-runs the command for the
    other local ranks with LOCAL_RANK set; torchrun sets RANK, srun SLURM_PROCID; only rank 0
    may create or clear the run folder)."""
    keys = ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID")
    return all(os.environ.get(k, "0") == "0" for k in keys)


def prepare_run_dir(run_dir: Path, resume: str | None, overwrite: bool) -> None:
    ckpts = run_dir / "checkpoints"
    if not is_launcher_rank0():
        return
    if resume is not None and ckpts.exists():
        for partial in ckpts.glob("*.tmp"):  # a write cut short by a killed run: never resumed
            print(f"pixword: removing partial checkpoint {partial}", flush=True)
            parallel.remove_path(partial)
        for old in ckpts.glob("*.old"):  # a sharded swap cut short: the previous, complete one
            target = old.with_name(old.name[: -len(".old")])
            if target.exists():
                parallel.remove_path(old)
            else:
                os.replace(old, target)
    if resume is None and ckpts.exists() and any(ckpts.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"run.dir: {run_dir} already holds checkpoints; pass --resume last to continue "
                "that run or --overwrite to start it again"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def make_trainer(cfg: DictConfig, run_dir: Path, logger=True, control=None) -> L.Trainer:
    """`logger` False (`pixword validate`): no TensorBoard and nothing written to run_dir but
    checkpoints; True: the run folder's logs, metrics and pictures too (callbacks.py)."""
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    t.pop("default_root_dir")
    strategy = parallel.make_strategy(t.pop("strategy"), t["devices"], t["num_nodes"])
    # checkpoints only after a step or a validation (fit/preempt.py: they all resume exactly)
    callbacks = [StepCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor="val/loss", mode="min",
        save_top_k=1, save_last=True, auto_insert_metric_name=False, enable_version_counter=False,
        save_on_train_epoch_end=False,
    )]
    if cfg.run.ckpt_every_n_steps:
        callbacks.append(StepCheckpoint(
            dirpath=run_dir / "checkpoints", filename="step{step:07d}", save_top_k=-1,
            every_n_train_steps=cfg.run.ckpt_every_n_steps, save_last=True,
            auto_insert_metric_name=False, enable_version_counter=False,
            save_on_train_epoch_end=False,
        ))
    if control is not None:
        callbacks.append(control)
    if logger:
        callbacks[:0] = run_callbacks(cfg, run_dir)
        callbacks.append(LearningRateMonitor(logging_interval="step"))
        logger = TensorBoardLogger(save_dir=str(run_dir), name="tb", version="",
                                   default_hp_metric=False)
    plugins = [] if parallel.is_fsdp(strategy) else [AtomicCheckpointIO()]  # fsdp: see parallel
    if SLURMEnvironment.detect():  # pixword handles preemption (fit/preempt.py), not Lightning
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = L.Trainer(
        **t, strategy=strategy, callbacks=callbacks, logger=logger, plugins=plugins,
        # Lightning's own folder: pixword names every output path, so it stays empty, and
        # Lightning never finds a checkpoint there on its own (e.g. SLURM hpc_ckpt_*.ckpt)
        default_root_dir=str(run_dir / "lightning"),
    )
    disable_lightning_signals(trainer)
    return trainer
