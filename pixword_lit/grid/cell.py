"""One grid run as a job runs it: submitit pickles a Cell and calls it once per
task, on whatever machine the job lands on.

The Cell runs `pixword fit` as a child process, logging to `<root>/logs/<run>.log`.
Preemption belongs to fit: SLURM sends `launcher.signal` (default USR1, 120 s before the
time limit) and SIGTERM at preemption to every process of the job step; fit checkpoints,
marks its summary.json `preempted`, requeues the job (`scontrol requeue`) and exits. The
Cell ignores those signals itself, which switches off submitit's own requeue (its USR2
handler), so a job is requeued once. The requeued job runs the same Cell again, which sees
SLURM_RESTART_COUNT and passes `--resume last`.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pixword_lit.errors import ConfigError


@dataclass
class Cell:
    """The function submitit pickles and runs (once per task): `pixword fit` as a child
    process whose output goes to `<root>/logs/<run>.log` (rank k > 0: `<run>.rank<k>.log`)."""

    name: str
    root: str  # absolute: where the job runs, the grid root is a shared folder
    cwd: str  # the launch's working directory (relative data paths resolve from it)
    args: list
    resume: bool = False
    threads: int | None = None
    env: dict = field(default_factory=dict)  # variables for fit (None: unset)

    def resume_now(self, environ) -> bool:
        """--resume last when launched so, or when SLURM re-runs a requeued job that left a
        checkpoint (SLURM_RESTART_COUNT > 0)."""
        return self.resume or (int(environ.get("SLURM_RESTART_COUNT") or 0) > 0
                               and has_checkpoint(Path(self.root) / self.name))

    def __call__(self) -> dict:
        rank = int(os.environ.get("SLURM_PROCID") or os.environ.get("SUBMITIT_LOCAL_GLOBALID") or 0)
        resume = self.resume_now(os.environ)
        cmd = fit_command(self.args, Path(self.root) / self.name, resume)
        shown = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)} \
            if self.threads else {}
        env, shown = dict(os.environ), {**shown, **self.env}
        for k, v in shown.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):  # fit acts on them, not we
            signal.signal(sig, lambda *_: None)
        log = Path(self.root) / log_path(self.name, rank)
        log.parent.mkdir(parents=True, exist_ok=True)
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID", "?")
        with open(log, "a") as f:
            f.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} job {job} rank {rank} on "
                    f"{socket.gethostname()}: {'resume' if resume else 'start'}\n"
                    + "".join(f"{k}={v} " for k, v in shown.items() if v is not None)
                    + f"{shlex.join(cmd)}\n\n")
            f.flush()
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=self.cwd,
                                    preexec_fn=_die_with_parent)
            try:
                rc = proc.wait()
            except KeyboardInterrupt:  # the launcher stopped us: let fit stop, or kill it
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise
        return {"returncode": rc, "resumed": resume}


def _die_with_parent() -> None:
    """In the child: if the cell's process dies (killed by submitit), fit dies too, instead
    of training on unrecorded."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def log_path(name: str, rank: int = 0) -> str:
    return f"logs/{name}.log" if rank == 0 else f"logs/{name}.rank{rank}.log"


def fit_command(args: list[str], run_dir: Path | str, resume: bool = False) -> list[str]:
    """The process of one run: a fresh start (`--overwrite`) or `--resume last`."""
    return [sys.executable, "-m", "pixword_lit.cli", "fit", *args, f"run.dir={run_dir}",
            *(["--resume", "last"] if resume else ["--overwrite"])]


def has_checkpoint(run_dir: Path) -> bool:
    from pixword_lit.system.checkpoints import find_resume_checkpoint  # torch: only when asked

    try:
        find_resume_checkpoint(run_dir, "last")
        return True
    except (ConfigError, ValueError):  # none there (checkpoint errors are ValueErrors)
        return False


