"""fit and validate: the Trainer, its callbacks and logger, checkpoints, summary.json.

Distributed set-up lives here and in the config only (`trainer.strategy`, `devices`,
`num_nodes`); see `parallel.py` for what fsdp does to the finished model.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from pixword_lit.data.stream import PixLoader
from pixword_lit.files import write_json
from pixword_lit.fit.callbacks import PixThroughput, run_callbacks
from pixword_lit.fit.memory import keep_freed_memory
from pixword_lit.fit.preempt import (
    Preempted,
    RunControl,
    StepCheckpoint,
    disable_lightning_signals,
    requeue_slurm_job,
)
from pixword_lit.infer.captions import evaluate_run
from pixword_lit.infer.load import Run
from pixword_lit.system import checkpoints, parallel
from pixword_lit.system.build import build_datamodule, build_module, build_parts
from pixword_lit.system.checkpoints import find_resume_checkpoint
from pixword_lit.system.config import ConfigError, flatten, load_config
from pixword_lit.system.config import validate as check
from pixword_lit.system.lit_module import PixWordLit
from pixword_lit.system.parallel import AtomicCheckpointIO
from pixword_lit.system.resume import check_resume, resolve_global_batch

# each DataLoader worker builds whole, distinct batches (data.py), so __len__ is exact
warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined")


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
    # checkpoints only after a step or a validation (control.py: they all resume exactly)
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
    if SLURMEnvironment.detect():  # pixword handles preemption (control.py), not Lightning
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = L.Trainer(
        **t, strategy=strategy, callbacks=callbacks, logger=logger, plugins=plugins,
        # Lightning's own folder: pixword names every output path, so it stays empty, and
        # Lightning never finds a checkpoint there on its own (e.g. SLURM hpc_ckpt_*.ckpt)
        default_root_dir=str(run_dir / "lightning"),
    )
    disable_lightning_signals(trainer)
    return trainer


def fit(cfg: DictConfig, resume: str | None = None, overwrite: bool = False,
        anyway: bool = False) -> dict:
    """Train; returns the summary (on rank 0; None on the others). Raises control.Preempted
    (on every rank) when a preemption signal stopped the run, after recording it. `anyway`
    (--resume-anyway): resume even with another data order (system/resume.py)."""
    keep_freed_memory()  # glibc: no fresh pages every step (memory.py)
    run_dir = run_dir_of(cfg)
    control = RunControl(run_dir / "checkpoints", list(cfg.run.preempt_signals),
                         cfg.run.ckpt_every_n_steps, None)
    control.install()  # from here a signal stops the run at the next optimizer step
    try:
        return _fit(cfg, resume, overwrite, run_dir, control, anyway)
    finally:
        control.uninstall()


def _fit(cfg, resume, overwrite, run_dir: Path, control: RunControl, anyway=False):
    prepare_run_dir(run_dir, resume, overwrite)
    ckpt_path = find_resume_checkpoint(run_dir, resume) if resume else None
    control.resumed_from = [ckpt_path] if ckpt_path else []
    resolve_global_batch(cfg)  # data.global_batch_size -> trainer.accumulate_grad_batches
    if ckpt_path:  # what may not change on resume (system/resume.py): before any weights load
        resumed = check_resume(ckpt_path, cfg, anyway)
        saved, control.resume_changes = resumed.saved, resumed.changes
        if is_launcher_rank0():
            warn_schedule_change(cfg, saved["config"], resumed.step)
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    parts = build_parts(cfg, run_dir)  # shard, tokenizer and palette errors surface here
    if ckpt_path:
        checkpoints.refuse_mismatch(ckpt_path, checkpoints.derived_differences(
            saved, parts.vocab.n_words, parts.folding_state), resume=True)
    module, dm = build_module(parts), build_datamodule(parts)
    if is_launcher_rank0():
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer = make_trainer(cfg, run_dir, control=control)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except Preempted as stop:
        summary = make_summary(cfg, module, trainer, control, status="preempted")
        summary["checkpoint"] = str(stop.checkpoint)
        summary["signal"] = stop.signame
        if trainer.is_global_zero:
            write_json(run_dir / "summary.json", summary)
            print(f"pixword: {stop}", flush=True)
            requeued = requeue_slurm_job()
            if requeued:
                print(f"pixword: {requeued}", flush=True)
        raise
    # the final weights in memory (never a checkpoint Lightning would pick), whole val set
    trainer.validate(module, datamodule=dm, ckpt_path=None, verbose=False)
    summary = make_summary(cfg, module, trainer, control)
    if not trainer.is_global_zero:
        return None
    if cfg.eval.captions:
        summary.update(eval_captions_after_fit(cfg, module, parts, run_dir))
    write_json(run_dir / "summary.json", summary)
    hp = {k: v for k, v in flatten(summary["config"]).items() if isinstance(v, (int, float, str, bool))}
    metrics = {k: v for k, v in summary.items() if k.startswith(("val/", "baseline/")) and math.isfinite(v)}
    log_hparams_view(trainer.logger, hp, metrics)
    trainer.logger.finalize("success")  # the writer log_hyperparams reopened: flush it before exit
    return summary


def log_hparams_view(logger, hp: dict, metrics: dict) -> None:
    """TensorBoard's HParams view: the config, and the final metrics, which TensorBoard reads
    as the last point of each metric's own curve. (logger.log_hyperparams would also write
    the metrics again as points at step 0, drawing every val/ curve back to its start.)"""
    from torch.utils.tensorboard.summary import hparams

    writer = logger.experiment._get_file_writer()
    for part in hparams(hp, metrics):
        writer.add_summary(part)


def eval_captions_after_fit(cfg, module, parts, run_dir: Path) -> dict:
    """`eval.captions`: the reading eval of the in-memory final model on data.val (rank 0)."""
    if parallel.is_sharded(module.model):  # rank 0 alone cannot run a sharded model
        print("pixword: eval.captions skipped under fsdp; run `pixword eval captions "
              f"{run_dir}/checkpoints/last` on the converted checkpoint", flush=True)
        return {}
    e = cfg.eval
    run = Run(module.model, cfg, parts.vocab, parts.tokenizer, parts.builder)
    r = evaluate_run(run, cfg.data.val, e.prefix, e.end, run_dir / "eval", limit=e.limit)
    return {k: r[k] for k in ("eval/exact_match", "eval/cer", "eval/answer_nll")}


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


def make_summary(cfg, module, trainer, control: RunControl, status: str = "finished") -> dict:
    """The whole run, across resumes: counters and wall time travel in checkpoints."""
    tokens, pix_tokens = float(module.tokens_seen), float(module.pix_tokens_seen)  # all ranks
    # rank 0's time between batch starts, validation excluded
    train_s = next(c.train_seconds for c in trainer.callbacks if isinstance(c, PixThroughput))
    wall_s = control.wall_s()
    return {
        "status": status,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "git_commit": git_commit(),
        "seed": cfg.run.seed,
        "params": parallel.full_param_count(module.model),
        "param_checksum": parallel.param_checksum(module.model),
        "steps": int(trainer.global_step),
        "epochs": epochs_begun(trainer),
        "world_size": int(trainer.world_size),
        "tokens_seen": int(tokens),
        "pix_tokens_seen": int(pix_tokens),
        "wall_s": round(wall_s, 2),
        "train_s": round(train_s, 2),
        "pix_tokens_per_s": round(pix_tokens / train_s, 1) if train_s > 0 else None,
        "resumed_from": list(control.resumed_from),  # every checkpoint this run went through
        "resume_changes": list(control.resume_changes),  # data-order changes (--resume-anyway)
        "machine": machine(),
        # a preempted run has not validated its model: no metrics rather than older ones
        **({k: float(v) for k, v in module.last_val.items()} if status == "finished" else {}),
    }


def epochs_begun(trainer) -> int:
    """Passes over the training data begun (the last one possibly partial), from the loader's
    position: the trainer's epoch counter also counts a pass stopped at max_steps as done."""
    loader = trainer.train_dataloader
    if not isinstance(loader, PixLoader):
        return int(trainer.current_epoch)
    state = loader.state_dict()
    return state["epoch"] + (state["batches_done"] > 0)


def validate(ckpt: str, overrides: list[str]) -> dict:
    """Evaluate a checkpoint (a .ckpt file, or a sharded fsdp checkpoint folder)."""
    saved = checkpoints.saved_hparams(ckpt)  # read safely; missing or damaged -> one line
    try:
        cfg = OmegaConf.merge(load_config(), saved["config"], OmegaConf.from_dotlist(overrides))
    except Exception as e:  # OmegaConf names the key
        raise ConfigError(f"{e}") from None
    checkpoints.refuse_mismatch(ckpt, checkpoints.config_differences(
        saved["config"], OmegaConf.to_container(cfg, resolve=True), resume=False), resume=False)
    cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.num_nodes = "auto", 1, 1
    check(cfg)
    parts = build_parts(cfg, None, saved["folding_state"])
    checkpoints.refuse_mismatch(ckpt, checkpoints.derived_differences(
        saved, parts.vocab.n_words, parts.folding_state), resume=False)
    with tempfile.TemporaryDirectory() as tmp:  # a sharded folder is converted aside, not kept
        path = Path(ckpt)
        if path.is_dir():
            path = checkpoints.single_file_checkpoint(path, Path(tmp) / "single.ckpt")
        module = PixWordLit.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    trainer = make_trainer(cfg, Path(ckpt).parent, logger=False)
    trainer.validate(module, datamodule=build_datamodule(parts), ckpt_path=None, verbose=False)
    return {k: float(v) for k, v in module.last_val.items()}


def git_commit() -> str | None:
    """The source checkout's HEAD, "-dirty" with uncommitted changes; None outside git."""
    from pixword_lit.grid.launch import SOURCE_ROOT, source_commit  # the grid launcher: lazily

    sha, dirty = source_commit(SOURCE_ROOT)
    return f"{sha}-dirty" if sha and dirty else sha


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return f"{platform.machine()} {os.cpu_count()} cpus, {dev}, torch {torch.__version__}"
