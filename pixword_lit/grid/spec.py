"""Grids of runs: a base experiment plus axes, expanded in a fixed order and run
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
      "@size":                    # a named axis (key starts with @): its mapping values are
        - {label: s1, model.dim: 32, optim.lr: 4.0e-3}   # dotted keys from the config's root
    seeds: [0, 1]                 # run.seed values (default [0])
    repeat: {seeds: [1, 2], cells: [CELL, ...]}   # optional: more seeds at a few cells only
    threads: 1                    # intra-op threads per run (default: see below)
    power_law: val/loss           # optional: `pixword compare` fits metric = a * params^-alpha
    scaling: val/pix_loss         # optional: `pixword compare` fits E + A/N^alpha + B/D^beta (scaling.py)
    launcher: {name: local, parallel: 2}   # optional: how cells run (launch.py; README)

Order: seeds outermost, then the cartesian product of the axes with the last axis fastest,
so a grid cut short has every cell at the first seed before any at the second; `repeat`'s
runs come last.
Names: per axis `<last part of the key>-<value>`, joined by `_`, then `_s<seed>`.
State: `<root>/grid_state.json` records each run's `fit` arguments, status and error tail
(launch.py runs the cells and keeps it); a run is finished iff `<root>/<run>/summary.json`
says finished with a finite val/loss and it was made with the same arguments. Running a
grid again skips finished runs and runs the others again.
Threads: by default each of the N cells running at once gets cores / N of the machine, one
of them left to its data worker (on a 2-core machine: one intra-op thread, since there a
second compute thread made each step slower, not faster); `threads:` fixes the number.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shlex
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pixword_lit.files import write_json
from pixword_lit.grid.cell import fit_command
from pixword_lit.system.config import REPO_ROOT, ConfigError, load_config

GRID_DIR = REPO_ROOT / "experiments" / "grids"
GRID_KEYS = {"name", "base", "fixed", "axes", "seeds", "threads", "power_law", "scaling", "launcher",
             "repeat"}


@dataclass
class GridRun:
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
    threads: int | None = None  # None: the launcher's share of the cores
    power_law: str | None = None
    scaling: str | None = None
    launcher: dict = field(default_factory=dict)
    repeat: dict = field(default_factory=dict)  # {"seeds": [...], "cells": [...]}

    def runs(self) -> list[GridRun]:
        keys = list(self.axes)
        fixed = [override(k, v) for k, v in self.fixed.items()]
        cells = []
        for values in itertools.product(*(self.axes[k] for k in keys)):
            cell = "_".join(_name_part(k, v) for k, v in zip(keys, values)) or "base"
            axis_overrides = [o for k, v in zip(keys, values) for o in axis_override(k, v)]
            cells.append((cell, dict(zip(keys, values)), fixed + axis_overrides))
        out = [GridRun(f"{c}_s{seed}", c, seed, axes, ovr)
               for seed in self.seeds for c, axes, ovr in cells]
        if self.repeat:
            names = [c for c, _, _ in cells]
            unknown = sorted(set(self.repeat.get("cells", [])) - set(names))
            if unknown:
                raise ConfigError(f"{self.path}: repeat: no cell named {unknown[0]!r} "
                                  f"(cells: {', '.join(names)})")
            out += [GridRun(f"{c}_s{seed}", c, seed, axes, ovr)
                    for seed in self.repeat.get("seeds", []) if seed not in self.seeds
                    for c, axes, ovr in cells if c in self.repeat["cells"]]
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
    repeat = raw.get("repeat") or {}
    if not isinstance(repeat, dict) or set(repeat) - {"seeds", "cells"}:
        raise ConfigError(f"{p}: `repeat:` must be a mapping {{seeds: [...], cells: [...]}}")
    launcher = raw.get("launcher") or {}
    if not isinstance(launcher, dict):
        raise ConfigError(f"{p}: `launcher:` must be a mapping (see README, Grids)")
    base = (p.parent / raw["base"]).resolve()
    threads = raw.get("threads")
    return Grid(name=raw.get("name", p.stem), path=p, base=base, fixed=raw.get("fixed") or {},
                axes=axes, seeds=list(raw.get("seeds", [0])),
                threads=None if threads is None else int(threads),
                power_law=raw.get("power_law"), scaling=raw.get("scaling"), launcher=launcher,
                repeat=repeat)


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
    mappings too), those of a named axis (`@name`) from the config's root, and its `label`
    only names the cell."""
    if isinstance(value, dict):
        under = "" if key.startswith("@") else f"{key}."
        return [o for k, v in value.items() if k != "label" for o in axis_override(f"{under}{k}", v)]
    if key.startswith("@"):
        raise ConfigError(f"named axis {key!r}: each value must be a mapping of dotted keys")
    return [override(key, value)]


def _name_part(key: str, value) -> str:
    short = key.lstrip("@").split(".")[-1]
    if isinstance(value, dict):
        if "label" in value:
            text = str(value["label"])
        else:
            text = "-".join(str(v) if k == "name" else f"{k}{_fmt(v)}" for k, v in value.items())
    else:
        text = _fmt(value)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{short}-{text}").strip("-")


# ---- commands and state --------------------------------------------------------------------
def cell_args(grid: Grid, run: GridRun) -> list[str]:
    """What makes a run what it is: `fit`'s config and overrides (the run folder excluded, so
    the record is the same whichever machine or grid root runs it)."""
    return [os.path.relpath(grid.base), *run.overrides, f"run.name={run.name}", f"run.seed={run.seed}"]


def run_overrides(run: GridRun, root: Path) -> list[str]:
    return [*run.overrides, f"run.dir={root / run.name}", f"run.name={run.name}",
            f"run.seed={run.seed}"]


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
    p = Path(root) / "grid_state.json"
    return json.loads(p.read_text()) if p.exists() else {"runs": {}}


def save_state(root: Path, state: dict) -> None:
    write_json(Path(root) / "grid_state.json", state, indent=1)


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


def run_status(grid: Grid, run: GridRun, root: Path, state: dict, args: list[str] | None = None) -> str:
    """finished (same arguments, summary finished with a finite val/loss), changed (recorded
    with other arguments: runs again from scratch), else the recorded status (or pending)."""
    rec = state["runs"].get(run.name, {})
    args = args if args is not None else cell_args(grid, run)
    if rec and "args" not in rec and "command" in rec:  # a record from before launchers
        rec = {**rec, "args": [x for x in rec["command"][4:]
                               if not x.startswith("run.dir=") and x != "--overwrite"]}
    if rec and rec.get("args") != args:
        return "changed"
    if summary_problem(read_summary(Path(root) / run.name)) is None:
        return "finished"
    return {"finished": "pending"}.get(rec.get("status"), rec.get("status", "pending"))


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def dry_run(grid: Grid, root: Path, threads: int | None, echo=print, extra: list[str] = ()) -> dict:
    """Print every run, its status and its exact command; -> {status: count}. Runs nothing."""
    root = Path(root)
    runs, state = grid.runs(), load_state(root)
    invalid = check_configs(grid, root)
    echo(f"grid {grid.name}: {len(runs)} runs ({shape(grid)}) in {root}")
    counts: dict[str, int] = {}
    for i, run in enumerate(runs, 1):
        args = [*cell_args(grid, run), *extra]
        status = run_status(grid, run, root, state, args)
        note = f"  INVALID: {invalid[run.name]}" if run.name in invalid else ""
        echo(f"[{i}/{len(runs)}] {run.name} ({status}){note}")
        cmd = fit_command(args, root / run.name, resume=status in ("preempted", "interrupted"))
        echo("  " + (f"OMP_NUM_THREADS={threads} " if threads else "") + shlex.join(cmd))
        status = "invalid" if note else status
        counts[status] = counts.get(status, 0) + 1
    return counts


def shape(grid: Grid) -> str:
    """"6 cells x 2 seeds" (+ ", 2 cells x 1 more seeds" with `repeat`)."""
    n = math.prod(len(v) for v in grid.axes.values())
    text = f"{n} cells x {len(grid.seeds)} seeds"
    extra = [s for s in grid.repeat.get("seeds", []) if s not in grid.seeds]
    if grid.repeat and extra:
        text += f", {len(grid.repeat.get('cells', []))} cells x {len(extra)} more seeds"
    return text


def spec_of(grid: Grid) -> dict:
    return {"base": os.path.relpath(grid.base), "fixed": grid.fixed, "axes": grid.axes,
            "seeds": grid.seeds, "threads": grid.threads, "power_law": grid.power_law,
            "scaling": grid.scaling, "repeat": grid.repeat, "launcher": grid.launcher}


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
        echo(f"{name}: {n} runs ({shape(g)}), {where}")
        echo(textwrap.fill(" ".join(about), 92, initial_indent="    ", subsequent_indent="    "))
