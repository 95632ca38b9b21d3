"""A scheduler's preemption signal (SLURM sends it to every process of the job step) reaches
the training process only: the fork server, the loader workers and multiprocessing's resource
tracker live on, so a preempted run's log is clean and nothing leaks in /dev/shm."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json, os, signal, time
import torch
from multiprocessing import forkserver, resource_tracker
from pixword_lit.data.workers import worker_start

got = []
signal.signal(signal.SIGUSR1, lambda *_: got.append("USR1"))
loader = torch.utils.data.DataLoader(list(range(64)), batch_size=4, num_workers=2, **worker_start(2))
it = iter(loader)
first = next(it)
helpers = {"forkserver": forkserver._forkserver._forkserver_pid,
           "tracker": resource_tracker._resource_tracker._pid,
           **{f"worker{i}": w.pid for i, w in enumerate(it._workers)}}
os.killpg(0, signal.SIGUSR1)  # as `scancel -s USR1` does: every process of the group
time.sleep(1.0)
def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
living = {k: alive(p) for k, p in helpers.items()}  # before the loader ends its workers
rest = [int(x) for b in it for x in b]
print(json.dumps({"got": got, "alive": living,
                  "batches": [int(x) for x in first] + rest}))
"""


def test_helpers_live_through_the_preemption_signal():
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=120, start_new_session=True)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["got"] == ["USR1"]  # the training process still hears it
    assert out["alive"] == {k: True for k in out["alive"]} and len(out["alive"]) == 4
    assert sorted(out["batches"]) == list(range(64))  # the workers went on delivering
    assert "Traceback" not in res.stderr and "resource_tracker" not in res.stderr, res.stderr
