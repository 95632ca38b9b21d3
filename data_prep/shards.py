"""Deterministic, crash-safe WebDataset shard writing (the contract in README.md).

Why tarfile by hand: every member gets mtime 0, uid/gid 0 and a fixed order, so the same
inputs give byte-identical shards. Every file is written as NAME.tmp and renamed into
place, and index.json comes last, so a final name always means a complete file and an
existing index.json means a complete split.
"""

import io
import json
import os
import tarfile
import zlib
from pathlib import Path

from PIL import Image

from .errors import UsageError
from .imageio import png_bytes

FORMAT = "pixword-shards-v1"
SPLITS = ("train", "val")


def assign_split(name: str, seed: int, val_fraction: float) -> str:
    """'val' for a stable fraction of names (crc32 of seed + name), else 'train'."""
    h = zlib.crc32(f"{seed}:{name}".encode()) / 2**32
    return "val" if h < val_fraction else "train"


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
    (possibly interrupted) run left: *.tmp files, old shards, indexes and the report."""
    try:
        for split in SPLITS:
            (out / split).mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"output directory {out} is not writable: {e}") from e
    stale = [*out.glob("*.tmp"), out / "report.json", out / "tokenizer.json"]
    for split in SPLITS:
        folder = out / split
        stale += [*folder.glob("*.tmp"), *folder.glob("shard-*.tar"), folder / "index.json"]
    for path in stale:
        path.unlink(missing_ok=True)


class SplitWriter:
    """Writes one split's samples into shard-NNNNNN.tar files of at most `shard_size`."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size = folder, shard_size
        self.shards: list[dict] = []  # finished shards: name, samples, images
        self.sizes: list[tuple[int, int]] = []  # (width, height) of every written image
        self.num_samples = 0
        self._file = self._tar = None

    def add(self, elements: list[dict], source: str, images: list[Image.Image]) -> None:
        """Append one sample; `elements` holds one image element per entry of `images`,
        in order, whose file/width/height fields are filled in here."""
        if self._tar is None:
            self._open()
        key = f"{self.num_samples:08d}"
        elements = [dict(e) for e in elements]
        image_elements = [e for e in elements if e["type"] == "image"]
        if len(image_elements) != len(images):
            raise ValueError(f"{len(image_elements)} image elements but {len(images)} images")
        members = {}
        for i, (el, img) in enumerate(zip(image_elements, images)):
            el.update(file=f"img{i}.png", width=img.width, height=img.height)
            members[el["file"]] = png_bytes(img)
            self.sizes.append(img.size)
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
        ws, hs = [w for w, _ in self.sizes], [h for _, h in self.sizes]
        return {
            "format": FORMAT,
            "kind": kind,
            "split": split,
            "shards": self.shards,
            "num_samples": self.num_samples,
            "num_images": len(self.sizes),
            "image_sizes": {
                "min_width": min(ws, default=None),
                "max_width": max(ws, default=None),
                "min_height": min(hs, default=None),
                "max_height": max(hs, default=None),
                "count_landscape": sum(w > h for w, h in self.sizes),
                "count_portrait": sum(h > w for w, h in self.sizes),
                "count_square": sum(w == h for w, h in self.sizes),
            },
            "tokenizer": tokenizer,
            "packing": packing,
            "args": args,
        }


class DatasetWriter:
    """Both splits of one output directory. Use as a context manager: on a clean exit the
    last shards are closed and then the indexes written; on an error nothing is finalized."""

    def __init__(self, out: Path, kind: str, shard_size: int, args: dict):
        prepare_out(out)
        self.out, self.kind, self.args = out, kind, args
        self.splits = {s: SplitWriter(out / s, shard_size) for s in SPLITS}
        self.tokenizer: str | None = None  # set to "../tokenizer.json" when one is written
        self.packing: dict | None = None

    def add(self, split: str, elements: list[dict], source: str, images) -> None:
        self.splits[split].add(elements, source, images)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            for writer in self.splits.values():
                writer.abandon()  # the .tmp stays; the next run deletes it
            return False
        for writer in self.splits.values():
            writer.finish()
        for split, writer in self.splits.items():
            index = writer.index(self.kind, split, self.tokenizer, self.packing, self.args)
            write_json_atomic(self.out / split / "index.json", index)
        return False

    def counts(self) -> dict:
        return {s: w.num_samples for s, w in self.splits.items()}
