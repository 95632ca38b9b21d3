"""What a fit leaves in its run folder besides checkpoints: summary.json (the whole run across
resumes: counters, wall time, commit, machine, final metrics), the HParams view, and the
caption eval of the final model."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import OmegaConf

from pixword_lit.data.stream import PixLoader
from pixword_lit.files import write_json
from pixword_lit.fit.callbacks import PixThroughput
from pixword_lit.fit.hparams_view import log_hparams_view
from pixword_lit.fit.preempt import RunControl, requeue_slurm_job
from pixword_lit.infer.captions import SUMMARY_KEYS, evaluate_run
from pixword_lit.infer.load import TrainedModel
from pixword_lit.provenance import git_commit, machine
from pixword_lit.system import parallel
from pixword_lit.system.config import flatten


def record_preemption(cfg, module, trainer, control: RunControl, stop, run_dir: Path) -> None:
    """A preempted run's summary.json (status, the checkpoint it stopped at, the signal), and
    the SLURM requeue where the run is a SLURM job (rank 0)."""
    summary = make_summary(cfg, module, trainer, control, status="preempted")
    summary["checkpoint"] = str(stop.checkpoint)
    summary["signal"] = stop.signame
    if trainer.is_global_zero:
        write_json(run_dir / "summary.json", summary)
        print(f"pixword: {stop}", flush=True)
        requeued = requeue_slurm_job()
        if requeued:
            print(f"pixword: {requeued}", flush=True)


def finish_run(cfg, module, trainer, control: RunControl, parts, run_dir: Path) -> dict | None:
    """After the final validation: summary.json (with the caption eval when `eval.captions`)
    and the HParams view; -> the summary on rank 0, None elsewhere."""
    summary = make_summary(cfg, module, trainer, control)
    if not trainer.is_global_zero:
        return None
    if cfg.eval.captions:
        summary.update(eval_captions_after_fit(cfg, module, parts, run_dir))
    write_json(run_dir / "summary.json", summary)
    hp = {k: v for k, v in flatten(summary["config"]).items() if isinstance(v, (int, float, str, bool))}
    metrics = {k: v for k, v in summary.items() if k.startswith(("val/", "baseline/")) and math.isfinite(v)}
    log_hparams_view(trainer.logger, hp, metrics, run_dir, cfg.run.name)  # grid runs: hparams_view
    trainer.logger.finalize("success")  # the writer log_hyperparams reopened: flush it before exit
    return summary


def eval_captions_after_fit(cfg, module, parts, run_dir: Path) -> dict:
    """`eval.captions`: the reading eval of the in-memory final model on data.val (rank 0)."""
    if parallel.is_sharded(module.model):  # rank 0 alone cannot run a sharded model
        print("pixword: eval.captions skipped under fsdp; run `pixword eval captions "
              f"{run_dir}/checkpoints/last` on the converted checkpoint", flush=True)
        return {}
    e = cfg.eval
    run = TrainedModel(module.model, cfg, parts.vocab, parts.tokenizer, parts.builder)
    r = evaluate_run(run, cfg.data.val, e.prefix, e.end, run_dir / "eval", limit=e.limit)
    return {k: r[k] for k in SUMMARY_KEYS}


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
        **train_flops(module, trainer),
        "resumed_from": list(control.resumed_from),  # every checkpoint this run went through
        "resume_changes": list(control.resume_changes),  # data-order changes (--resume-anyway)
        "machine": machine(),
        # a preempted run has not validated its model: no metrics rather than older ones
        **({k: float(v) for k, v in module.last_val.items()} if status == "finished" else {}),
    }


def train_flops(module, trainer) -> dict:
    """`flops_per_batch` (one training step on one process's first batch, as `pixword bench`
    counts it) and `train_flops` = that x batches trained on all processes; {} where not
    counted (fsdp). Exact when every batch has the first one's shape (image-only data)."""
    per = getattr(module, "flops_per_batch", None)
    if per is None:
        return {}
    batches = int(trainer.global_step) * int(trainer.accumulate_grad_batches) * int(trainer.world_size)
    return {"flops_per_batch": int(per), "train_flops": float(per) * batches}


def epochs_begun(trainer) -> int:
    """Passes over the training data begun (the last one possibly partial), from the loader's
    position: the trainer's epoch counter also counts a pass stopped at max_steps as done."""
    loader = trainer.train_dataloader
    if not isinstance(loader, PixLoader):
        return int(trainer.current_epoch)
    state = loader.state_dict()
    return state["epoch"] + (state["batches_done"] > 0)
