"""`pixword grid GRID --reproduce [CELL]`: does a committed table still come out
of the current commit?

One seed of one cell (default: the grid's first cell at its first seed; `CELL_s<seed>` picks
another seed) runs again at HEAD into a scratch root (default runs/reproduce/GRID), then every
metric is printed beside the committed value from results/GRID/: the run's own row of
runs.csv when there is one, else the cell's row of summary.csv: a mean over seeds, which
over 2 seeds with its std gives both seeds back (mean ± std/sqrt 2); over more, only the
distance in std is known. "same" means equal to the 6 significant digits the tables print.
Timings (wall_s, tokens/s) are left out: they measure the machine, not the code. The
printout is kept as <root>/<run>/reproduce.txt.
"""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path

from pixword_lit.grid.launch import Launcher, require_clean, run_grid
from pixword_lit.grid.spec import Grid, read_summary, summary_problem
from pixword_lit.grid.tables import METRICS, num
from pixword_lit.system.config import ConfigError

COMPARED = [*METRICS, "params", "steps", "tokens_seen", "pix_tokens_seen"]


def pick_run(grid: Grid, cell: str | None):
    """The run to repeat: CELL (or CELL_s<seed>) of the grid, at the grid's first seed."""
    runs = grid.runs()
    cells = list(dict.fromkeys(r.cell for r in runs))
    if not cell:
        return runs[0]
    for r in runs:
        if r.name == cell:
            return r
    if cell not in cells:
        raise ConfigError(f"--reproduce: {cell!r} is not a cell of grid {grid.name} "
                          f"(cells: {', '.join(cells)})")
    return next(r for r in runs if r.cell == cell)


def committed_values(grid_name: str, run, results: Path) -> dict:
    """{"source", "commit", "values": {metric: float}, "std": {...}, "seeds": n or None}
    from results/<grid>/runs.csv (this run's row), else summary.csv (the cell's row)."""
    folder = Path(results) / grid_name
    runs_csv, summary_csv = folder / "runs.csv", folder / "summary.csv"
    if runs_csv.exists():
        for row in _rows(runs_csv):
            if row.get("run") == run.name:
                values = {k: num(row.get(k)) for k in COMPARED}
                return {"source": str(runs_csv), "commit": row.get("git_commit") or "?",
                        "values": values, "std": {}, "seeds": None}
    if summary_csv.exists():
        for row in _rows(summary_csv):
            if row.get("cell") == run.cell:
                values = {k: num(row.get(f"{k}_mean", row.get(k))) for k in COMPARED}
                std = {k: num(row.get(f"{k}_std")) for k in METRICS}
                return {"source": str(summary_csv), "commit": row.get("git_commit") or "?",
                        "values": values, "std": std, "seeds": int(num(row.get("seeds")) or 0)}
        raise ConfigError(f"--reproduce: {summary_csv} has no row for cell {run.cell!r}")
    if runs_csv.exists():
        raise ConfigError(f"--reproduce: {runs_csv} has no row for run {run.name!r}")
    raise ConfigError(f"--reproduce: no committed table for grid {grid_name}: neither {runs_csv} "
                      f"nor {summary_csv} exists (`pixword compare {grid_name}` writes them)")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def same_printed(a: float, b: float) -> bool:
    """Equal to the 6 significant digits compare's CSV tables print."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.isfinite(a) == math.isfinite(b)
    return f"{a:.6g}" == f"{b:.6g}"


def single_run_grid(grid: Grid, run) -> Grid:
    """The grid cut down to one run: each axis at this run's value, one seed (same run name)."""
    return replace(grid, axes={k: [v] for k, v in run.axes.items()}, seeds=[run.seed], repeat={})


def reproduce(grid: Grid, cell: str | None = None, root: Path | None = None,
              spec: Launcher | None = None, allow_dirty: bool = False,
              results: Path = Path("results"), echo=print) -> dict:
    """Run one seed of one cell at HEAD and print committed vs now; -> {"run", "rows",
    "same", "moved", "failed"}. A committed table is looked up before anything runs."""
    run = pick_run(grid, cell)
    committed = committed_values(grid.name, run, results)
    root = Path(root or Path("runs") / "reproduce" / grid.name)
    commit = require_clean(allow_dirty)
    old = read_summary(root / run.name)
    if old is not None and old.get("git_commit") != commit:  # made at another commit: again
        (root / run.name / "summary.json").unlink()
    sub = single_run_grid(grid, run)
    echo(f"reproduce {grid.name} {run.name} at {commit} into {root / run.name}")
    run_grid(sub, root, spec, allow_dirty=allow_dirty, echo=echo)
    now = read_summary(root / run.name)
    problem = summary_problem(now)
    if problem:
        echo(f"reproduce: {run.name} did not finish ({problem}); see {root / 'logs' / run.name}.log")
        return {"run": run.name, "rows": [], "same": [], "moved": [], "failed": problem}
    what = (f"seed {run.seed}" if committed["seeds"] is None
            else f"mean ± std of {committed['seeds']} seeds, not this seed alone")
    report = [f"{grid.name} {run.name}: committed ({what}) at {committed['commit']} "
              f"[{committed['source']}] vs now at {now.get('git_commit')}"]
    head = ["metric", "committed", "now", "now - committed", ""]
    rows, groups = [], {"same": [], "moved": [], "unknown": []}
    for k in COMPARED:
        c, n = committed["values"].get(k, math.nan), num(now.get(k))
        if not (math.isfinite(c) or math.isfinite(n)):
            continue
        group, text = verdict(c, n, committed["std"].get(k, math.nan), committed["seeds"])
        groups[group].append(k)
        diff = n - c if math.isfinite(c) and math.isfinite(n) else math.nan
        rows.append([k, _g(c), _g(n), _g(diff, signed=True), text])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    report += ["  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    report.append(f"{len(groups['same'])} of {len(rows)} reproduce to the printed digit"
                  + (f"; moved: {', '.join(groups['moved'])}" if groups["moved"] else "")
                  + (f"; cannot tell from a mean without its std: {', '.join(groups['unknown'])}"
                     if groups["unknown"] else ""))
    for line in ["", *report]:
        echo(line)
    (root / run.name / "reproduce.txt").write_text("\n".join(report) + "\n")  # kept with the run
    return {"run": run.name, "rows": rows, **groups, "failed": None}


def _half_digit(x: float) -> float:
    """Half a unit of the 6th significant digit of x: what printing it may have rounded."""
    return 0.0 if x == 0 or not math.isfinite(x) else 0.5 * 10 ** (math.floor(math.log10(abs(x))) - 5)


def verdict(c: float, n: float, sd: float, seeds: int | None) -> tuple[str, str]:
    """(same | moved | unknown, text) of committed c against now n. A cell's mean over 2
    seeds with its std gives both seeds back (mean ± std / sqrt 2): `now` is compared with
    them to the printed digits; with more seeds only the distance in std is known."""
    if same_printed(c, n):
        return "same", "same"
    if seeds is None or not (math.isfinite(c) and math.isfinite(n)):
        return "moved", "moved"
    if not math.isfinite(sd):
        return "unknown", "mean of seeds"
    if seeds == 2:
        tol = _half_digit(c) + _half_digit(sd) / math.sqrt(2) + _half_digit(n)
        near = min((c + sd / math.sqrt(2), c - sd / math.sqrt(2)), key=lambda seed: abs(n - seed))
        if abs(n - near) <= tol:
            return "same", "same as a seed (mean ± std/√2)"
        return "moved", f"moved, {n - near:+.3g} from the nearer seed ({(n - c) / sd:+.1f} std from the mean)"
    return "moved", (f"moved, {(n - c) / sd:+.1f} std from the mean" if sd > 0 else "moved")


def _g(x: float, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.6g}" if signed else f"{x:.6g}"
