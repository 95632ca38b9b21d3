"""The LightningDataModule: the training and validation loaders of a run, each rank's share
of the stream (data/stream.py), with the trainer's position for the loaders' checkpoint state.
Apart from stream.py so that DataLoader workers, which unpickle the stream, never import
Lightning."""

from __future__ import annotations

import os

import lightning as L

from pixword_lit.data.builder import SampleBuilder
from pixword_lit.data.shards import ShardSet
from pixword_lit.data.stream import DataPosition, PixLoader, ShardStream


class PixDataModule(L.LightningDataModule):
    def __init__(self, cfg, builder: SampleBuilder, train: ShardSet, val: ShardSet):
        super().__init__()
        self.cfg, self.builder, self.train_set, self.val_set = cfg, builder, train, val

    def _rank(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _trained(self) -> DataPosition:
        """The trainer's epoch and the batches of it trained on (Lightning's batch progress,
        which its own checkpoints restore), for PixLoader's checkpoint state."""
        t = self.trainer
        return DataPosition(t.current_epoch, t.fit_loop.epoch_loop.batch_progress.current.processed)

    def _rescale_progress(self, old_accum: int, new_accum: int) -> None:
        """Lightning's batch counters (per-rank micro-batches) after a resume with another
        accumulation: the same global batches done, counted in this run's micro-batches."""
        progress = self.trainer.fit_loop.epoch_loop.batch_progress
        for c in (progress.current, progress.total):
            delta = c.processed // old_accum * new_accum - c.processed
            c.ready, c.started = c.ready + delta, c.started + delta
            c.processed, c.completed = c.processed + delta, c.completed + delta

    def train_dataloader(self):
        d = self.cfg.data
        rank, world = self._rank()
        accum = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        stream = ShardStream(self.train_set, self.builder, d.batch_size, self.cfg.run.seed,
                             d.shuffle, rank, world, accumulate=accum)
        loader = PixLoader(stream, d.num_workers, self._trained, self.cfg.run.seed)
        loader.rescale_progress = self._rescale_progress
        return loader

    def val_dataloader(self):
        d = self.cfg.data
        rank, world = self._rank()
        stream = ShardStream(self.val_set, self.builder, d.batch_size, self.cfg.run.seed,
                             False, rank, world, limit=d.val_limit)
        return PixLoader(stream, min(d.num_workers, os.cpu_count() or 1), seed=self.cfg.run.seed)
