"""Compare runs: run summaries -> results/<grid>/runs.csv, summary.csv,
paired.csv, summary.md and plots.

Every number comes from a run's summary.json (the final validation of `fit`, the same values
`fit` hands to TensorBoard's HParams view) or its metrics.jsonl (validation curves); nothing
is recomputed. Runs are grouped into cells by their name without the `_s<seed>` suffix; a
cell's metrics are the mean, the sample standard deviation and the 95% Student-t interval
over its finished seeds (stats.py), and each cell is compared with a reference cell (the
grid's first, or `--ref`) seed by seed. runs.csv keeps every run's numbers, so
`pixword compare results/<grid>/runs.csv` redoes the tables without the run folders.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixword_lit.grid.plots import bar_metrics, plot_curves, plot_finals, plot_paired, plot_power_law, varies
from pixword_lit.grid.reading import reading_markdown, write_reading
from pixword_lit.grid.scaling_report import write_scaling
from pixword_lit.grid.spec import load_grid, load_state, read_summary, summary_problem
from pixword_lit.grid.stats import interval, paired
from pixword_lit.grid.tables import (
    COUNTS,
    METRICS,
    fmt_axis,
    markdown,
    num,
    read_runs_csv,
    run_rows,
    write_csv,
)
from pixword_lit.system.config import ConfigError

__all__ = ["METRICS", "COUNTS", "collect", "write_results", "cell_rows", "paired_rows",
           "power_law_fit"]


@dataclass
class RunRecord:
    name: str
    dir: Path
    summary: dict | None
    error: str | None = None  # why the run does not count (failed, missing, NaN)
    axes: dict = field(default_factory=dict)

    @property
    def cell(self) -> str:
        return re.sub(r"_s\d+$", "", self.name)

    @property
    def seed(self) -> int | None:
        """The run's seed (summary.json's, else its name's `_s<seed>`); pairs match on it."""
        s = (self.summary or {}).get("seed")
        if isinstance(s, int) and not isinstance(s, bool):
            return s
        m = re.search(r"_s(\d+)$", self.name)
        return int(m.group(1)) if m else None

    def value(self, key: str) -> float:
        return num((self.summary or {}).get(key))

    def curve(self, metric: str = "val/pix_loss") -> tuple[list, list]:
        """(steps, values) of the validation curve; a repeated step keeps its last value."""
        points: dict[int, float] = {}
        try:
            for line in (self.dir / "metrics.jsonl").read_text().splitlines():
                rec = json.loads(line)
                if rec.get(metric) is not None:
                    points[int(rec["step"])] = float(rec[metric])
        except (OSError, ValueError):
            pass
        steps = sorted(points)
        return steps, [points[s] for s in steps]


@dataclass
class Collection:
    name: str
    runs: list[RunRecord]
    source: str  # what was compared, for the report
    spec: dict | None = None  # the grid spec, when the runs are a grid's
    root: Path | None = None  # the grid root
    from_table: bool = False  # re-read from a committed runs.csv


def collect(targets: list[str]) -> Collection:
    """Run dirs, grid roots (with grid_state.json), grid YAMLs or a runs.csv -> the runs."""
    if len(targets) == 1 and targets[0].endswith(".csv"):
        return _from_table(Path(targets[0]))
    if len(targets) == 1 and (targets[0].endswith((".yaml", ".yml")) or not Path(targets[0]).exists()):
        grid = load_grid(targets[0])
        return _from_root(grid.default_root(), grid.name, targets[0])
    if len(targets) == 1 and (Path(targets[0]) / "grid_state.json").exists():
        root = Path(targets[0])
        return _from_root(root, load_state(root).get("grid", root.name), targets[0])
    runs = []
    for t in targets:
        p = Path(t)
        dirs = [p] if (p / "summary.json").exists() else sorted(
            d for d in p.iterdir() if (d / "summary.json").exists()) if p.is_dir() else []
        if not dirs:
            raise ConfigError(f"compare: {t} is not a run folder, a grid root, a grid file or a runs.csv")
        for d in dirs:
            s = read_summary(d)
            runs.append(RunRecord(d.name, d, s, summary_problem(s)))
    name = Path(targets[0]).name if len(targets) == 1 else "runs"
    return Collection(name, runs, " ".join(targets))


def _from_table(path: Path) -> Collection:
    if not path.exists():
        raise ConfigError(f"compare: {path} not found")
    try:
        records = read_runs_csv(path)
    except ValueError as e:
        raise ConfigError(f"compare: {e}") from None
    runs = [RunRecord(name, path.parent / "runs" / name, summary, error, axes)
            for name, axes, summary, error in records]
    return Collection(path.parent.name, runs, str(path), from_table=True)


def _from_root(root: Path, name: str, source: str) -> Collection:
    state = load_state(root)
    if not state.get("order"):
        raise ConfigError(f"compare: {root} holds no grid state; run `pixword grid` first")
    axes_of = state.get("axes") or {}  # run name -> axis values, recorded at launch
    runs = []
    for run_name in state["order"]:
        rec = state["runs"].get(run_name, {})
        s = read_summary(root / run_name)
        problem = summary_problem(s)
        if problem is None and rec.get("status") not in (None, "finished"):
            problem = rec.get("status")
        error = (rec.get("error") or problem) if problem else None
        runs.append(RunRecord(run_name, root / run_name, s, error, axes_of.get(run_name, {})))
    return Collection(name, runs, source, state.get("spec"), root)


# ---- numbers -------------------------------------------------------------------------------
def power_law_fit(params, losses) -> dict:
    """Least squares in log space: log L = log a - alpha log N  ->  {a, alpha, r2, n}."""
    n, y = np.log(np.asarray(params, float)), np.log(np.asarray(losses, float))
    slope, intercept = np.polyfit(n, y, 1)
    pred = intercept + slope * n
    ss_res, ss_tot = float(((y - pred) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return {"a": float(math.exp(intercept)), "alpha": float(-slope),
            "r2": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan"), "n": len(n)}


def _cells(col: Collection) -> dict[str, list[RunRecord]]:
    cells: dict[str, list[RunRecord]] = {}
    for r in col.runs:
        cells.setdefault(r.cell, []).append(r)
    return cells


def cell_rows(col: Collection) -> list[dict]:
    """One row per cell, in the order cells first appear (the grid's expansion order):
    per metric the mean, sample std and the half-width of the 95% Student-t interval."""
    rows = []
    for cell, runs in _cells(col).items():
        ok = [r for r in runs if r.error is None]
        row = {"cell": cell, **{k: fmt_axis(v) for k, v in runs[0].axes.items()},
               "seeds": len(ok), "runs": len(runs),
               "status": "finished" if len(ok) == len(runs) else f"{len(runs) - len(ok)} failed"}
        for m in METRICS:
            i = interval([r.value(m) for r in ok])
            row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_ci95"] = i.mean, i.std, i.half
        for k in COUNTS:
            row[k] = interval([r.value(k) for r in ok]).mean
        row["git_commit"] = ";".join(sorted({str(r.summary.get("git_commit")) for r in ok}))
        errors = [f"{r.name}: {_short_error(r.error)}" for r in runs if r.error]
        row["errors"] = " | ".join(errors)
        rows.append(row)
    return rows


def reference_cell(col: Collection, ref: str | None) -> str | None:
    cells = list(_cells(col))
    if ref is None:
        return cells[0] if cells else None
    if ref not in cells:
        raise ConfigError(f"compare: --ref {ref!r} is not a cell of {col.name} (cells: {', '.join(cells)})")
    return ref


def paired_rows(col: Collection, ref: str, metrics: list[str] | None = None) -> list[dict]:
    """Each cell minus the reference cell, seed by seed, per metric: the mean difference and
    its 95% Student-t interval; `verdict` says whether the interval covers 0."""
    cells = _cells(col)
    metrics = METRICS if metrics is None else metrics  # [] (nothing varies): no rows
    by_seed = {c: {m: {r.seed: r.value(m) for r in runs if r.error is None}
                   for m in metrics} for c, runs in cells.items()}
    out = []
    for cell in cells:
        if cell == ref:
            continue
        for m in metrics:
            i = paired(by_seed[cell][m], by_seed[ref][m])
            if i.n == 0:
                continue
            verdict = {None: "one pair", True: "within noise", False: "differs"}[i.covers_zero]
            out.append({"cell": cell, "ref": ref, "metric": m, "pairs": i.n, "diff_mean": i.mean,
                        "diff_ci95": i.half, "diff_low": i.low, "diff_high": i.high,
                        "verdict": verdict})
    return out


def _short_error(error: str) -> str:
    """`why` (first line) and the last line of the log tail, which names the error."""
    lines = [ln.strip() for ln in error.splitlines() if ln.strip()]
    return lines[0] if len(lines) == 1 else f"{lines[0]}: {lines[-1]}"


# ---- outputs -------------------------------------------------------------------------------
def default_out(col: Collection) -> Path:
    """results/NAME; a re-analysed runs.csv: its own folder."""
    return Path(col.source).parent if col.from_table else Path("results") / col.name


def write_results(col: Collection, out: Path, power_law: str | None = None,
                  ref: str | None = None, scaling: str | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rows = cell_rows(col)
    ref = reference_cell(col, ref)
    varying = [m for m in METRICS if varies(rows, m)]
    pairs = paired_rows(col, ref, varying) if ref else []
    power_law = power_law or (col.spec or {}).get("power_law")
    fit = None
    if power_law:
        pts = [(r.value("params"), r.value(power_law)) for r in col.runs if r.error is None]
        if len({p for p, _ in pts}) >= 2:
            fit = {**power_law_fit(*zip(*pts)), "metric": power_law}
            for row in rows:
                row["power_law_alpha"] = fit["alpha"]
                row["power_law_fit"] = fit["a"] * row["params"] ** -fit["alpha"]
    files = [out / "summary.csv", out / "paired.csv"]
    if not col.from_table:  # a re-analysis leaves the committed runs.csv as it is
        write_csv(run_rows(col.runs), out / "runs.csv", exact=True)
        files.insert(0, out / "runs.csv")
    write_csv(rows, out / "summary.csv")
    write_csv(pairs, out / "paired.csv")
    plots = [p for p in (plot_curves(col.name, col.runs, out / "pix_loss_curves.png"),
                         plot_finals(col.name, col.runs, rows, out / "final_metrics.png")) if p]
    if col.from_table and (out / "pix_loss_curves.png").exists():  # curves need the run folders
        plots.insert(0, out / "pix_loss_curves.png")
    if pairs:
        plots.append(plot_paired(col.name, pairs, ref, bar_metrics(rows), out / "paired_differences.png"))
    if fit:
        plots.append(plot_power_law(col.name, col.runs, fit, out / "power_law.png"))
    scaling = scaling or (col.spec or {}).get("scaling")
    extra = write_scaling(col, scaling, out) if scaling else []
    reading_rows, reading = write_reading(col.runs, ref, out, col.name)  # runs with eval.captions
    plots += [p for p in reading if p.suffix == ".png"]
    files += [p for p in reading if p.suffix == ".csv"]
    md = markdown(col, rows, pairs, ref, fit, [p.name for p in plots], varying)
    (out / "summary.md").write_text(md + reading_markdown(reading_rows))
    return {"rows": rows, "pairs": pairs, "ref": ref, "fit": fit,
            "files": [*files, out / "summary.md", *plots, *extra]}
