"""Run a grid's cells through submitit (issue 12): on this machine N at a time, or on SLURM.

Each run is one `pixword fit` process (under SLURM one per task: a DDP/FSDP cell gets one
task per GPU, as experiments/slurm_fit.sbatch does) started by submitit's LocalExecutor or
SlurmExecutor, not by a scheduler of our own. `<root>/grid_state.json` is the one record of
every run; paths in it are relative to the grid root, so a grid whose runs ran on several
machines is compared from wherever the root is copied to. A run's record goes

    pending -> submitted (job id) -> running -> finished | failed (why + log tail)
                                        `-> preempted -> resumed (--resume last) -> ...
    interrupted: Ctrl-C on a local launch stopped it (the next launch resumes it)
    changed: recorded with other `fit` arguments (the next launch starts it again)

Preemption belongs to `pixword fit`: SLURM sends `launcher.signal` (default USR1, 120 s
before the time limit) and SIGTERM at preemption to every process of the job step; fit
checkpoints, marks its summary.json `preempted`, requeues the job (`scontrol requeue`) and
exits. submitit's own requeue (on its USR2 handler) is switched off inside the cell, so a
job is requeued once. The requeued job runs the same cell again, which sees
SLURM_RESTART_COUNT and passes `--resume last`; a preempted run whose job ended without a
requeue is submitted again with `--resume last` by the next launch.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from pixword_lit.config import REPO_ROOT, ConfigError
from pixword_lit.grid import (
    Grid,
    cell_args,
    fit_command,
    load_state,
    read_summary,
    run_status,
    save_state,
    spec_of,
    summary_problem,
    tail,
)

SOURCE_ROOT = REPO_ROOT  # the checkout whose commit the runs record
IN_FLIGHT = {"submitted", "running", "resumed"}
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # submitit's local jobs time out; cells should not


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
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // spec.parallel - 1)


def launcher_args(spec: Launcher) -> list[str]:
    """Overrides a launcher adds to every run: a SLURM cell's processes are its tasks."""
    if spec.name == "slurm" and spec.gpus_per_node:
        return [f"trainer.devices={spec.gpus_per_node}", f"trainer.num_nodes={spec.nodes}"]
    return []


# ---- one cell, as submitit runs it ----------------------------------------------------------
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


def has_checkpoint(run_dir: Path) -> bool:
    from pixword_lit.parallel import find_resume_checkpoint

    try:
        find_resume_checkpoint(run_dir, "last")
        return True
    except ConfigError:
        return False


# ---- the lock and the commit ----------------------------------------------------------------
class GridLock:
    """One launch per grid root at a time (an flock on `<root>/grid.lock`)."""

    def __init__(self, root: Path):
        self.path = Path(root) / "grid.lock"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise ConfigError(
                f"{self.path.parent}: the grid is being launched by {holder} ({self.path}); "
                "wait for that launch to end or stop it - two at once would run cells twice"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc):
        self.file.truncate(0)
        self.file.close()


def source_commit(repo: Path) -> tuple[str | None, bool]:
    """(HEAD, has uncommitted changes to tracked files); (None, False) outside git."""
    try:
        git = ["git", "-C", str(repo)]
        sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha, bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        return None, False


def require_clean(allow_dirty: bool) -> str | None:
    sha, dirty = source_commit(SOURCE_ROOT)
    if dirty and not allow_dirty:
        raise ConfigError(
            f"{SOURCE_ROOT} has uncommitted changes (git status): results must come from a "
            "commit; commit them, or pass --allow-dirty for runs that are not results"
        )
    return f"{sha}-dirty" if sha and dirty else sha


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
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "error": None}
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
                job = executor.submit(_cell(root, run, args, resume, threads, local=True))
                rec = _record(state, run, args, job, spec, resume, commit,
                              "resumed" if resume else "running")
                live[run.name] = (job, rec, time.perf_counter())
                save_state(root, state)
                echo(f"[{i}/{n}] {run.name}: {rec['status']} (pid {job.job_id}, log {root / rec['log']})")
            for name, (job, rec, t0) in list(live.items()):
                if job.done():
                    rec["wall_s"] = round(time.perf_counter() - t0, 1)
                    _finish(root, name, rec, _local_returncode(job), echo)
                    counts[rec["status"]] = counts.get(rec["status"], 0) + 1
                    del live[name]
                    save_state(root, state)
            if live:
                time.sleep(spec.poll_s)
    except KeyboardInterrupt:
        for job, _, _ in live.values():
            job.cancel()  # SIGINT to submitit's controller: it stops the cell, fit dies with it
        for name, (job, rec, t0) in live.items():
            if job._process is not None:
                job._process.wait()
            rec["wall_s"] = round(time.perf_counter() - t0, 1)
            done = summary_problem(read_summary(root / name)) is None
            rec.update(status="finished" if done else "interrupted")
            echo(f"    {name}: {rec['status']}")
        save_state(root, state)
        raise


def _local_returncode(job) -> int | None:
    if not job.paths.result_pickle.exists():
        return None  # the cell's process died without a result
    try:
        return job.result()["returncode"]
    except Exception:  # noqa: BLE001 - the cell raised: its traceback is in submitit's log
        return None


def _finish(root: Path, name: str, rec: dict, returncode: int | None, echo, engine: str = "") -> None:
    """A run's process has ended: finished, preempted (summary says so) or failed."""
    summary = read_summary(root / name)
    problem = summary_problem(summary)
    rec["returncode"] = returncode
    if summary and summary.get("status") == "preempted":
        rec.update(status="preempted", error=None)
        echo(f"    {name}: preempted at step {summary.get('steps')}; the next launch resumes it")
    elif problem is None and returncode in (0, None) and engine in ("", "COMPLETED"):
        rec.update(status="finished", error=None)
        echo(f"    {name}: finished in {rec.get('wall_s', 0):.0f} s: val/loss {summary['val/loss']:.4f}")
    else:
        if returncode:
            why = f"exit code {returncode}"
        elif engine and engine != "COMPLETED":
            why = f"job {engine}"
        elif returncode is None and not engine:
            why = "the cell's process died without a result"
        else:
            why = problem
        rec.update(status="failed", error=f"{why}\n{tail(root / rec['log'])}".strip())
        echo(f"    {name}: FAILED ({why}); see {root / rec['log']}")


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


# ---- following submitted jobs ---------------------------------------------------------------
SLURM_ACTIVE = {"PENDING": "submitted", "CONFIGURING": "submitted", "SUSPENDED": "submitted",
                "REQUEUED": "preempted", "REQUEUE_HOLD": "preempted", "REQUEUE_FED": "preempted",
                "RUNNING": "running", "COMPLETING": "running", "RESIZING": "running"}


def refresh(root: Path, state: dict, echo=lambda *a: None) -> None:
    """Under the grid's lock: SLURM records in flight -> their state from the engine (sacct
    through submitit); local records still in flight were left by a launch that was killed."""
    for rec in state["runs"].values():
        if rec.get("launcher") == "local" and rec.get("status") in IN_FLIGHT:
            rec["status"] = "interrupted"
    live = {n: r for n, r in state["runs"].items()
            if r.get("launcher") == "slurm" and r.get("status") in IN_FLIGHT | {"preempted"}
            and r.get("job_id")}
    if not live:
        return
    import submitit

    submitit.SlurmJob.watcher.clear()
    for name, rec in live.items():
        job = submitit.SlurmJob(folder=root / ".submitit" / "%j", job_id=rec["job_id"])
        try:
            engine = (job.get_info(mode="force").get("State") or "UNKNOWN").split()[0]
        except Exception:  # noqa: BLE001 - no sacct here: keep the record as it is
            return
        summary = read_summary(root / name) or {}
        was_preempted = summary.get("status") == "preempted" or rec["status"] == "preempted"
        if engine == "UNKNOWN":
            continue
        if engine in SLURM_ACTIVE:
            status = SLURM_ACTIVE[engine]
            if status == "running" and (was_preempted or rec.get("resume")):
                status = "resumed"
            elif status == "submitted" and was_preempted:
                status = "preempted"
            rec["status"] = status
        elif engine == "PREEMPTED" or (summary.get("status") == "preempted"):
            rec.update(status="preempted", error=None)
        else:
            rc = None
            if job.paths.result_pickle.exists():
                try:
                    rc = job.result()["returncode"]
                except Exception:  # noqa: BLE001
                    rc = None
            _finish(root, name, rec, rc, echo, engine)


def status_table(grid: Grid, root: Path | None = None, echo=print) -> dict:
    """Print every run's record (refreshed from SLURM unless a launch holds the grid)."""
    root = Path(root or grid.default_root())
    state, note = load_state(root), ""
    if state.get("order"):
        try:
            with GridLock(root):
                refresh(root, state)
                save_state(root, state)
        except ConfigError as e:
            note = f" (as recorded: {e})"
    rows = []
    for run in grid.runs():
        rec = state["runs"].get(run.name, {})
        status = run_status(grid, run, root, state, rec.get("args"))
        summary = read_summary(root / run.name) or {}
        loss = summary.get("val/loss") if status == "finished" else None
        lines = (rec.get("error") or "").splitlines() if status == "failed" else []
        why = [": ".join(dict.fromkeys([lines[0], lines[-1]]))[:120]] if lines else []
        rows.append([run.name, status, rec.get("job_id") or "", str(rec.get("wall_s", "")),
                     f"{loss:.4f}" if isinstance(loss, float) else "", *(why or [""])])
    head = ["run", "status", "job", "wall_s", "val/loss", "note"]
    widths = [max(len(str(r[k])) for r in [head, *rows]) for k in range(len(head) - 1)]
    for r in [head, *rows]:
        echo("  ".join(str(x).ljust(w) for x, w in zip(r, widths)) + "  " + r[-1])
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[1]] = counts.get(r[1], 0) + 1
    echo(f"grid {grid.name} in {root}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + note)
    return counts
