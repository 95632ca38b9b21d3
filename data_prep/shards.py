"""Deterministic, crash-safe, resumable WebDataset shard writing (the contract in README.md).

Why tarfile by hand: every member gets mtime 0, uid/gid 0 and a fixed order, so the same
inputs give byte-identical shards. Every file is written as NAME.tmp and renamed into
place, and index.json comes last, so a final name always means a complete file and an
existing index.json means a complete split.

Resuming: inputs are numbered items, each with a split known before it is processed.
After every finished shard, OUT/progress.json records (atomically) the arguments, the
finished shards and, per split, the first item whose samples are not all in a finished
shard. A rerun with the same arguments skips everything before that point, so its shards
are byte-identical to those of an uninterrupted run.
"""

import io
import json
import os
import tarfile
import zlib
from pathlib import Path

from .errors import UsageError
from .imageio import StoredImage

FORMAT = "pixword-shards-v1"
SPLITS = ("train", "val")
STATE = "progress.json"
STATE_FORMAT = "pixword-prep-progress-v1"


def _split_hash(name: str, seed: int) -> float:
    return zlib.crc32(f"{seed}:{name}".encode()) / 2**32


def assign_split(name: str, seed: int, val_fraction: float) -> str:
    """'val' for a stable fraction of names (crc32 of seed + name), else 'train'."""
    return "val" if _split_hash(name, seed) < val_fraction else "train"


def assign_splits(names, seed: int, val_fraction: float) -> dict[str, str]:
    """`assign_split` of every distinct name, except that a split with two or more names and
    a val_fraction above 0 keeps at least one name in 'val' (5% of 18 photographs rounds to
    none, and a run needs validation data): the name whose hash is smallest goes there."""
    names = list(dict.fromkeys(names))
    splits = {n: assign_split(n, seed, val_fraction) for n in names}
    if val_fraction > 0 and len(names) >= 2 and "val" not in splits.values():
        splits[min(names, key=lambda n: _split_hash(n, seed))] = "val"
    return splits


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to path.tmp, fsync, then rename over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prepare_out(out: Path) -> None:
    """Create OUT/train and OUT/val, checking OUT is writable, and clear what a previous
    run left: *.tmp files, old shards, indexes, report, tokenizer and progress state."""
    _make_dirs(out)
    stale = [*out.glob("*.tmp"), out / "report.json", out / "tokenizer.json", out / STATE]
    for split in SPLITS:
        folder = out / split
        stale += [*folder.glob("*.tmp"), *folder.glob("shard-*.tar"), folder / "index.json"]
    for path in stale:
        path.unlink(missing_ok=True)


def _make_dirs(out: Path) -> None:
    try:
        for split in SPLITS:
            (out / split).mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"output directory {out} is not writable: {e}") from e


def empty_stats() -> dict:
    return {
        "num_images": 0, "image_bytes": 0, "stored_original": 0, "images_resized": 0,
        "min_width": None, "max_width": None, "min_height": None, "max_height": None,
        "count_landscape": 0, "count_portrait": 0, "count_square": 0,
    }  # fmt: skip


def _add_image(stats: dict, img: StoredImage) -> None:
    w, h = img.width, img.height
    stats["num_images"] += 1
    stats["image_bytes"] += len(img.data)
    stats["stored_original"] += img.ext != "png"
    stats["images_resized"] += img.resized
    for key, v, pick in (("min_width", w, min), ("max_width", w, max),
                         ("min_height", h, min), ("max_height", h, max)):  # fmt: skip
        stats[key] = v if stats[key] is None else pick(stats[key], v)
    stats["count_landscape"] += w > h
    stats["count_portrait"] += h > w
    stats["count_square"] += w == h


def _merge(a: dict, b: dict) -> dict:
    out = {}
    for key in {**a, **b}:  # (a state saved before a key existed lacks it)
        values = [v for v in (a.get(key), b.get(key)) if v is not None]
        if key.startswith("min_") or key.startswith("max_"):
            out[key] = (min if key.startswith("min_") else max)(values) if values else None
        else:
            out[key] = sum(values)
    return out


class SplitWriter:
    """Writes one split's samples into shard-NNNNNN.tar files of at most `shard_size`.

    `saved` is this split's part of a progress state: its finished shards and its
    resume point (`resume_item`, `skip_samples`: the first `skip_samples` samples of item
    `resume_item` are already in a finished shard, as are all samples of earlier items).
    """

    def __init__(self, folder: Path, shard_size: int, saved: dict | None = None):
        saved = saved or {}
        self.folder, self.shard_size = folder, shard_size
        self.shards: list[dict] = [dict(s) for s in saved.get("shards", [])]  # finished
        self.stats = dict(saved.get("stats") or empty_stats())  # of the finished shards
        self.resume_item = saved.get("resume_item", 0)
        self.skip_samples = saved.get("skip_samples", 0)
        self.num_samples = sum(s["samples"] for s in self.shards)
        self._open_stats = empty_stats()
        self._item, self._item_samples = -1, 0
        self._file = self._tar = None

    def state(self) -> dict:
        return {
            "shards": self.shards if self._tar is None else self.shards[:-1],
            "stats": self.stats,
            "resume_item": self.resume_item,
            "skip_samples": self.skip_samples,
        }

    def add(self, item: int, elements: list[dict], source: str, images: list[StoredImage]) -> bool:
        """Append sample number k (counted within `item`) unless a finished shard already
        holds it. `elements` holds one image element per entry of `images`, in order; its
        file/width/height fields are filled in here. True when this closed a shard."""
        if item != self._item:
            self._item, self._item_samples = item, 0
        self._item_samples += 1
        if item < self.resume_item or (
            item == self.resume_item and self._item_samples <= self.skip_samples
        ):
            return False
        if self._tar is None:
            self._open()
        key = f"{self.num_samples:08d}"
        elements = [dict(e) for e in elements]
        image_elements = [e for e in elements if e["type"] == "image"]
        if len(image_elements) != len(images):
            raise ValueError(f"{len(image_elements)} image elements but {len(images)} images")
        members = {}
        for i, (el, img) in enumerate(zip(image_elements, images)):
            el.update(file=f"img{i}.{img.ext}", width=img.width, height=img.height)
            members[el["file"]] = img.data
            _add_image(self._open_stats, img)
        doc = {"elements": elements, "source": source}
        members["json"] = json.dumps(doc, ensure_ascii=False, sort_keys=True).encode()
        for ext in sorted(members):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(members[ext]), 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(members[ext]))
        self.num_samples += 1
        self.shards[-1]["samples"] += 1
        self.shards[-1]["images"] += len(images)
        if self.shards[-1]["samples"] == self.shard_size:
            self._close()
            self.resume_item, self.skip_samples = item, self._item_samples
            return True
        return False

    def item_done(self, item: int) -> None:
        """All samples of `item` are added. If a shard closed on its last one, the resume
        point moves past it, so a rerun does not read it again."""
        if (self.resume_item, self.skip_samples) == (item, self._item_samples) and self._item == item:
            self.resume_item, self.skip_samples = item + 1, 0

    def _open(self) -> None:
        name = f"shard-{len(self.shards):06d}.tar"
        self.shards.append({"name": name, "samples": 0, "images": 0})
        # Both stay open across add() calls; _close() or abandon() closes them.
        self._file = open(self.folder / (name + ".tmp"), "wb")  # noqa: SIM115
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115

    def _close(self) -> None:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = self.shards[-1]["name"]
        os.replace(self.folder / (name + ".tmp"), self.folder / name)
        self._file = self._tar = None
        self.stats = _merge(self.stats, self._open_stats)
        self._open_stats = empty_stats()

    def finish(self) -> None:
        """Close the last, partly filled shard."""
        if self._tar is not None:
            self._close()

    def abandon(self) -> None:
        """After a failure: close the open file but leave it under its .tmp name."""
        if self._file is not None:
            self._file.close()
            self._file = self._tar = None

    def index(self, kind: str, split: str, tokenizer: str | None, packing, args) -> dict:
        sizes = ("min_width", "max_width", "min_height", "max_height",
                 "count_landscape", "count_portrait", "count_square")  # fmt: skip
        return {
            "format": FORMAT,
            "kind": kind,
            "split": split,
            "shards": self.shards,
            "num_samples": self.num_samples,
            "num_images": self.stats["num_images"],
            "image_sizes": {k: self.stats[k] for k in sizes},
            "tokenizer": tokenizer,
            "packing": packing,
            "resize": resize_record(args, self.stats.get("images_resized", 0)),
            "args": args,
        }


def resize_record(args: dict, resized: int) -> dict:
    """How prep resized this split's images (index.json `resize`): the loader's resize is the
    only one exactly when `images_resized` is 0 (`pixword fit` with data.single_resize checks)."""
    max_side = int(args.get("max_side") or 0)
    return {"max_side": max_side, "filter": "lanczos" if max_side else None,
            "images_resized": int(resized)}  # fmt: skip


def fingerprint(args: dict) -> dict:
    """What must match for a rerun to continue a build: every argument but --out."""
    return {k: v for k, v in args.items() if k != "out"}


class DatasetWriter:
    """Both splits of one output directory, resumable (see the module docstring).

    Opening it checks OUT/progress.json: no state (or `overwrite`) starts afresh; a state
    with other arguments or another input count is refused (UsageError); an unfinished
    state is continued; a finished one sets `complete` (nothing left to do).
    Use `skip()` for skipped inputs, `add()` for samples, then `finish(inputs_seen)`; on
    an error call `abandon()`: finished shards and the state stay for the next run.
    """

    def __init__(self, out: Path, kind: str, shard_size: int, args: dict, num_inputs: int,
                 overwrite: bool = False):  # fmt: skip
        self.out, self.kind, self.args = out, kind, args
        self.tokenizer: str | None = None  # set to "../tokenizer.json" when one is written
        self.packing: dict | None = None
        self.complete = self.resumed = False
        self._skipped: list[dict] = []  # with "item" and "split", dropped in report.json
        self._closed = False  # a shard was finished since the state was last saved
        state = None if overwrite else _read_state(out)
        if state is not None:
            _check_state(state, out, args, num_inputs)
        if state is None:
            prepare_out(out)
            state = {"splits": {}, "skipped": []}
        else:
            _make_dirs(out)
            self.complete, self.resumed = bool(state.get("complete")), True
            if not self.complete:
                _clear_unfinished(out, state)
        self.num_inputs = num_inputs
        self.splits = {
            s: SplitWriter(out / s, shard_size, state["splits"].get(s)) for s in SPLITS
        }
        self._skipped = list(state["skipped"])
        if not self.complete:
            self.save_state()

    def wants(self, item: int, split: str) -> bool:
        """False when every sample of `item` is already in a finished shard."""
        return item >= self.splits[split].resume_item

    def add(self, item: int, split: str, elements: list[dict], source: str, images) -> None:
        self._closed |= self.splits[split].add(item, elements, source, images)

    def item_done(self, item: int, split: str) -> None:
        """All of `item`'s samples are added: save the state if a shard was finished."""
        self.splits[split].item_done(item)
        if self._closed:
            self.save_state()
            self._closed = False

    def skip(self, item: int, split: str, path: str, kind: str, reason: str) -> None:
        self._skipped.append(
            {"item": item, "split": split, "path": str(path), "kind": kind, "reason": reason}
        )

    def save_state(self, complete: bool = False) -> None:
        # Skips of items at or after their split's resume point are found again on resume.
        skipped = [s for s in self._skipped if s["item"] < self.splits[s["split"]].resume_item]
        state = {
            "format": STATE_FORMAT,
            "fingerprint": fingerprint(self.args),
            "num_inputs": self.num_inputs,
            "complete": complete,
            "splits": {s: w.state() for s, w in self.splits.items()},
            "skipped": self._skipped if complete else skipped,
        }
        write_json_atomic(self.out / STATE, state)

    def abandon(self) -> None:
        for writer in self.splits.values():
            writer.abandon()  # the .tmp stays; the next run deletes it

    def finish(self, inputs_seen: int) -> dict:
        """Close the last shards, write both indexes, then report.json; return the report."""
        from .report import build_report  # report imports this module

        for writer in self.splits.values():
            writer.finish()
        for split, writer in self.splits.items():
            index = writer.index(self.kind, split, self.tokenizer, self.packing, self.args)
            write_json_atomic(self.out / split / "index.json", index)
        self._skipped.sort(key=lambda s: s["item"])  # input order, whatever the workers did
        skipped = [{k: s[k] for k in ("path", "kind", "reason")} for s in self._skipped]
        report = build_report(inputs_seen, self.counts(), skipped, self.stats())
        write_json_atomic(self.out / "report.json", report)
        self.save_state(complete=True)
        return report

    def saved_report(self) -> dict:
        return json.loads((self.out / "report.json").read_text(encoding="utf-8"))

    def counts(self) -> dict:
        return {s: w.num_samples for s, w in self.splits.items()}

    def stats(self) -> dict:
        return {s: w.stats for s, w in self.splits.items()}


def _read_state(out: Path) -> dict | None:
    path = out / STATE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is unreadable ({e}); add --overwrite to start over") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UsageError(f"{path} is not a {STATE_FORMAT} file; add --overwrite to start over")
    return state


def _check_state(state: dict, out: Path, args: dict, num_inputs: int) -> None:
    old, new = state["fingerprint"], fingerprint(args)
    changed = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    if state["num_inputs"] != num_inputs:
        changed.append(f"number of inputs: {state['num_inputs']} -> {num_inputs}")
    if changed:
        raise UsageError(
            f"{out / STATE} records a build with other arguments or inputs ("
            + "; ".join(changed)
            + "); rerun with the same arguments to continue it, or add --overwrite to start over"
        )


def _clear_unfinished(out: Path, state: dict) -> None:
    """Before continuing: drop temp files, the indexes and report (rewritten at the end),
    and any shard the state does not list as finished (it is written again)."""
    stale = [*out.glob("*.tmp"), out / "report.json"]
    for split in SPLITS:
        folder = out / split
        done = {s["name"] for s in state["splits"].get(split, {}).get("shards", [])}
        stale += [*folder.glob("*.tmp"), folder / "index.json"]
        stale += [p for p in folder.glob("shard-*.tar") if p.name not in done]
    for path in stale:
        path.unlink(missing_ok=True)
