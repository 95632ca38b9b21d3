"""A sharded FSDP checkpoint read in one process (validate, convert-ckpt), and SIGKILL between
checkpoints. The killed fit is a real subprocess; the commands after it run in this process
through the CLI's `main` with the arguments a user types (a process of their own would add
only Python's start-up, ~6 s of CPU each here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pixword_lit.system.config import DEBUG_MODEL, REPO_ROOT

pytestmark = pytest.mark.multiproc

BASE = [  # in-process loading: DataLoader workers under ddp/fsdp are resume_matrix.py's
    *DEBUG_MODEL, "data.batch_size=4", "data.num_workers=0", "data.max_seq_len=64",
    "data.val_limit=16", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
    "trainer.val_check_interval=4", "trainer.check_val_every_n_epoch=null",
    "trainer.log_every_n_steps=1", "optim.decay_steps=12", "optim.warmup_steps=2",
    "run.ckpt_every_n_steps=3",
]


def fit_args(shards, run_dir, *extra) -> list[str]:
    return ["fit", str(REPO_ROOT / "experiments" / "quickstart.yaml"), *BASE,
            f"data.train={shards}/train", f"data.val={shards}/val", f"run.dir={run_dir}", *extra]


def pixword_fit(shards, run_dir, *extra, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pixword_lit.cli", *fit_args(shards, run_dir, *extra)]
    return subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **popen)


def summary(run_dir) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


# Exact resume under ddp and fsdp (every kind of checkpoint, with and without data workers) is
# resume_matrix.py's (test_resume.py), and 1 x 8 = 2 x 4 is test_elastic.py's; here, what a user
# does with a sharded checkpoint, on the fsdp matrix's run (copied: its folder is shared).
def test_fsdp_sharded_checkpoint_validates_and_converts(matrix_runs, tmp_path, capsys):
    import shutil

    part = tmp_path / "part"
    shutil.copytree(matrix_runs("fsdp") / "small-w0" / "stopped", part)
    ckpt = part / "checkpoints" / "last.ckpt"
    # sharded: one file per rank, plus Lightning's metadata
    assert ckpt.is_dir() and len(list(ckpt.glob("*.distcp"))) == 2
    assert summary(part)["world_size"] == 2 and summary(part)["steps"] == 10
    _fsdp_checkpoint_in_one_process(part, tmp_path, capsys)


def _fsdp_checkpoint_in_one_process(part, tmp_path, capsys):
    from pixword_lit.cli import main
    from pixword_lit.system.checkpoints import find_resume_checkpoint

    sharded = part / "checkpoints" / "last.ckpt"
    before = sorted(p.name for p in sharded.parent.iterdir())
    # validate accepts the sharded folder directly, converting it aside
    capsys.readouterr()
    assert main(["validate", str(sharded)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out[out.index("{"):])
    assert sorted(p.name for p in sharded.parent.iterdir()) == before
    assert metrics["val/loss"] == pytest.approx(summary(part)["val/loss"], rel=1e-5)
    # convert-ckpt writes a single-file checkpoint that a plain torch.load reads
    single = tmp_path / "single.ckpt"
    assert main(["convert-ckpt", str(sharded), "--out", str(single)]) == 0
    state = torch.load(single, map_location="cpu", weights_only=True)
    total = sum(v.double().sum().item() for k, v in state["state_dict"].items()
                if k.startswith("model.") and v.is_floating_point())
    assert total == pytest.approx(summary(part)["param_checksum"], rel=1e-9)
    # a converted copy next to the shards is never picked by --resume (no optimizer state)
    assert main(["convert-ckpt", str(sharded)]) == 0
    assert (sharded.parent / "last-single.ckpt").exists()
    assert Path(find_resume_checkpoint(part, "last")).name != "last-single.ckpt"
    # training on from it on 1 process (2 -> 1, exactly): test_elastic.py


def test_sigkill_between_checkpoints_resumes(glyph_shards, tmp_path, capsys):
    from pixword_lit.system.checkpoints import checkpoint_step, find_resume_checkpoint

    run = tmp_path / "killed"
    proc = pixword_fit(glyph_shards, run, "trainer.max_steps=100000", "trainer.val_check_interval=400",
                       "run.ckpt_every_n_steps=5", stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    ckpts = run / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpts / "step0000010.ckpt").exists():
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere after step 10: between checkpoints or while writing one
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    newest = Path(find_resume_checkpoint(run, "last"))
    k = checkpoint_step(newest)
    assert k >= 10 and not newest.name.endswith(".tmp")
    from pixword_lit.cli import main

    capsys.readouterr()
    assert main([*fit_args(glyph_shards, run, f"trainer.max_steps={k + 15}"), "--resume", "last"]) == 0
    assert f"resuming from {newest} (step {k})" in capsys.readouterr().out
    assert summary(run)["steps"] == k + 15 and summary(run)["resumed_from"] == [str(newest)]
    assert not list(ckpts.glob("*.tmp"))  # a partial write of the killed run is cleared
