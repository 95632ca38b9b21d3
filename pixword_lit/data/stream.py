"""Shards -> batches: a deterministic, resumable WebDataset stream (the Lightning DataModule
that serves it is data/module.py: DataLoader workers unpickle this module's stream, so it
does not import Lightning, ~4 s of CPU per fork server).

Data order (documented guarantee, tested): for epoch e the unit order is a function of
(seed, e) alone: shards are permuted, then the units inside each shard (a unit is an image
in `image_only` mode, a packed document in `mixed` mode). Global batch g is the next G units
of that order, G = processes x data.batch_size x trainer.accumulate_grad_batches: rank r
takes its contiguous share [g G + r A B, g G + (r + 1) A B) of it, cut into A micro-batches
of B, so what a rank reads follows from (g, rank, world size) alone and the units of a global
batch do not depend on how it is split. Every rank runs ceil(N / G) x A micro-batches an
epoch; a micro-batch past the end of the epoch's units is one placeholder sample that scores
nothing, and the epoch's last micro-batch with units is short, not padded (one process: the
batches are the epoch's order cut into B, as before global batches existed). A unit that
cannot be used (an image under `small_images: skip`, an unreadable one) is dropped from its
batch (a batch of only such units becomes one placeholder); the loss is one mean over the
scored targets of the global batch, so neither changes the gradient.
Batch b of a rank is built whole by DataLoader worker (b - start) % K, which is the order in
which the DataLoader collects batches from its workers, so the batches do not depend on the
number of workers. The resume position is the number of global batches done, so a run may
resume on another number of processes (or another accumulation) with the same G and read
on from the same unit. Resuming at batch b skips the units before it without decoding them.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pixword_lit.data.builder import SampleBuilder
from pixword_lit.data.elements import SkipImage, collate, empty_sample
from pixword_lit.data.shards import DataError, ShardSet, read_shard
from pixword_lit.data.workers import worker_start
from pixword_lit.model.batch import StreamBatch


@dataclass(frozen=True)
class DataPosition:
    """Where a rank is in the data: `batch` batches of epoch `epoch`'s order are done (the
    next one read is batch `batch`). Owned by `PixLoader`, saved in its checkpoint state."""

    epoch: int
    batch: int = 0

    def normalized(self, n_batches: int) -> DataPosition:
        """(epoch, all its batches done) is (epoch + 1, none done)."""
        return DataPosition(self.epoch + 1, 0) if self.batch >= n_batches else self


@dataclass
class ReadPlan:
    """What one DataLoader worker builds from a position: its batches and the shard units
    they need (each shard is read once, in one pass, and freed after its last batch)."""

    batches: list[int]  # batch indices of this worker, in order
    rows: dict[int, np.ndarray]  # batch -> its (shard, unit) rows (none: one placeholder)
    wanted: dict[int, set]  # shard -> unit indices some batch of this worker needs
    last_use: dict[int, int]  # shard -> the last batch that needs it


class ShardStream(IterableDataset):
    """Yields whole collated batches for one rank; see the module docstring for the order.

    Iterating reads from `position`, which only `PixLoader` sets (before it starts the
    workers, which each receive a copy of the stream)."""

    def __init__(self, shards: ShardSet, builder: SampleBuilder, batch_size: int, seed: int,
                 shuffle: bool, rank: int = 0, world_size: int = 1, limit: int | None = None,
                 accumulate: int = 1):
        self.shards, self.builder, self.batch_size = shards, builder, batch_size
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.limit, self.accumulate = limit, accumulate
        self.position = DataPosition(0)

    @property
    def global_batch_size(self) -> int:
        """G: the units of one optimizer step over all ranks."""
        return self.world_size * self.batch_size * self.accumulate

    def order(self, epoch: int) -> np.ndarray:
        """(N, 2) array of (shard, unit-in-shard) in this epoch's global order."""
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.shards.units)
        perm = rng.permutation(n) if self.shuffle else np.arange(n)
        parts = []
        for s in perm:  # one step per shard
            u = self.shards.units[s]
            local = rng.permutation(u) if self.shuffle else np.arange(u)
            parts.append(np.stack([np.full(u, s), local], 1))
        order = np.concatenate(parts)
        return order[: self.limit] if self.limit else order

    def _n_units(self) -> int:
        return min(self.shards.total, self.limit or self.shards.total)

    def __len__(self) -> int:
        """Micro-batches of one rank in an epoch: A per global batch."""
        return math.ceil(self._n_units() / self.global_batch_size) * self.accumulate

    def batch_span(self, i: int) -> tuple[int, int]:
        """[start, end) in the epoch's order of this rank's micro-batch i (empty past the end)."""
        g, a = divmod(i, self.accumulate)
        start = g * self.global_batch_size + (self.rank * self.accumulate + a) * self.batch_size
        n = self._n_units()
        return min(start, n), min(start + self.batch_size, n)

    def rank_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's micro-batches of the epoch as (shard, unit) rows (empty: a placeholder)."""
        order = self.order(epoch)
        return [order[slice(*self.batch_span(i))] for i in range(len(self))]

    def __iter__(self) -> Iterator[StreamBatch]:
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.read(self.plan(self.position, worker, n_workers))

    def plan(self, position: DataPosition, worker: int = 0, n_workers: int = 1) -> ReadPlan:
        """Batch b (from position.batch on) is built by worker (b - position.batch) % n_workers,
        the order in which the DataLoader collects batches from its workers."""
        order, start = self.order(position.epoch), position.batch
        batches = [i for i in range(start, len(self)) if (i - start) % n_workers == worker]
        rows = {i: order[slice(*self.batch_span(i))] for i in batches}
        wanted: dict[int, set] = {}
        last_use: dict[int, int] = {}
        for i in batches:
            for s, u in rows[i]:
                wanted.setdefault(int(s), set()).add(int(u))
                last_use[int(s)] = i
        return ReadPlan(batches, rows, wanted, last_use)

    def read(self, plan: ReadPlan) -> Iterator[StreamBatch]:
        """Build the plan's batches: read shards as first needed, decode only wanted units."""
        wanted, last_use = plan.wanted, plan.last_use
        cache: dict[int, dict] = {}
        for i in plan.batches:
            samples, skipped = [], 0
            for s, u in plan.rows[i]:
                if int(s) not in cache:
                    cache[int(s)] = self._load(int(s), wanted[int(s)])
                sample = self._build(cache[int(s)].get(int(u)), int(s), int(u))
                skipped += sample is None
                if sample is not None:  # a skipped unit is dropped, as the authors' loader does
                    samples.append(sample)
            for s in [s for s, last in last_use.items() if last == i and s in cache]:
                del cache[s]  # no later batch of this worker needs this shard
            if not samples:  # no units, or all skipped: one placeholder keeps the batch count
                samples.append(empty_sample())
            batch = collate(samples, self.builder.vocab.pix_pad, self.builder.window**2)
            batch["n_skipped"] = torch.tensor(skipped)
            batch["n_units"] = torch.tensor(len(plan.rows[i]))  # used or skipped
            batch["batch_index"] = torch.tensor(i)
            yield batch

    def _load(self, s: int, wanted: set) -> dict:
        """Raw units of shard s that this worker needs, by unit index; one pass over the tar."""
        found, n = {}, 0
        url = self.shards.urls[s]
        try:
            for raw in read_shard(url):
                try:
                    units = self.builder.units(raw)
                except Exception as e:  # broken json: its units cannot even be counted
                    _warn(f"{url}: sample {raw.get('__key__')}: unreadable metadata ({e})")
                    continue
                for unit in units:
                    if n in wanted:
                        found[n] = unit
                    n += 1
        except Exception as e:
            _warn(f"{url}: cannot read shard ({e}); its remaining units are skipped")
        return found

    def _build(self, unit, s: int, u: int):
        if unit is None:
            return None
        try:
            return self.builder.build(unit)
        except SkipImage:
            return None
        except Exception as e:
            _warn(f"{self.shards.urls[s]}: unit {u}: skipped ({type(e).__name__}: {e})")
            return None


def _warn(msg: str) -> None:
    print(f"pixword data: {msg}", file=sys.stderr, flush=True)


class PixLoader(DataLoader):
    """A DataLoader whose position in the data is saved in checkpoints (Lightning calls
    state_dict/load_state_dict on stateful loaders), so a resumed run continues with the
    next unseen batch instead of restarting the epoch.

    The position is (epoch of the data order being read, batches of it trained on): the epoch
    is the loader's own (the one its current iterator reads), not the trainer's counter, which
    Lightning advances when a fit stops at max_steps in the middle of an epoch. The first
    iterator after a resume starts at the saved position, whatever epoch the trainer is in.
    The loader has its own torch generator, so making an iterator draws nothing from the
    global RNG (whose state checkpoints restore exactly).

    `trained` (training loaders): () -> DataPosition, the trainer's epoch and the batches of
    it trained on (Lightning's count; the loader itself runs ahead by the batches prefetched).
    """

    def __init__(self, stream: ShardStream, num_workers: int,
                 trained: Callable[[], DataPosition] | None = None, seed: int = 0):
        super().__init__(stream, batch_size=None, num_workers=num_workers,
                         persistent_workers=False, pin_memory=torch.cuda.is_available(),
                         generator=torch.Generator().manual_seed(seed),
                         **worker_start(num_workers))
        self.trained = trained
        # (old A, new A) -> None: the trainer's batch counters to this run's micro-batches
        self.rescale_progress: Callable[[int, int], None] | None = None
        self._resume: DataPosition | None = None  # from a checkpoint, for the next iterator

    @property
    def position(self) -> DataPosition:
        """Where the current (or last) iterator started reading."""
        return self.dataset.position

    def __iter__(self):
        if self._resume is not None:
            start = self._resume
        else:  # a new epoch: the trainer's (validation loaders: their own, which stays 0)
            start = DataPosition(self.trained().epoch if self.trained else self.position.epoch)
        self._resume = None
        self.dataset.position = start  # the stream (and each worker's copy) reads from here
        return super().__iter__()

    def state_dict(self) -> dict:
        done = self.trained().batch if self.trained else 0
        pos = DataPosition(self.position.epoch, done).normalized(len(self.dataset))
        s = self.dataset
        return {"epoch": pos.epoch, "batches_done": pos.batch, "world_size": s.world_size,
                "accumulate": s.accumulate, "global_batch_size": s.global_batch_size,
                "global_batches_done": pos.batch // s.accumulate}

    def load_state_dict(self, state: dict) -> None:
        """The saved position in global batches, read on with this run's split of them: exact
        when the global batch size is the same (any world size and accumulation)."""
        s = self.dataset
        old_world, old_accum = int(state.get("world_size", s.world_size)), int(state.get("accumulate", 1))
        old_g = int(state.get("global_batch_size", old_world * s.batch_size * old_accum))
        pos = DataPosition(int(state["epoch"]), int(state["batches_done"]))
        if "global_batch_size" not in state and old_world > 1:
            _warn("the checkpoint was written before global batches (each rank read a block of "
                  "the epoch): the rest of this epoch follows the global-batch order")
        if (old_world, old_accum) != (s.world_size, s.accumulate):
            done, within = divmod(pos.batch, old_accum)
            if within:
                _warn(f"the checkpoint is {within} micro-batches into global batch {done}: "
                      "that global batch is read again from its start")
            if old_g != s.global_batch_size:  # only with --resume-anyway (system/resume.py)
                units = done * old_g
                done = units // s.global_batch_size
                _warn(f"the global batch size changes ({old_g} -> {s.global_batch_size}): "
                      f"resuming epoch {pos.epoch} at unit {done * s.global_batch_size} of its "
                      f"order, {units - done * s.global_batch_size} units before it read again")
            pos = DataPosition(pos.epoch, done * s.accumulate)
            if self.rescale_progress is not None:
                self.rescale_progress(old_accum, s.accumulate)
        self._resume = pos.normalized(len(s))


def palette_pixels(shards: ShardSet, builder: SampleBuilder, n: int, seed: int) -> np.ndarray:
    """n RGB pixels sampled from the first images of the shards (as the loader resizes them)."""
    rng = np.random.default_rng(seed)
    pixels, total = [], 0
    for url in shards.urls:
        for raw in read_shard(url):
            meta = json.loads(raw["json"])
            for el in meta["elements"]:
                if el["type"] != "image":
                    continue
                try:
                    px = builder.rgb(raw[el["file"]]).reshape(-1, 3)
                except Exception:
                    continue
                pixels.append(px[rng.choice(len(px), min(len(px), 256), replace=False)])
                total += len(pixels[-1])
            if total >= n:
                return np.concatenate(pixels)[:n]
    if not pixels:
        raise DataError(f"no readable images in {shards.urls[0]} to fit a palette")
    return np.concatenate(pixels)
