"""Where a result comes from: the source checkout's commit and the machine.

Every run's summary.json, every grid launch and every benchmark table records them; grids
and benchmarks refuse uncommitted changes, so a result always names the commit that made it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from pixword_lit.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOT = REPO_ROOT  # the checkout whose commit runs record (tests point it elsewhere)


def source_commit(repo: Path | None = None, exclude: str | None = None) -> tuple[str | None, bool]:
    """(HEAD, has uncommitted changes to tracked files, those under `exclude` aside);
    (None, False) outside git."""
    try:
        git = ["git", "-C", str(repo or SOURCE_ROOT)]
        sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        paths = ["--", ".", f":(exclude){exclude}"] if exclude else []
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", *paths],
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha, bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        return None, False


def label(sha: str | None, dirty: bool) -> str | None:
    """"SHA", or "SHA-dirty" for a tree with uncommitted changes; None outside git."""
    return f"{sha}-dirty" if sha and dirty else sha


def git_commit() -> str | None:
    """The source checkout's HEAD, "-dirty" with uncommitted changes; None outside git."""
    return label(*source_commit())


def require_clean(allow_dirty: bool, what: str = "results", exclude: str | None = None) -> str | None:
    """The commit label; refuses (ConfigError) uncommitted changes unless `allow_dirty`."""
    sha, dirty = source_commit(exclude=exclude)
    if dirty and not allow_dirty:
        raise ConfigError(f"{SOURCE_ROOT} has uncommitted changes (git status): {what} must come "
                          "from a commit; commit them, or pass --allow-dirty")
    return label(sha, dirty)


def usable_cores() -> int:
    """The cores this process may run on: its affinity (a cgroup, taskset or SLURM), else the
    machine's. Loads no torch (the test harness asks before torch starts its threads)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine() -> str:
    """Architecture, cores, device and torch version, e.g. "x86_64 2 cpus, cpu, torch 2.13.0"."""
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return f"{platform.machine()} {os.cpu_count()} cpus, {dev}, torch {torch.__version__}"
