"""Preemption (issue 17), with SLURM simulated as a job step sees it: the SLURM_* variables
srun sets per task (each rank is started by the test, as srun would) and a stand-in `scontrol`
on PATH that records its arguments.

Per strategy (1 process, ddp, fsdp on 2 gloo processes): a run to step 10 gets SIGUSR1 (on
every task, as `#SBATCH --signal` sends it) and must stop at that step with a checkpoint,
summary.json status "preempted", a recorded `scontrol requeue 4242` and exit code 75; resumed
with --resume last it gets SIGTERM and stops again: under ddp on one rank only (the ranks must
agree; fsdp's agree through the same callback, so fsdp skips this round), on 1 process started
without SLURM variables (SIGTERM checkpoints and stops too, and nothing is requeued); resumed
once more it ends at step 10 exactly as the uninterrupted run of the resume matrix (same
per-step losses, parameters, counters, final val/loss: the in-memory model).

In-process, with 2 DataLoader workers: a signal in the middle of a validation (sent to the
workers and multiprocessing's helpers too) stops the run after the next step, and the run
resumes exactly.

Timing: the subprocess tests pause the ranks (SIGSTOP) once a step has been logged, sends the signal and
resumes them (SIGCONT), so the signal always lands before the run could finish.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from resume_matrix import QUICKSTART, STEPS, assert_same_run, jsonl, overrides, summary

from pixword_lit.fit.preempt import PREEMPTED_EXIT
from pixword_lit.system.checkpoints import checkpoint_step

SLURM_JOB = "4242"


def stand_in_scontrol(tmp: Path) -> tuple[Path, Path]:
    bin_dir, log = tmp / "bin", tmp / "scontrol.log"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    script.chmod(0o755)
    return bin_dir, log


def launch(strategy, shards, run_dir, tmp, resume=None, slurm=True):
    """Start the ranks of one `pixword fit` (one process per rank, as srun does)."""
    bin_dir, _ = stand_in_scontrol(tmp)
    n = 1 if strategy == "single" else 2
    cmd = [sys.executable, "-m", "pixword_lit.cli", "fit", QUICKSTART,
           *overrides(strategy, shards, "small", 0, run_dir, STEPS)]
    cmd += ["--resume", resume] if resume else []
    port = _free_port()
    procs = []
    for rank in range(n):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", PYTHONUNBUFFERED="1")
        if slurm:
            env.update(SLURM_NTASKS=str(n), SLURM_NTASKS_PER_NODE=str(n), SLURM_JOB_NAME="pixword",
                       SLURM_JOB_ID=SLURM_JOB, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
                       SLURM_NODEID="0", SLURM_NNODES="1", SLURM_NODELIST="127.0.0.1",
                       MASTER_PORT=str(port))
        out = open(tmp / f"rank{rank}-{time.monotonic_ns()}.log", "w")
        procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def signal_after_step(procs, run_dir: Path, step: int, sig, ranks) -> int:
    """Once `step` is logged: pause every rank, send `sig` to `ranks`, let them go on.
    Returns the last step logged when the ranks were paused."""
    log = run_dir / "train_log.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline:
        if any(p.poll() is not None for p in procs):
            raise AssertionError("a rank ended before the signal")
        if log.exists() and max(jsonl(log, "loss"), default=0) >= step:
            break
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGSTOP)
    seen = max(jsonl(log, "loss"))
    for r in ranks:
        procs[r].send_signal(sig)
    for p in procs:
        p.send_signal(signal.SIGCONT)
    return seen


def wait(procs, tmp) -> list[int]:
    codes = [p.wait(timeout=600) for p in procs]
    if any(c not in (0, PREEMPTED_EXIT) for c in codes):
        logs = "\n".join(f.read_text()[-4000:] for f in sorted(tmp.glob("rank*.log")))
        raise AssertionError(f"exit codes {codes}\n{logs}")
    return codes


def assert_preempted(run_dir: Path, seen: int, signame: str) -> int:
    s = summary(run_dir)
    step = s["steps"]
    assert s["status"] == "preempted" and s["signal"] == signame
    # stopped at the step in flight when the signal came: nothing trained past it
    assert seen <= step <= seen + 2
    assert max(jsonl(run_dir / "train_log.jsonl", "loss")) == step
    ckpt = Path(s["checkpoint"])
    assert ckpt.parent == run_dir / "checkpoints" and checkpoint_step(ckpt) == step
    assert not list(run_dir.rglob("hpc_ckpt*")) and not list(run_dir.rglob("*.tmp"))
    return step


@pytest.mark.parametrize("strategy", [
    "single",
    pytest.param("ddp", marks=pytest.mark.multiproc),
    pytest.param("fsdp", marks=pytest.mark.multiproc),
])
def test_slurm_preemption_checkpoints_requeues_and_resumes_exactly(
        strategy, matrix_runs, small_shards, tmp_path):
    ref = matrix_runs(strategy) / "small-w0" / "reference"
    run = tmp_path / "run"
    ranks = [0] if strategy == "single" else [0, 1]
    _, requeues = stand_in_scontrol(tmp_path)

    procs = launch(strategy, small_shards, run, tmp_path)
    seen = signal_after_step(procs, run, 2, signal.SIGUSR1, ranks)  # SLURM signals every task
    assert wait(procs, tmp_path) == [PREEMPTED_EXIT] * len(ranks)
    first = assert_preempted(run, seen, "SIGUSR1")
    assert requeues.read_text().split("\n")[:-1] == [f"requeue {SLURM_JOB}"]  # by rank 0 only
    assert first < STEPS

    again = strategy != "fsdp"  # one rank only: the ranks agree as under ddp (same callback)
    if again:  # 1 process: without SLURM, so nothing is requeued
        procs = launch(strategy, small_shards, run, tmp_path, resume="last", slurm=strategy == "ddp")
        seen = signal_after_step(procs, run, first + 1, signal.SIGTERM, ranks[-1:])  # one rank only
        assert wait(procs, tmp_path) == [PREEMPTED_EXIT] * len(ranks)
        # rank 0 (which writes summary.json) got no signal under ddp: it followed rank 1
        second = assert_preempted(run, seen, "SIGTERM" if len(ranks) == 1 else None)
        assert first < second < STEPS
    requeued = 1 + (strategy == "ddp")
    assert len(requeues.read_text().splitlines()) == requeued

    procs = launch(strategy, small_shards, run, tmp_path, resume="last")
    assert wait(procs, tmp_path) == [0] * len(ranks)
    assert_same_run(ref, run, list(range(1, STEPS + 1)), rng=False)
    resumed = summary(run)["resumed_from"]
    assert len(resumed) == 1 + again and all(Path(p).name == "last.ckpt" for p in resumed)
    assert len(requeues.read_text().splitlines()) == requeued  # a finished run requeues nothing
    assert not list(run.rglob("hpc_ckpt*"))


def _helpers() -> list[int]:
    """The fork server, every process it forked (the DataLoader workers) and multiprocessing's
    resource tracker: the other processes of a job step that SLURM's signal reaches."""
    from multiprocessing import forkserver, resource_tracker

    server = forkserver._forkserver._forkserver_pid
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == server and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return [server, resource_tracker._resource_tracker._pid, *children]


@pytest.mark.slow  # three short real fits
@pytest.mark.usefixtures("one_thread")
def test_preemption_during_validation_with_workers_resumes_exactly(glyph_shards, tmp_path, monkeypatch,
                                                                   capfd):
    """In-process, with 2 DataLoader workers: SIGUSR1 arrives in the middle of the validation
    at step 5 (mid-epoch), sent as SLURM sends it: to the training process, its loader
    workers, the fork server and the resource tracker. The validation finishes, the run
    stops after the next optimizer step (6) with a checkpoint, no helper dies or prints a
    traceback, and the run resumed from it ends as the uninterrupted run does."""
    from resume_matrix import QUICKSTART

    from pixword_lit.fit.preempt import Preempted
    from pixword_lit.fit.train import fit
    from pixword_lit.system.config import load_config
    from pixword_lit.system.lit_module import PixWordLit

    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)  # not a SLURM job here: nothing to requeue
    config = {name: load_config(QUICKSTART, [*overrides("single", glyph_shards, "large", workers,
                                                        tmp_path / name, STEPS), "data.val_limit=16"])
              for name, workers in (("reference", 0), ("run", 2))}  # validations of 2 batches
    # a resource tracker that multiprocessing relaunched in this pytest process earlier (after an
    # earlier test's helper died) runs without the job's signals blocked; a fit starts its own
    # with them blocked (data/workers.py), as it would in a fresh process: stop the stray one
    from multiprocessing import resource_tracker
    if resource_tracker._resource_tracker._pid is not None:
        resource_tracker._resource_tracker._stop()
    fit(config["reference"])  # in-process loading: the batches do not depend on the workers

    validation_step, sent = PixWordLit.validation_step, {"batches": []}

    def signal_mid_validation(self, batch, batch_idx):
        if self.global_step == 5:
            sent["batches"].append(batch_idx)
        if self.global_step == 5 and batch_idx == 0:
            helpers = _helpers()
            sent["alive_before"] = [p for p in helpers if _alive(p)]
            for pid in [os.getpid(), *helpers]:
                os.kill(pid, signal.SIGUSR1)
            time.sleep(0.2)  # the helpers have had it
            sent["alive_after"] = [p for p in helpers if _alive(p)]
            sent["step"] = self.global_step
        return validation_step(self, batch, batch_idx)

    monkeypatch.setattr(PixWordLit, "validation_step", signal_mid_validation)
    run = tmp_path / "run"
    with pytest.raises(Preempted) as stop:
        fit(config["run"])
    monkeypatch.setattr(PixWordLit, "validation_step", validation_step)
    assert sent["step"] == 5 and len(sent["alive_before"]) >= 4  # server, tracker, >= 2 workers
    assert sent["batches"] == [0, 1]  # the validation went on to its end
    assert sent["alive_after"] == sent["alive_before"]
    assert stop.value.step == 6 and stop.value.signame == "SIGUSR1"
    assert assert_preempted(run, 5, "SIGUSR1") == 6
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [5]  # and was recorded
    err = capfd.readouterr().err
    assert "Traceback" not in err and "resource_tracker" not in err, err[-3000:]

    fit(config["run"], resume="last")
    assert_same_run(tmp_path / "reference", run, list(range(1, STEPS + 1)), rng=False)
    assert [Path(p).name for p in summary(run)["resumed_from"]] == ["last.ckpt"]


def _alive(pid: int) -> bool:
    from pixword_lit.data.workers import alive

    return alive(pid)
