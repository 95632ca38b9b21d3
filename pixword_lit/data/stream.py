"""Shards -> batches: a deterministic, resumable WebDataset stream and the DataModule.

Data order (documented guarantee, tested): for epoch e the unit order is a function of
(seed, e) alone: shards are permuted, then the units inside each shard (a unit is an image
in `image_only` mode, a packed document in `mixed` mode). With world size W each rank takes
a contiguous block of ceil(N/W) units; ranks whose block is short get placeholder samples
that score nothing, so every rank runs the same number of batches and every unit is scored
exactly once per epoch. A unit that cannot be used (an image under `small_images: skip`, an
unreadable one) is dropped from its batch (a batch of only such units becomes one placeholder);
the loss is one mean over the scored targets of all ranks, so neither changes the gradient.
Batch b of a rank is built whole by DataLoader worker (b - start) % K, which is the order in
which the DataLoader collects batches from its workers, so the batches do not depend on the
number of workers; only W changes them. Resuming at batch b skips the units before it
without decoding them.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pixword_lit.data.elements import (
    SkipImage,
    build_sample,
    collate,
    empty_sample,
    image_windows,
    resize_longer_side,
)
from pixword_lit.data.shards import DataError, ShardSet, read_shard
from pixword_lit.data.workers import worker_start
from pixword_lit.model.batch import StreamBatch
from pixword_lit.model.tokens import Vocab


class SampleBuilder:
    """Raw shard sample -> model-ready sample arrays (runs in DataLoader workers)."""

    def __init__(self, mcfg, dcfg, vocab: Vocab, folding, tokenizer=None):
        self.size, self.window = mcfg.image_size, mcfg.window_size
        self.mode, self.max_seq_len = dcfg.mode, dcfg.max_seq_len
        self.small_images, self.resample = dcfg.small_images, dcfg.resample
        self.rounding = dcfg.get("short_side_rounding", "floor")  # configs saved before it existed
        self.vocab, self.folding, self.tokenizer = vocab, folding, tokenizer

    def rgb(self, data: bytes) -> np.ndarray:
        img = Image.open(io.BytesIO(data))
        img = img.convert("RGB")  # shards hold 8-bit RGB already; this only guards the type
        img = resize_longer_side(img, self.size, self.small_images, self.resample, self.rounding)
        return np.asarray(img, dtype=np.uint8)

    def windows(self, data: bytes):
        return image_windows(self.rgb(data), self.size, self.window, self.folding, self.vocab)

    def units(self, raw: dict) -> list[dict]:
        """Split a raw sample into the units of this mode (images, or the whole document)."""
        meta = json.loads(raw["json"])
        if self.mode == "image_only":
            return [{"image": raw[el["file"]]} for el in meta["elements"] if el["type"] == "image"]
        return [{"elements": meta["elements"], "raw": raw}]

    def build(self, unit: dict) -> dict:
        if "image" in unit:
            return build_sample([self.windows(unit["image"])], self.vocab, self.max_seq_len)
        elements = []
        for el in unit["elements"]:
            if el["type"] == "text":
                elements.append(np.array(self.tokenizer.encode(el["text"], add_special_tokens=False).ids))
            else:
                try:
                    elements.append(self.windows(unit["raw"][el["file"]]))
                except SkipImage:
                    continue
        return build_sample(elements, self.vocab, self.max_seq_len)


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
    units: np.ndarray  # (N, 2) the rank's (shard, unit) rows of the epoch; -1 rows: placeholders
    wanted: dict[int, set]  # shard -> unit indices some batch of this worker needs
    last_use: dict[int, int]  # shard -> the last batch that needs it


class ShardStream(IterableDataset):
    """Yields whole collated batches for one rank; see the module docstring for the order.

    Iterating reads from `position`, which only `PixLoader` sets (before it starts the
    workers, which each receive a copy of the stream)."""

    def __init__(self, shards: ShardSet, builder: SampleBuilder, batch_size: int, seed: int,
                 shuffle: bool, rank: int = 0, world_size: int = 1, limit: int | None = None):
        self.shards, self.builder, self.batch_size = shards, builder, batch_size
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.limit = limit
        self.position = DataPosition(0)

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

    def _per_rank(self) -> int:
        n = min(self.shards.total, self.limit or self.shards.total)
        return math.ceil(n / self.world_size)

    def __len__(self) -> int:
        return math.ceil(self._per_rank() / self.batch_size)

    def rank_units(self, epoch: int) -> np.ndarray:
        """This rank's units; rows of -1 are placeholders that score nothing."""
        per = self._per_rank()
        mine = self.order(epoch)[self.rank * per : (self.rank + 1) * per]
        pad = np.full((per - len(mine), 2), -1)
        return np.concatenate([mine, pad]) if len(pad) else mine

    def __iter__(self) -> Iterator[StreamBatch]:
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.read(self.plan(self.position, worker, n_workers))

    def plan(self, position: DataPosition, worker: int = 0, n_workers: int = 1) -> ReadPlan:
        """Batch b (from position.batch on) is built by worker (b - position.batch) % n_workers,
        the order in which the DataLoader collects batches from its workers."""
        units = self.rank_units(position.epoch)
        b, start = self.batch_size, position.batch
        batches = [i for i in range(start, len(self)) if (i - start) % n_workers == worker]
        wanted: dict[int, set] = {}
        last_use: dict[int, int] = {}
        for i in batches:
            for s, u in units[i * b : (i + 1) * b]:
                if s >= 0:
                    wanted.setdefault(int(s), set()).add(int(u))
                    last_use[int(s)] = i
        return ReadPlan(batches, units, wanted, last_use)

    def read(self, plan: ReadPlan) -> Iterator[StreamBatch]:
        """Build the plan's batches: read shards as first needed, decode only wanted units."""
        b, units, wanted, last_use = self.batch_size, plan.units, plan.wanted, plan.last_use
        cache: dict[int, dict] = {}
        for i in plan.batches:
            rows = units[i * b : (i + 1) * b]
            samples, skipped = [], 0
            for s, u in rows:
                if s < 0:
                    samples.append(empty_sample())
                    continue
                if int(s) not in cache:
                    cache[int(s)] = self._load(int(s), wanted[int(s)])
                sample = self._build(cache[int(s)].get(int(u)), int(s), int(u))
                skipped += sample is None
                if sample is not None:  # a skipped unit is dropped, as the authors' loader does
                    samples.append(sample)
            for s in [s for s, last in last_use.items() if last == i and s in cache]:
                del cache[s]  # no later batch of this worker needs this shard
            if not samples:  # every unit skipped: one placeholder keeps this batch (and the count)
                samples.append(empty_sample())
            batch = collate(samples, self.builder.vocab.pix_pad, self.builder.window**2)
            batch["n_skipped"] = torch.tensor(skipped)
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
        return {"epoch": pos.epoch, "batches_done": pos.batch, "world_size": self.dataset.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("world_size", self.dataset.world_size) != self.dataset.world_size:
            _warn("resuming with a different world size: the data order of this epoch changes")
        pos = DataPosition(int(state["epoch"]), int(state["batches_done"]))
        self._resume = pos.normalized(len(self.dataset))


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

    def train_dataloader(self):
        d = self.cfg.data
        rank, world = self._rank()
        stream = ShardStream(self.train_set, self.builder, d.batch_size, self.cfg.run.seed,
                             d.shuffle, rank, world)
        return PixLoader(stream, d.num_workers, self._trained, self.cfg.run.seed)

    def val_dataloader(self):
        d = self.cfg.data
        rank, world = self._rank()
        stream = ShardStream(self.val_set, self.builder, d.batch_size, self.cfg.run.seed,
                             False, rank, world, limit=d.val_limit)
        return PixLoader(stream, min(d.num_workers, os.cpu_count() or 1), seed=self.cfg.run.seed)
