"""Parallelism and checkpoints: applied *to* a finished model, never woven into its layers.

- `trainer.strategy`: auto | ddp (Lightning DDP) | fsdp (FSDP2 `fully_shard` per transformer
  block through Lightning's ModelParallelStrategy; gloo on CPU, NCCL on GPUs).
- Every checkpoint is written aside and renamed into place, so a process killed while writing
  never replaces the previous good checkpoint. fsdp checkpoints are sharded folders
  (torch.distributed.checkpoint) that load into any world size. Reading checkpoints (safely),
  finding the one to resume and converting folders: `checkpoints.py`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from pixword_lit.errors import ConfigError
from pixword_lit.files import atomic_save
from pixword_lit.model.layers import Block
from pixword_lit.system import checkpoints


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
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def is_sharded(module) -> bool:
    return any(_is_dtensor(p) for p in module.parameters())


def _is_dtensor(t) -> bool:
    return isinstance(t, DTensor)


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
        save = super().save_checkpoint
        atomic_save(Path(path), lambda tmp: save(checkpoint, tmp, storage_options), fsync=True)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        """Always weights_only (tensors and plain data): see checkpoints.safe_load."""
        return checkpoints.safe_load(path, map_location=map_location or "cpu")

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

    def load_checkpoint(self, checkpoint_path, weights_only=None):
        """weights_only for meta.pt and single files; the shard index and the rank files'
        non-tensor items through checkpoints.safe_dcp_load (torch's reader unpickles them)."""
        from unittest import mock

        from lightning.fabric.strategies import model_parallel as fabric_mp

        path = Path(self.broadcast(str(checkpoint_path)))
        if path.is_dir():
            checkpoints.check_sharded(path)  # every rank: a missing rank file fails them all
        else:
            checkpoints.safe_load(path, mmap=True)
        with mock.patch.object(fabric_mp, "_distributed_checkpoint_load", checkpoints.safe_dcp_load):
            return super().load_checkpoint(path, weights_only=True)

    def remove_checkpoint(self, filepath) -> None:
        if self.is_global_zero:
            remove_path(Path(filepath))
