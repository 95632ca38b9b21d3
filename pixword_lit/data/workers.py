"""How DataLoader workers start and end.

Workers start from a fork server that imported the started script, torch and
pixword_lit.data.stream once (data/server_main.py: multiprocessing otherwise runs the script
again in every worker, ~4 s of CPU each for a script that imports Lightning), not by forking
the training process: a fork copies locks that the process's other threads (gloo's,
torch's pools) may hold into a worker that can then wait on them forever (pytorch#130610).
The server starts once per training process; `spawn` would re-import torch for every
iterator. Batches do not depend on the start method: workers build them from seeds alone.

A worker started by the fork server is the server's child, so torch's own check (the
worker's parent is gone) does not see the training process die; `watch_trainer` ends the
worker within a second of a SIGKILL of the training process instead of leaving it behind.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
import time


def worker_start(num_workers: int) -> dict:
    """DataLoader keyword arguments for `num_workers` workers (none for 0)."""
    if not num_workers or "forkserver" not in multiprocessing.get_all_start_methods():
        return {}  # in-process, or Windows (spawn, its only method, has the worker's parent right)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["pixword_lit.data.server_main", "torch", "pixword_lit.data.stream"])
    start_helpers_deaf()
    return {"multiprocessing_context": ctx,
            "worker_init_fn": functools.partial(watch_trainer, os.getpid())}


# Signals a job scheduler sends to every process of a job step to announce preemption or a
# time limit (SLURM: `--signal`, `scancel -s`): the training process acts on them (fit/
# preempt.py); the fork server, its workers and multiprocessing's resource tracker must not
# die of them (a dead tracker is relaunched and leaks /dev/shm segments; dead workers fill the
# log with tracebacks).
JOB_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


def start_helpers_deaf() -> None:
    """Start the fork server (and with it the resource tracker) with JOB_SIGNALS blocked:
    a blocked signal mask survives fork and exec, so they and every worker forked from the
    server never receive them, while this process gets any that arrived meanwhile once they
    are unblocked. A no-op when they already run (the first loader of the process started them)."""
    from multiprocessing import forkserver

    from pixword_lit.data.server_main import script_for_server

    with script_for_server(starting=forkserver._forkserver._forkserver_pid is None):
        if threading.current_thread() is not threading.main_thread():
            forkserver.ensure_running()
            return
        from multiprocessing import resource_tracker

        old = signal.pthread_sigmask(signal.SIG_BLOCK, JOB_SIGNALS)
        try:
            resource_tracker.ensure_running()  # it unblocks SIGINT and SIGTERM here when it returns
            signal.pthread_sigmask(signal.SIG_BLOCK, JOB_SIGNALS)
            forkserver.ensure_running()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def watch_trainer(trainer_pid: int, worker_id: int) -> None:
    """worker_init_fn: the worker ignores JOB_SIGNALS (a worker killed by one would raise in
    the training process through torch's SIGCHLD check, before its preemption checkpoint), and
    a daemon thread exits the worker once `trainer_pid` is gone."""
    for sig in JOB_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    threading.Thread(target=_watch, args=(trainer_pid,), daemon=True,
                     name=f"pixword-watch-{worker_id}").start()


def _watch(trainer_pid: int) -> None:
    while alive(trainer_pid):
        time.sleep(0.5)
    os._exit(0)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): kill(0) is all there is
