"""`prep images`: a folder of images -> image-only samples (method.md section 6).

Every file is tried as an image (extensions lie); files and folders whose name starts
with '.' are ignored. Files are visited in sorted relative-path order so the shards are
deterministic.
"""

from pathlib import Path

from .errors import BadInput, UsageError
from .imageio import load_rgb
from .report import Report
from .shards import DatasetWriter, assign_split


def list_files(root: Path, pattern: str = "*") -> list[Path]:
    """Files under `root` matching `pattern`, recursively, hidden ones excluded, sorted."""
    files = [
        p
        for p in root.rglob(pattern)
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def build_images(
    src: Path,
    out: Path,
    *,
    val_fraction: float = 0.05,
    shard_size: int = 1000,
    max_side: int = 0,
    seed: int = 0,
) -> dict:
    """Write one sample per readable image under `src`; return the report."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise UsageError(f"input folder {src} does not exist or is not a folder")
    # An output folder inside the input folder must not be read back as input.
    files = [p for p in list_files(src) if out.resolve() not in p.resolve().parents]
    if not files:
        raise UsageError(f"input folder {src} is empty (no non-hidden files)")
    args = {
        "command": "images",
        "input": str(src),
        "out": str(out),
        "val_fraction": val_fraction,
        "shard_size": shard_size,
        "max_side": max_side,
        "seed": seed,
    }
    report = Report()
    with DatasetWriter(out, "images", shard_size, args) as writer:
        for path in files:
            rel = path.relative_to(src).as_posix()
            report.inputs_seen += 1
            try:
                img = load_rgb(path, max_side=max_side)
            except BadInput as e:
                report.skip(rel, e)
                continue
            element = {"type": "image", "name": rel}
            writer.add(assign_split(rel, seed, val_fraction), [element], rel, [img])
    return report.finish(out, writer.counts())
