"""Parallelism and checkpoints: applied *to* a finished model, never woven into its layers.

- `trainer.strategy`: auto | ddp (Lightning DDP) | fsdp (FSDP2 `fully_shard` per transformer
  block through Lightning's ModelParallelStrategy; gloo on CPU, NCCL on GPUs).
- Every checkpoint is written aside and renamed into place, so a process killed while writing
  never replaces the previous good checkpoint. fsdp checkpoints are sharded folders
  (torch.distributed.checkpoint) that load into any world size.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy

from pixword_lit.config import ConfigError

METADATA = "meta.pt"  # Lightning's name for the non-tensor part of a sharded checkpoint


def make_strategy(name: str, devices, num_nodes: int):
    if name == "fsdp":
        if not isinstance(devices, int) or devices < 1:
            raise ConfigError("trainer.devices: fsdp needs an integer number of devices per node")
        # every process is one data-parallel shard (no tensor parallelism)
        return AtomicModelParallelStrategy(data_parallel_size=devices * num_nodes,
                                           tensor_parallel_size=1)
    return name  # "auto" | "ddp" | "ddp_spawn": Lightning's own


def remove_path(path: Path) -> None:
    """Delete a checkpoint file or sharded checkpoint folder, if it exists."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def is_fsdp(strategy) -> bool:
    return isinstance(strategy, ModelParallelStrategy)


def apply_fsdp(model: torch.nn.Module, mesh) -> None:
    """FSDP2: shard each transformer block, then the rest of the model (embeddings, head)."""
    from torch.distributed.fsdp import fully_shard

    from pixword_lit.layers import Block

    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def is_sharded(module) -> bool:
    return any(_is_dtensor(p) for p in module.parameters())


def _is_dtensor(t) -> bool:
    return type(t).__name__ == "DTensor"


def _full(p: torch.Tensor) -> torch.Tensor:
    return p.full_tensor() if _is_dtensor(p) else p


def full_param_count(model: torch.nn.Module) -> int:
    return sum(_full(p).numel() for p in model.parameters())


def param_checksum(model: torch.nn.Module) -> float:
    """Sum of all parameter values in float64, on the full (unsharded) model."""
    with torch.no_grad():
        return float(sum(_full(p).detach().double().sum().item() for p in model.parameters()))


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to NAME.tmp, fsync, then os.replace: a kill mid-write keeps the old file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def remove_checkpoint(self, path) -> None:
        fs = get_filesystem(path)
        if fs.exists(path):
            fs.rm(path, recursive=True)


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """Sharded checkpoints written to NAME.tmp/ by all ranks, then swapped in by rank 0."""

    def save_checkpoint(self, checkpoint, filepath, storage_options=None):
        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(path.name + ".tmp")
        if self.global_rank == 0:
            remove_path(tmp)
        self.barrier("pixword_ckpt_tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("pixword_ckpt_written")
        if self.global_rank == 0:
            old = path.with_name(path.name + ".old")
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            remove_path(old)
        self.barrier("pixword_ckpt_swapped")

    def remove_checkpoint(self, filepath) -> None:
        if self.is_global_zero:
            remove_path(Path(filepath))


SINGLE_SUFFIX = "-single.ckpt"  # converted copies: weights without optimizer state, not resumable


def is_complete(path: Path) -> bool:
    """A checkpoint that `--resume` may use: fully written and holding the training state."""
    if path.name.endswith((".tmp", ".old", SINGLE_SUFFIX)):
        return False
    if path.is_dir():
        return (path / METADATA).exists() and (path / ".metadata").exists()
    return path.is_file() and path.suffix == ".ckpt"


def find_resume_checkpoint(run_dir: Path, resume: str) -> str:
    """`last` -> the newest complete checkpoint in run_dir/checkpoints; else a given path."""
    if resume != "last":
        p = Path(resume)
        if not p.exists() or not is_complete(p):
            raise ConfigError(f"--resume: {resume} is not a complete checkpoint")
        return str(p)
    ckpt_dir = run_dir / "checkpoints"
    found = [p for p in ckpt_dir.glob("*") if is_complete(p)] if ckpt_dir.exists() else []
    if not found:
        raise ConfigError(f"--resume last: no complete checkpoint in {ckpt_dir}")
    newest = max(found, key=lambda p: (checkpoint_step(p), p.stat().st_mtime))
    print(f"pixword: resuming from {newest} (step {checkpoint_step(newest)})", flush=True)
    return str(newest)


def checkpoint_step(path: Path) -> int:
    meta = torch.load(path / METADATA if path.is_dir() else path, map_location="cpu",
                      weights_only=False, mmap=not path.is_dir())
    return int(meta.get("global_step", 0))


def single_file_checkpoint(path: Path, out: Path | None = None) -> Path:
    """A sharded fsdp checkpoint folder -> one .ckpt file loadable by a single process."""
    if not path.is_dir():
        return path
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = out or path.with_name(path.stem + SINGLE_SUFFIX)
    tmp = out.with_name(out.name + ".tmp")
    dcp_to_torch_save(path, tmp)
    ckpt = torch.load(tmp, map_location="cpu", weights_only=False)
    ckpt.update(torch.load(path / METADATA, map_location="cpu", weights_only=False))
    # optimizer shards are dropped: the single file is for validation or fresh fine-tuning
    ckpt = {k: v for k, v in ckpt.items() if not k.startswith("optimizer_")}
    torch.save(ckpt, tmp)
    os.replace(tmp, out)
    return out
