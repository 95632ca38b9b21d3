"""`prep images`: a folder of images -> image-only samples (method.md section 6).

Every file is tried as an image (extensions lie); files and folders whose name starts
with '.' are ignored. Files are visited in sorted relative-path order so the shards are
deterministic.
"""

from pathlib import Path

from .errors import BadInput, UsageError
from .imageio import shard_image
from .pipeline import WORKER, run_items
from .shards import DatasetWriter, assign_splits

DEFAULT_MAX_SIDE = 224  # the paper's image size; see README "Compact shards"


def list_files(root: Path, pattern: str = "*") -> list[Path]:
    """Files under `root` matching `pattern`, recursively, hidden ones excluded, sorted."""
    files = [
        p
        for p in root.rglob(pattern)
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def first_in_authors_order(names: list[str], limit: int) -> set[int]:
    """Indices of the first `limit` names in the order the authors' loader reads files
    (HaunLeung/upw src/model/dataset.py `list_and_sort_files`: the files of one folder sorted
    by `name.lower()`; `train_model.py` `-l N` then keeps the first N): sorted by the file
    name lower-cased, then by the whole name lower-cased and the name itself (the authors'
    folder is flat; these break ties they leave to the file system)."""
    def key(i: int):
        name = names[i].replace("\\", "/")
        return (name.rsplit("/", 1)[-1].lower(), name.lower(), name, i)

    return set(sorted(range(len(names)), key=key)[:limit])


def build_images(
    src: Path,
    out: Path,
    *,
    val_fraction: float = 0.05,
    shard_size: int = 1000,
    max_side: int = DEFAULT_MAX_SIDE,
    store: str = "original",
    seed: int = 0,
    limit: int | None = None,
    workers: int = 1,
    progress: bool | None = None,
    overwrite: bool = False,
) -> dict:
    """Write one sample per readable image under `src`; return the report. `limit` keeps
    the first N files in the authors' order (`first_in_authors_order`)."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise UsageError(f"input folder {src} does not exist or is not a folder")
    # An output folder inside the input folder must not be read back as input.
    files = [p for p in list_files(src) if out.resolve() not in p.resolve().parents]
    if not files:
        raise UsageError(f"input folder {src} is empty (no non-hidden files)")
    if limit is not None:
        keep = first_in_authors_order([p.relative_to(src).as_posix() for p in files], limit)
        files = [p for i, p in enumerate(files) if i in keep]
    args = {
        "command": "images", "input": str(src), "out": str(out), "val_fraction": val_fraction,
        "shard_size": shard_size, "max_side": max_side, "store": store, "seed": seed,
        "limit": limit,
    }  # fmt: skip
    writer = DatasetWriter(out, "images", shard_size, args, len(files), overwrite)
    if writer.complete:
        return writer.saved_report()
    rels = [path.relative_to(src).as_posix() for path in files]
    split = assign_splits(rels, seed, val_fraction)
    items = [(split[rel], (rel, str(path))) for rel, path in zip(rels, files)]
    config = {"max_side": max_side, "store": store}
    return run_items(writer, items, image_work, config, workers=workers, progress=progress,
                     label="prep images")  # fmt: skip


def image_work(payload: tuple[str, str]):
    """Worker: one file -> one image-only sample, or a skip."""
    rel, path = payload
    try:
        img = shard_image(path, WORKER["max_side"], WORKER["store"])
    except BadInput as e:
        return [], [(rel, e)]
    return [([{"type": "image", "name": rel}], rel, [img])], []
