"""fit and validate: the Trainer, its callbacks and logger, checkpoints, summary.json.

Distributed set-up lives here and in the config only (`trainer.strategy`, `devices`,
`num_nodes`); see `parallel.py` for what fsdp does to the finished model.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from pixword_lit import parallel
from pixword_lit.build import build_datamodule, build_module, build_parts
from pixword_lit.config import ConfigError
from pixword_lit.parallel import AtomicCheckpointIO, find_resume_checkpoint

# each DataLoader worker builds whole, distinct batches (data.py), so __len__ is exact
warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined")


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.run.dir or Path(cfg.trainer.default_root_dir) / cfg.run.name)


def is_launcher_rank0() -> bool:
    """True in the process the user started (Lightning's launcher re-runs the command for the
    other local ranks with LOCAL_RANK set; only rank 0 may create or clear the run folder)."""
    return all(os.environ.get(k, "0") == "0" for k in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def prepare_run_dir(run_dir: Path, resume: str | None, overwrite: bool) -> None:
    ckpts = run_dir / "checkpoints"
    if not is_launcher_rank0():
        return
    if resume is not None and ckpts.exists():
        for partial in ckpts.glob("*.tmp"):  # a write cut short by a killed run: never resumed
            print(f"pixword: removing partial checkpoint {partial}", flush=True)
            parallel.remove_path(partial)
    if resume is None and ckpts.exists() and any(ckpts.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"run.dir: {run_dir} already holds checkpoints; pass --resume last to continue "
                "that run or --overwrite to start it again"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def make_trainer(cfg: DictConfig, run_dir: Path, logger=True) -> L.Trainer:
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    t.pop("default_root_dir")
    strategy = parallel.make_strategy(t.pop("strategy"), t["devices"], t["num_nodes"])
    callbacks = [ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor="val/loss", mode="min",
        save_top_k=1, save_last=True, auto_insert_metric_name=False, enable_version_counter=False,
    )]
    if cfg.run.ckpt_every_n_steps:
        callbacks.append(ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="step{step:07d}", save_top_k=-1,
            every_n_train_steps=cfg.run.ckpt_every_n_steps, save_last=True,
            auto_insert_metric_name=False, enable_version_counter=False,
        ))
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
        logger = TensorBoardLogger(save_dir=str(run_dir), name="tb", version="",
                                   default_hp_metric=False)
    plugins = [] if parallel.is_fsdp(strategy) else [AtomicCheckpointIO()]  # fsdp: see parallel
    return L.Trainer(
        **t, strategy=strategy, default_root_dir=str(run_dir), callbacks=callbacks,
        logger=logger, plugins=plugins,
    )


def fit(cfg: DictConfig, resume: str | None = None, overwrite: bool = False) -> dict:
    run_dir = run_dir_of(cfg)
    prepare_run_dir(run_dir, resume, overwrite)
    ckpt_path = find_resume_checkpoint(run_dir, resume) if resume else None
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    parts = build_parts(cfg, run_dir)  # shard, tokenizer and palette errors surface here
    module, dm = build_module(parts), build_datamodule(parts)
    module.run_dir = run_dir
    if is_launcher_rank0():
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer = make_trainer(cfg, run_dir)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    trainer.validate(module, datamodule=dm, verbose=False)  # the final weights, whole val set
    summary = make_summary(cfg, module, trainer, time.perf_counter() - start, ckpt_path)
    if not trainer.is_global_zero:
        return None
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


def make_summary(cfg, module, trainer, wall_s: float, resumed_from) -> dict:
    seen = module.seen.cpu()  # totals over all ranks (see PixWordLit)
    train_s = float(seen[2])  # rank 0's time between batch starts, validation excluded
    return {
        "status": "finished",
        "config": OmegaConf.to_container(cfg, resolve=True),
        "git_commit": git_commit(),
        "seed": cfg.run.seed,
        "params": parallel.full_param_count(module.model),
        "param_checksum": parallel.param_checksum(module.model),
        "steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "world_size": int(trainer.world_size),
        "tokens_seen": int(seen[0]),
        "pix_tokens_seen": int(seen[1]),
        "wall_s": round(wall_s, 2),
        "train_s": round(train_s, 2),
        "pix_tokens_per_s": round(float(seen[1]) / train_s, 1) if train_s > 0 else None,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "machine": machine(),
        **{k: float(v) for k, v in module.last_val.items()},
    }


def validate(ckpt: str, overrides: list[str]) -> dict:
    """Evaluate a checkpoint (a .ckpt file, or a sharded fsdp checkpoint folder)."""
    from pixword_lit.config import load_config
    from pixword_lit.config import validate as check
    from pixword_lit.lit_module import PixWordLit

    with tempfile.TemporaryDirectory() as tmp:  # a sharded folder is converted aside, not kept
        path = Path(ckpt)
        if path.is_dir():
            path = parallel.single_file_checkpoint(path, Path(tmp) / "single.ckpt")
        module = PixWordLit.load_from_checkpoint(path, map_location="cpu")
    cfg = OmegaConf.merge(load_config(), module.hparams.config, OmegaConf.from_dotlist(overrides))
    cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.num_nodes = "auto", 1, 1
    check(cfg)
    parts = build_parts(cfg, None, module.hparams.folding_state)
    trainer = make_trainer(cfg, Path(ckpt).parent, logger=False)
    trainer.validate(module, datamodule=build_datamodule(parts), verbose=False)
    return {k: float(v) for k, v in module.last_val.items()}


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return None


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return f"{platform.machine()} {os.cpu_count()} cpus, {dev}, torch {torch.__version__}"


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
