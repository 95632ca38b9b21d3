"""Running a build's inputs through worker processes, in order, into a DatasetWriter.

Each input is an item `(split, payload)`; a worker turns a payload into
`(samples, skips)`: samples are `(elements, source, [StoredImage, ...])`, skips are
`(path, BadInput)`. All decoding and encoding happens in the workers; the parent only
writes tar members in item order (`Pool.imap`), so the shards do not depend on the
number of workers. Workers are started with "spawn" (no fork of a process that may hold
threads, e.g. the tokenizers library's); their configuration arrives through
`init_worker`, which a one-worker run calls in-process instead.
"""

import multiprocessing
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable

from PIL import Image

from pixword_lit.provenance import usable_cores

from .shards import DatasetWriter

# Per-process settings of the current build (tokenizer, image source, ...), set by
# init_worker in every worker and, for --workers 1, in the calling process.
WORKER: dict = {}


def default_workers() -> int:
    """All cores this process may use."""
    return usable_cores()


def init_worker(config: dict) -> None:
    WORKER.clear()
    WORKER.update(config)
    # The parent's decompression-bomb limit holds in the workers too.
    Image.MAX_IMAGE_PIXELS = config["max_image_pixels"]
    if config.get("tokenizer_json") is not None:
        from tokenizers import Tokenizer

        WORKER["tokenizer"] = Tokenizer.from_str(config["tokenizer_json"])


def run_items(
    writer: DatasetWriter,
    items: list[tuple[str, object]],
    work: Callable,
    config: dict,
    *,
    workers: int = 1,
    progress: bool | None = None,
    label: str = "prep",
) -> dict:
    """Process every item the writer still wants, write its samples, finish; the report."""
    todo = [(i, split, payload) for i, (split, payload) in enumerate(items) if writer.wants(i, split)]
    config = {**config, "max_image_pixels": Image.MAX_IMAGE_PIXELS}
    bar = Progress(len(items), len(items) - len(todo), label, progress)
    results = _results([payload for _, _, payload in todo], work, config, workers)
    try:
        for (i, split, _), (samples, skips) in zip(todo, results):
            for path, err in skips:
                writer.skip(i, split, path, err.kind, err.reason)
            for elements, source, images in samples:
                writer.add(i, split, elements, source, images)
            writer.item_done(i, split)
            bar.update()
    except BaseException:
        writer.abandon()
        raise
    finally:
        results.close()  # stops the pool now, not when the generator is collected
        bar.close()
    return writer.finish(len(items))


def _results(payloads: list, work: Callable, config: dict, workers: int):
    if workers > 1 and not _can_spawn():
        warnings.warn("worker processes cannot start when the main program is read from "
                      "stdin (spawn re-imports it); using 1 worker", stacklevel=3)  # fmt: skip
        workers = 1
    if workers <= 1 or len(payloads) <= 1:
        init_worker(config)
        yield from map(work, payloads)
        return
    # Chunks small enough that all workers stay busy and results flow back steadily.
    chunk = max(1, min(16, len(payloads) // (4 * workers)))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_pool_init, initargs=(config,)) as pool:
        yield from pool.imap(work, payloads, chunksize=chunk)


def _can_spawn() -> bool:
    """Spawned workers re-import the main module from its file; with `python -` there is
    none, and a Pool would keep replacing workers that die at start-up."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


def _pool_init(config: dict) -> None:
    # Ctrl-C is the parent's to handle (it stops the pool); workers would only add
    # one traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    init_worker(config)


class Progress:
    """One self-overwriting stderr line: done/total, rate and ETA. Only on a terminal
    (enabled=None asks stderr.isatty()), so logs and CI output stay clean."""

    def __init__(self, total: int, done: int, label: str, enabled: bool | None = None):
        self.total, self.done, self.label = total, done, label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = self.last = time.monotonic()
        self.new = 0  # items processed by this run (the rate ignores resumed ones)
        if self.enabled:
            self._draw()

    def update(self) -> None:
        self.done += 1
        self.new += 1
        now = time.monotonic()
        if self.enabled and (now - self.last >= 0.2 or self.done == self.total):
            self.last = now
            self._draw()

    def _draw(self) -> None:
        elapsed = time.monotonic() - self.start
        rate = self.new / elapsed if elapsed > 0 else 0.0
        eta = _clock((self.total - self.done) / rate) if rate > 0 else "?"
        pct = 100 * self.done / self.total if self.total else 100
        line = f"{self.label}: {self.done}/{self.total} ({pct:.0f}%) {rate:.1f} inputs/s ETA {eta}"
        sys.stderr.write("\r" + line.ljust(72))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
