"""Grids of runs (issue 3): a base experiment plus axes, expanded in a fixed order and run
cell by cell, each in its own process, so a crash or a bad config fails only its cell.

A grid file (experiments/grids/*.yaml):

    base: ../quickstart.yaml      # the experiment every run starts from (relative to this file)
    fixed:                        # dotted overrides shared by every run
      trainer.max_steps: 300
    axes:                         # dotted key -> list of values, in the order to expand
      model.window_size: [4, 8, 16]
      model.folding:              # a mapping value sets several keys under the axis key;
        - {name: uniform, factor: 32}
        - {name: palette, colors: 512, label: palette512}   # `label` only names the cell
    seeds: [0, 1]                 # run.seed values (default [0])
    threads: 1                    # intra-op threads per run (default 1; see below)
    power_law: val/loss           # optional: `pixword compare` fits metric = a * params^-alpha

Order: seeds outermost, then the cartesian product of the axes with the last axis fastest,
so a grid cut short has every cell at the first seed before any at the second.
Names: per axis `<last part of the key>-<value>`, joined by `_`, then `_s<seed>`.
State: `<root>/grid_state.json` records each run's command, status and error tail; a run is
finished iff `<root>/<run>/summary.json` says finished with a finite val/loss and it was
made by the same command. Running a grid again skips finished runs and retries the others.
Threads: runs use one intra-op thread by default, because on a 2-core machine the data
worker takes the other core and a second compute thread made each step slower, not faster.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pixword_lit.config import REPO_ROOT, ConfigError, load_config

GRID_DIR = REPO_ROOT / "experiments" / "grids"
GRID_KEYS = {"name", "base", "fixed", "axes", "seeds", "threads", "power_law"}


@dataclass
class Run:
    name: str  # unique in the grid: cell name + _s<seed>
    cell: str  # the axis values, seed excluded
    seed: int
    axes: dict  # axis key -> value (labels kept, for tables)
    overrides: list[str]  # dotted key=value: fixed, then axis values


@dataclass
class Grid:
    name: str
    path: Path
    base: Path
    fixed: dict = field(default_factory=dict)
    axes: dict = field(default_factory=dict)
    seeds: list = field(default_factory=lambda: [0])
    threads: int = 1
    power_law: str | None = None

    def runs(self) -> list[Run]:
        keys = list(self.axes)
        fixed = [override(k, v) for k, v in self.fixed.items()]
        out = []
        for seed in self.seeds:
            for values in itertools.product(*(self.axes[k] for k in keys)):
                cell = "_".join(_name_part(k, v) for k, v in zip(keys, values)) or "base"
                axis_overrides = [o for k, v in zip(keys, values) for o in axis_override(k, v)]
                out.append(Run(f"{cell}_s{seed}", cell, seed, dict(zip(keys, values)),
                               fixed + axis_overrides))
        names = [r.name for r in out]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"{self.path}: axis values give duplicate run names {dup}; add labels")
        return out

    def default_root(self) -> Path:
        return Path("runs") / "grids" / self.name


def load_grid(path: str | Path) -> Grid:
    """A grid YAML (or the name of a predefined grid) -> Grid; unknown keys are errors."""
    p = Path(path)
    if not p.exists() and (GRID_DIR / f"{path}.yaml").exists():
        p = GRID_DIR / f"{path}.yaml"
    if not p.exists():
        raise ConfigError(f"grid file not found: {path} (predefined: {', '.join(predefined())})")
    raw = yaml.safe_load(p.read_text()) or {}
    unknown = sorted(set(raw) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"{p}: unknown grid key {unknown[0]!r} (valid: {', '.join(sorted(GRID_KEYS))})")
    if "base" not in raw:
        raise ConfigError(f"{p}: a grid needs `base:` (the experiment every run starts from)")
    axes = raw.get("axes") or {}
    for k, v in axes.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{p}: axis {k!r} must be a non-empty list of values")
    base = (p.parent / raw["base"]).resolve()
    return Grid(name=raw.get("name", p.stem), path=p, base=base, fixed=raw.get("fixed") or {},
                axes=axes, seeds=list(raw.get("seeds", [0])), threads=int(raw.get("threads", 1)),
                power_law=raw.get("power_law"))


def predefined() -> list[str]:
    return sorted(p.stem for p in GRID_DIR.glob("*.yaml"))


def _fmt(v) -> str:
    """A value as OmegaConf's dotlist parses it back."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def override(key: str, value) -> str:
    return f"{key}={_fmt(value)}"


def axis_override(key: str, value) -> list[str]:
    """Dotted overrides of one axis value; a mapping sets the keys under the axis key (nested
    mappings too), and its `label` only names the cell."""
    if isinstance(value, dict):
        return [o for k, v in value.items() if k != "label" for o in axis_override(f"{key}.{k}", v)]
    return [override(key, value)]


def _name_part(key: str, value) -> str:
    short = key.split(".")[-1]
    if isinstance(value, dict):
        if "label" in value:
            text = str(value["label"])
        else:
            text = "-".join(str(v) if k == "name" else f"{k}{_fmt(v)}" for k, v in value.items())
    else:
        text = _fmt(value)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{short}-{text}").strip("-")


# ---- commands and state --------------------------------------------------------------------
def run_overrides(run: Run, root: Path) -> list[str]:
    return [*run.overrides, f"run.dir={root / run.name}", f"run.name={run.name}",
            f"run.seed={run.seed}"]


def command(grid: Grid, run: Run, root: Path) -> list[str]:
    base = os.path.relpath(grid.base)
    return [sys.executable, "-m", "pixword_lit.cli", "fit", base, *run_overrides(run, root),
            "--overwrite"]


def shell_line(grid: Grid, cmd: list[str]) -> str:
    return f"OMP_NUM_THREADS={grid.threads} " + shlex.join(cmd)


def check_configs(grid: Grid, root: Path | None = None) -> dict[str, str]:
    """Load every run's config as `fit` will (no data read) -> {run name: error}."""
    root = root or grid.default_root()
    errors = {}
    for run in grid.runs():
        try:
            load_config(grid.base, run_overrides(run, root))
        except ConfigError as e:
            errors[run.name] = str(e)
    return errors


def load_state(root: Path) -> dict:
    p = root / "grid_state.json"
    return json.loads(p.read_text()) if p.exists() else {"runs": {}}


def save_state(root: Path, state: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / "grid_state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, root / "grid_state.json")


def read_summary(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def summary_problem(summary: dict | None) -> str | None:
    """Why a run's summary does not count as finished (None when it does)."""
    if summary is None:
        return "no summary.json"
    if summary.get("status") != "finished":
        return f"status {summary.get('status')!r}"
    loss = summary.get("val/loss")
    if not isinstance(loss, (int, float)) or not math.isfinite(loss):
        return f"non-finite val/loss ({loss})"
    return None


def run_status(grid: Grid, run: Run, root: Path, state: dict) -> str:
    rec = state["runs"].get(run.name, {})
    cmd = command(grid, run, root)
    same = rec.get("command", cmd)[1:] == cmd[1:]  # the interpreter's path may differ
    if same and summary_problem(read_summary(root / run.name)) is None:
        return "finished"
    if not same:
        return "changed"
    return {"finished": "pending"}.get(rec.get("status"), rec.get("status", "pending"))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_grid(grid: Grid, root: Path | None = None, dry_run: bool = False, echo=print) -> dict:
    """Run every unfinished run of the grid in turn; -> {status: count} after the pass."""
    root = Path(root or grid.default_root())
    runs = grid.runs()
    state = load_state(root)
    counts: dict[str, int] = {}
    if dry_run:
        invalid = check_configs(grid, root)
        echo(f"grid {grid.name}: {len(runs)} runs ({len(runs) // len(grid.seeds)} cells x "
             f"{len(grid.seeds)} seeds) in {root}")
        for i, run in enumerate(runs, 1):
            status = run_status(grid, run, root, state)
            note = f"  INVALID: {invalid[run.name]}" if run.name in invalid else ""
            echo(f"[{i}/{len(runs)}] {run.name} ({status}){note}")
            echo("  " + shell_line(grid, command(grid, run, root)))
            status = "invalid" if note else status
            counts[status] = counts.get(status, 0) + 1
        return counts
    state.update(grid=grid.name, file=os.path.relpath(grid.path), root=str(root),
                 spec=_spec(grid), order=[r.name for r in runs])
    save_state(root, state)
    env = {**os.environ, "OMP_NUM_THREADS": str(grid.threads), "MKL_NUM_THREADS": str(grid.threads)}
    grid_start = time.perf_counter()
    for i, run in enumerate(runs, 1):
        cmd = command(grid, run, root)
        if run_status(grid, run, root, state) == "finished":
            echo(f"[{i}/{len(runs)}] {run.name}: finished before, skipped")
            counts["skipped"] = counts.get("skipped", 0) + 1
            continue
        run_dir, log = root / run.name, root / "logs" / f"{run.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").unlink(missing_ok=True)  # a stale one must not count
        rec = {"status": "running", "command": cmd, "log": os.path.relpath(log, root),
               "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        state["runs"][run.name] = rec
        save_state(root, state)
        echo(f"[{i}/{len(runs)}] {run.name}: running (log {log})")
        start = time.perf_counter()
        try:
            with open(log, "w") as f:
                f.write(shell_line(grid, cmd) + "\n\n")
                f.flush()
                proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        except KeyboardInterrupt:
            rec.update(status="interrupted", wall_s=round(time.perf_counter() - start, 1))
            save_state(root, state)
            raise
        rec["wall_s"] = round(time.perf_counter() - start, 1)
        rec["returncode"] = proc.returncode
        summary = read_summary(run_dir)
        problem = summary_problem(summary)
        if proc.returncode == 0 and problem is None:
            rec.update(status="finished", error=None)
            echo(f"    finished in {rec['wall_s']:.0f} s: val/loss {summary['val/loss']:.4f}")
        else:
            why = f"exit code {proc.returncode}" if proc.returncode else problem
            rec.update(status="failed", error=f"{why}\n{_tail(log)}".strip())
            echo(f"    FAILED ({why}) after {rec['wall_s']:.0f} s; see {log}")
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
        save_state(root, state)
    echo(f"grid {grid.name}: {counts} in {time.perf_counter() - grid_start:.0f} s; "
         f"state in {root / 'grid_state.json'}")
    return counts


def _spec(grid: Grid) -> dict:
    return {"base": os.path.relpath(grid.base), "fixed": grid.fixed, "axes": grid.axes,
            "seeds": grid.seeds, "threads": grid.threads, "power_law": grid.power_law}


def list_grids(echo=print) -> None:
    for name in predefined():
        g = load_grid(GRID_DIR / f"{name}.yaml")
        about = []  # the leading comment, without its command line
        for line in g.path.read_text().splitlines():
            if not line.startswith("#"):
                break
            text = line.lstrip("# ").strip()
            if not text.startswith("pixword "):
                about.append(text)
        n = len(g.runs())
        where = os.path.relpath(g.path)
        echo(f"{name}: {n} runs ({n // len(g.seeds)} cells x {len(g.seeds)} seeds), {where}")
        echo(textwrap.fill(" ".join(about), 92, initial_indent="    ", subsequent_indent="    "))
