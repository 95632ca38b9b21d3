"""Where shards are and how to read them: shard URLs (a folder made by `pixword prep`, a brace
pattern, a `pipe:` command) with their index.json -> `ShardSet`, and a shard's raw samples.
The order in which they are read, and what is built from them: `data/stream.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_iterator

from pixword_lit.errors import DataError  # noqa: F401  (raised here; imported from here too)


@dataclass
class ShardSet:
    urls: list[str]
    units: list[int]  # units per shard in the current mode
    index_path: str
    index: dict = field(repr=False, default_factory=dict)

    @property
    def total(self) -> int:
        return int(sum(self.units))


def resolve_shards(spec: str, index_path: str | None, mode: str, key: str) -> ShardSet:
    """Shard URLs (folder, brace pattern, pipe: command) + their index.json -> ShardSet."""
    if not spec:
        raise DataError(f"{key}: no shards given (a folder made by `pixword prep`, or URLs)")
    local = Path(spec)
    if local.is_dir():
        index_path = index_path or str(local / "index.json")
        urls = None
    else:
        urls = wds.shardlists.expand_urls(spec)
        if not _is_url(spec):  # a local file or brace pattern: its folder must exist
            missing = local if "{" not in spec else Path(urls[0]).parent
            if not missing.exists():
                raise DataError(
                    f"{key}: {str(missing)!r} does not exist (relative paths are relative to the "
                    f"current directory, so it was looked for at {missing.resolve()}); run pixword "
                    "where the data is, give an absolute path, or build the built-in data there with "
                    "`pixword prep glyphs --out data/glyphs`"
                )
        if index_path is None:
            if _is_url(urls[0]):
                raise DataError(f"{key}_index: give the index.json of {spec!r} (it is not local)")
            index_path = str(Path(urls[0]).parent / "index.json")
    if not Path(index_path).exists():
        raise DataError(f"{key}: no index.json at {index_path} (was `pixword prep` completed?)")
    index = json.loads(Path(index_path).read_text())
    counts = {s["name"]: s["images" if mode == "image_only" else "samples"] for s in index["shards"]}
    if urls is None:
        urls = [str(local / s["name"]) for s in index["shards"]]
    units = []
    for url in urls:
        names = [n for n in counts if n in url]
        if len(names) != 1:
            raise DataError(f"{key}: shard {url!r} is not listed in {index_path}")
        units.append(counts[names[0]])
    if sum(units) == 0:
        raise DataError(f"{key}: the shards of {index_path} hold no {mode} units")
    return ShardSet(urls, units, index_path, index)


def prep_resize_problem(shards: ShardSet, key: str) -> str | None:
    """Why these shards do not hold the images as they were (None: they do), from index.json:
    its `resize` record (images prep downscaled), or for an older index its `--max-side`
    and image sizes. For data.single_resize, which wants the loader's resize alone."""
    index = shards.index
    folder = Path(shards.index_path).parent
    fix = ("prepare it again with `pixword prep ... --max-side 0` (the images as they are), "
           "or set data.single_resize=false")
    rec = index.get("resize")
    if rec is not None:
        if not rec.get("images_resized"):
            return None
        return (f"{key}: {folder} holds {rec['images_resized']} images that prep downscaled "
                f"(--max-side {rec.get('max_side')}, {rec.get('filter')}), so the loader's resize "
                f"would not be the only one (data.single_resize: true); {fix}")
    max_side = int((index.get("args") or {}).get("max_side") or 0)
    sizes = index.get("image_sizes") or {}
    largest = max(sizes.get("max_width") or 0, sizes.get("max_height") or 0)
    if max_side and largest >= max_side:
        return (f"{key}: {folder} was prepared with --max-side {max_side} by a pixword that did "
                f"not record which images it downscaled (data.single_resize: true); {fix}")
    return None


def _is_url(spec: str) -> bool:
    return spec.startswith("pipe:") or "://" in spec


def read_shard(url: str):
    """Raw samples of one tar shard, in file order: dicts of bytes keyed by extension."""
    stream = wds.gopen(url)
    try:
        files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
        yield from group_by_keys(files)
    finally:
        stream.close()
