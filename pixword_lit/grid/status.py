"""A grid's record: `<root>/grid_state.json` is the one record of every run, kept
by one launch at a time (`GridLock`) and refreshed from SLURM when it can. Paths in it are
relative to the grid root, so runs that ran on several machines are compared anywhere.

    pending -> submitted (job id) -> running -> finished | failed (why + log tail)
                                        `-> preempted -> resumed (--resume last) -> ...
    interrupted: Ctrl-C on a local launch stopped it (the next launch resumes it)
    changed: recorded with other `fit` arguments (the next launch starts it again)
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from pixword_lit.grid.spec import (
    Grid,
    load_state,
    read_summary,
    run_status,
    save_state,
    summary_problem,
    tail,
)
from pixword_lit.system.config import ConfigError

IN_FLIGHT = {"submitted", "running", "resumed"}


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


def preempted_now(root: Path, name: str, rec: dict) -> bool:
    """summary.json says preempted, written since this attempt was launched (a resumed run
    that then crashed leaves the old one: that is a failure, not a second preemption)."""
    p = root / name / "summary.json"
    summary = read_summary(root / name) or {}
    return summary.get("status") == "preempted" and p.stat().st_mtime >= rec.get("launched_at", 0)


def record_end(root: Path, name: str, rec: dict, returncode: int | None, echo, engine: str = "") -> None:
    """A run's process has ended: finished, preempted (summary says so) or failed."""
    summary = read_summary(root / name)
    problem = summary_problem(summary)
    rec["returncode"] = returncode
    if rec.get("wall_s") is None and summary and summary.get("wall_s") is not None:
        rec["wall_s"] = summary["wall_s"]  # a SLURM job's: the run's own clock (no launcher timed it)
    if preempted_now(root, name, rec):
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
        was_preempted = preempted_now(root, name, rec) or rec["status"] == "preempted"
        if engine == "UNKNOWN":
            continue
        if engine in SLURM_ACTIVE:
            status = SLURM_ACTIVE[engine]
            if status == "running" and (was_preempted or rec.get("resume")):
                status = "resumed"
            elif status == "submitted" and was_preempted:
                status = "preempted"
            rec["status"] = status
        elif engine == "PREEMPTED" or preempted_now(root, name, rec):
            rec.update(status="preempted", error=None)
        else:
            rc = None
            if job.paths.result_pickle.exists():
                try:
                    rc = job.result()["returncode"]
                except Exception:  # noqa: BLE001
                    rc = None
            record_end(root, name, rec, rc, echo, engine)


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
        wall = rec.get("wall_s") if rec.get("wall_s") is not None else summary.get("wall_s", "")
        rows.append([run.name, status, rec.get("job_id") or "", str(wall),
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
