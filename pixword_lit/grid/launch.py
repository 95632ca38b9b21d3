"""Launch a grid's runs through submitit: on this machine N at a time, or on SLURM.

Each run is one `pixword fit` process (under SLURM one per task: a DDP/FSDP run gets one
task per GPU, as experiments/slurm_fit.sbatch does) started by submitit's LocalExecutor or
SlurmExecutor, not by a scheduler of our own; cell.py is what the job runs, grid/status.py
the record (grid_state.json) and its lock. A launch refuses a checkout with uncommitted
changes unless allowed, skips finished runs, leaves SLURM jobs in flight alone, resumes
preempted and interrupted runs (`--resume last`) and starts the others afresh.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pixword_lit.grid.cell import Cell, has_checkpoint, log_path
from pixword_lit.grid.hparams import write_declaration
from pixword_lit.grid.spec import (
    Grid,
    cell_args,
    load_state,
    read_summary,
    run_status,
    save_state,
    spec_of,
    summary_problem,
)
from pixword_lit.grid.status import IN_FLIGHT, GridLock, record_end, refresh
from pixword_lit.provenance import require_clean, usable_cores
from pixword_lit.system.config import ConfigError

LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # submitit's local jobs time out; cells should not
STOP_GRACE_S = 60  # after Ctrl-C, how long the cells get to stop (a cell gives fit 20 s)


# ---- the launcher section -------------------------------------------------------------------
@dataclass
class Launcher:
    """`launcher:` in a grid file, overridable on the command line (README, Grids)."""

    name: str = "local"  # local | slurm
    parallel: int = 1  # local: cells at once
    nodes: int = 1  # slurm: nodes per cell
    gpus_per_node: int = 0  # slurm: GPUs per node; a cell gets one task per GPU
    cpus_per_task: int | None = None
    mem: str | None = None  # e.g. 64G
    time: int = 60  # minutes (a "D-HH:MM:SS" / "HH:MM:SS" string is read too)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal: str = "USR1@120"  # sent to the cell's processes this many seconds before the limit
    setup: list = field(default_factory=list)  # shell lines before srun, e.g. module load ...
    sbatch: dict = field(default_factory=dict)  # any other sbatch option, e.g. {exclusive: true}
    poll_s: float = 1.0  # local: how often finished cells are collected


LAUNCHER_KEYS = set(Launcher.__dataclass_fields__)


def launcher_of(grid: Grid, **overrides) -> Launcher:
    """The grid's `launcher:` section with the command line's values on top."""
    raw = {**grid.launcher, **{k: v for k, v in overrides.items() if v is not None}}
    where = f"{grid.path}: launcher"
    unknown = sorted(set(raw) - LAUNCHER_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (valid: {', '.join(sorted(LAUNCHER_KEYS))})")
    spec = Launcher(**raw)
    if isinstance(spec.setup, str):
        spec.setup = [spec.setup]
    if not isinstance(spec.sbatch, dict):
        raise ConfigError(f"{where}.sbatch: must be a mapping of sbatch options, e.g. {{qos: high}}")
    if spec.name not in ("local", "slurm"):
        raise ConfigError(f"{where}.name: {spec.name!r} is not local or slurm")
    if int(spec.parallel) < 1:
        raise ConfigError(f"{where}.parallel: must be at least 1, got {spec.parallel}")
    spec.time = minutes(spec.time, f"{where}.time")
    sig, _, delay = str(spec.signal).partition("@")
    if not hasattr(signal, "SIG" + sig.removeprefix("SIG")) or not delay.isdigit():
        raise ConfigError(f"{where}.signal: {spec.signal!r} is not SIGNAL@SECONDS, e.g. USR1@120")
    return spec


def minutes(value, where: str) -> int:
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d\d)(?::(\d\d))?", str(value))
    if not m:
        raise ConfigError(f"{where}: {value!r} is neither minutes nor [D-]HH:MM[:SS]")
    d, h, mi, s = (int(x or 0) for x in m.groups())
    return d * 1440 + h * 60 + mi + (1 if s else 0)


def cell_threads(grid: Grid, spec: Launcher) -> int | None:
    """Intra-op threads per cell: `threads:`, else cores / N with one core of each share left
    to the cell's data worker; under SLURM cpus_per_task (else the cluster's default)."""
    if grid.threads:
        return grid.threads
    if spec.name == "slurm":
        return spec.cpus_per_task
    return max(1, usable_cores() // spec.parallel - 1)


def launcher_args(spec: Launcher) -> list[str]:
    """Overrides a launcher adds to every run: a SLURM cell's processes are its tasks."""
    if spec.name == "slurm" and spec.gpus_per_node:
        return [f"trainer.devices={spec.gpus_per_node}", f"trainer.num_nodes={spec.nodes}"]
    return []


# ---- launching ------------------------------------------------------------------------------
def run_grid(grid: Grid, root: Path | None = None, spec: Launcher | None = None,
             allow_dirty: bool = False, echo=print) -> dict:
    """Launch every unfinished run of the grid; -> {status: count} of this launch.

    local: returns when every launched cell has ended. slurm: returns once every cell is
    submitted; `pixword grid GRID --status` follows them."""
    root = Path(root or grid.default_root())
    spec = spec or launcher_of(grid)
    commit = require_clean(allow_dirty)
    runs, extra, threads = grid.runs(), launcher_args(spec), cell_threads(grid, spec)
    with GridLock(root):
        state = load_state(root)
        refresh(root, state)
        state.update(grid=grid.name, file=os.path.relpath(grid.path), spec=spec_of(grid),
                     order=[r.name for r in runs], axes={r.name: r.axes for r in runs},
                     commit=commit)
        todo, counts = [], {}
        for i, run in enumerate(runs, 1):
            args = [*cell_args(grid, run), *extra]
            status = run_status(grid, run, root, state, args)
            rec = state["runs"].get(run.name, {})
            if status == "finished":
                echo(f"[{i}/{len(runs)}] {run.name}: finished before, skipped")
                counts["skipped"] = counts.get("skipped", 0) + 1
            elif status in IN_FLIGHT and rec.get("launcher") == "slurm":
                echo(f"[{i}/{len(runs)}] {run.name}: {status} as job {rec.get('job_id')}, left alone")
                counts["in flight"] = counts.get("in flight", 0) + 1
            else:
                resume = status in ("preempted", "interrupted") and has_checkpoint(root / run.name)
                todo.append((i, run, args, resume))
        save_state(root, state)
        write_declaration(grid, root)  # what every run shows in TensorBoard's HParams view
        start = time.perf_counter()
        launch = _run_local if spec.name == "local" else _submit_slurm
        launch(root, state, todo, len(runs), spec, threads, commit, counts, echo)
    echo(f"grid {grid.name}: {counts} in {time.perf_counter() - start:.0f} s; "
         f"state in {root / 'grid_state.json'}")
    return counts


def _cell(root: Path, run, args, resume: bool, threads, local: bool) -> Cell:
    if not resume:
        (root / run.name / "summary.json").unlink(missing_ok=True)  # a stale one must not count
    # submitit's LocalExecutor hides every GPU (CUDA_VISIBLE_DEVICES=""); a local run sees
    # the GPUs the launch saw. Under SLURM the job's allocation decides.
    env = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")} if local else {}
    return Cell(run.name, str(root.resolve()), os.getcwd(), args, resume, threads, env)


def _record(state: dict, run, args, job, spec: Launcher, resume: bool, commit, status: str) -> dict:
    rec = {"status": status, "args": args, "dir": run.name, "log": log_path(run.name),
           "launcher": spec.name, "job_id": str(job.job_id), "resume": resume, "commit": commit,
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "launched_at": time.time(), "error": None}
    state["runs"][run.name] = rec
    return rec


def _run_local(root, state, todo, n, spec, threads, commit, counts, echo) -> None:
    import submitit

    executor = submitit.LocalExecutor(folder=root / ".submitit" / "%j")
    executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
    queue, live = deque(todo), {}
    try:
        while queue or live:
            while queue and len(live) < spec.parallel:
                i, run, args, resume = queue.popleft()
                with _stderr_to(root / ".submitit" / "controllers.log"):
                    job = executor.submit(_cell(root, run, args, resume, threads, local=True))
                rec = _record(state, run, args, job, spec, resume, commit,
                              "resumed" if resume else "running")
                live[run.name] = (job, rec, time.perf_counter())
                save_state(root, state)
                echo(f"[{i}/{n}] {run.name}: {rec['status']} (pid {job.job_id}, log {root / rec['log']})")
            for name, (job, rec, t0) in list(live.items()):
                if job.done():
                    rec["wall_s"] = round(time.perf_counter() - t0, 1)
                    record_end(root, name, rec, _local_returncode(job), echo)
                    counts[rec["status"]] = counts.get(rec["status"], 0) + 1
                    del live[name]
                    save_state(root, state)
            if live:
                time.sleep(spec.poll_s)
    except KeyboardInterrupt:
        for job, _, _ in live.values():
            job.cancel()  # SIGINT to submitit's controller: it stops the cell, fit dies with it
        deadline = time.monotonic() + STOP_GRACE_S
        for name, (job, rec, t0) in live.items():
            if job._process is not None:
                _wait_or_kill(job._process, deadline)
            rec["wall_s"] = round(time.perf_counter() - t0, 1)
            done = summary_problem(read_summary(root / name)) is None
            rec.update(status="finished" if done else "interrupted")
            echo(f"    {name}: {rec['status']}")
        save_state(root, state)
        raise


def _wait_or_kill(proc, deadline: float) -> None:
    """Wait for a cell's controller until `deadline`; past it, kill the controller and every
    process under it (a stuck controller must not hang the launcher: fit, which saves its
    checkpoint on the way out, has had STOP_GRACE_S seconds)."""
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        return
    except subprocess.TimeoutExpired:
        pass
    for pid in [*_descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass  # gone meanwhile
    proc.wait()


def _descendants(pid: int) -> list[int]:
    """pids of every live process below `pid` (Linux /proc; elsewhere none are found)."""
    parent = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        kids = [p for p, pp in parent.items() if pp == todo.pop()]
        found += kids
        todo += kids
    return found


@contextmanager
def _stderr_to(path: Path):
    """File descriptor 2 points at `path` while a local job's controller starts: the
    controller (submitit's, one process per cell) keeps that stderr, so a Ctrl-C, which the
    terminal sends to every process of the launch, ends it without a traceback on the screen."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as f:
            os.dup2(f.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _local_returncode(job) -> int | None:
    if not job.paths.result_pickle.exists():
        return None  # the cell's process died without a result
    try:
        return job.result()["returncode"]
    except Exception:  # noqa: BLE001 - the cell raised: its traceback is in submitit's log
        return None


def _submit_slurm(root, state, todo, n, spec, threads, commit, counts, echo) -> None:
    import submitit

    executor = submitit.SlurmExecutor(folder=root / ".submitit" / "%j", max_num_timeout=0)
    sig, _, delay = spec.signal.partition("@")
    params = dict(
        nodes=spec.nodes, ntasks_per_node=max(1, spec.gpus_per_node), time=spec.time,
        signal_delay_s=int(delay), stderr_to_stdout=True, setup=list(spec.setup),
        additional_parameters={"signal": f"{sig.removeprefix('SIG')}@{delay}", "requeue": True,
                               **spec.sbatch},
    )
    for key in ("cpus_per_task", "mem", "partition", "account", "qos", "constraint"):
        if getattr(spec, key) is not None:
            params[key] = getattr(spec, key)
    if spec.gpus_per_node:
        params["gpus_per_node"] = spec.gpus_per_node
    for i, run, args, resume in todo:
        executor.update_parameters(job_name=f"pixword-{state['grid']}-{run.name}", **params)
        job = executor.submit(_cell(root, run, args, resume, threads, local=False))
        rec = _record(state, run, args, job, spec, resume, commit, "submitted")
        save_state(root, state)
        counts["submitted"] = counts.get("submitted", 0) + 1
        echo(f"[{i}/{n}] {run.name}: submitted as job {job.job_id}"
             f"{' (--resume last)' if resume else ''}, log {root / rec['log']}")


