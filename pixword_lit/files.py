"""Writing files so that nobody ever reads half of one: write aside, then rename.

os.replace is atomic on one filesystem: a reader sees the old file or the new one, and a run
killed mid-write leaves at most a stray NAME.tmp beside the good file. With `fsync` the
content is on disk before the rename (checkpoints: a crash of the machine keeps one good file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def atomic_save(path: Path, save: Callable[[Path], object], per_process: bool = False,
                fsync: bool = False) -> None:
    """save(tmp) writes the content to a temporary name beside `path`, then it is renamed.
    per_process: the temporary name carries the pid (several processes may write `path`);
    fsync: flush the file to disk before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp" if per_process else f"{path.name}.tmp")
    save(tmp)
    if fsync:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write(path: Path, data: str | bytes, per_process: bool = False) -> None:
    """Text (UTF-8) or bytes to `path`, written aside and renamed."""
    raw = data if isinstance(data, bytes) else data.encode()
    atomic_save(path, lambda tmp: tmp.write_bytes(raw), per_process)


def write_json(path: Path, obj, indent: int | None = 2, **dumps) -> None:
    """JSON to `path`, written aside and renamed (non-JSON values as str)."""
    atomic_write(path, json.dumps(obj, indent=indent, default=str, **dumps))
