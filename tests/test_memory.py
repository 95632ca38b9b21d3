"""memory.keep_freed_memory: after it, a process that allocates and frees the same large
arrays every step (what a training step does) stops taking fresh pages from the kernel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = """
import resource, sys
import numpy as np
from pixword_lit.fit.memory import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "1" else None)
def step():  # ten 4 MiB activations, written, then freed
    keep = [np.ones(1 << 19) for _ in range(10)]
    del keep
step(); step()  # warm-up: the heap grows once
f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f) / 5)
"""


def _faults_per_step(keep: bool, extra_env: dict | None = None) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(extra_env or {}, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", STEPS, "1" if keep else "0"], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_memory_is_reused_without_page_faults():
    _, default = _faults_per_step(False)
    applied, kept = _faults_per_step(True)
    assert applied == "True"
    assert default > 2000  # 40 MiB of fresh pages per step: about 10,000 with 4 KiB pages
    assert kept < default / 20


def test_a_users_malloc_setting_wins():
    applied, _ = _faults_per_step(True, {"MALLOC_ARENA_MAX": "2"})
    assert applied == "False"
