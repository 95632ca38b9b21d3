"""Compare runs (issue 3): run summaries -> results/<grid>/summary.csv, summary.md and plots.

Every number comes from a run's summary.json (the final validation of `fit`, the same values
`fit` hands to TensorBoard's HParams view) or its metrics.jsonl (validation curves); nothing
is recomputed. Runs are grouped into cells by their name without the `_s<seed>` suffix; a
cell's metrics are the mean and the sample standard deviation over its finished seeds.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixword_lit.grid.spec import load_grid, load_state, read_summary, summary_problem
from pixword_lit.infer.captions import plot_by_height
from pixword_lit.system.config import ConfigError

METRICS = ["val/loss", "val/pix_loss", "val/word_loss", "val/pix_acc", "val/fold_psnr",
           "val/pix_loss_all", "val/pix_nll_all", "val/bpd_folded", "val/bpd_8bit", "val/bpd_palette",
           "baseline/pix_loss", "eval/exact_match", "eval/cer", "eval/answer_nll"]
COUNTS = ["params", "steps", "tokens_seen", "pix_tokens_seen", "wall_s", "pix_tokens_per_s"]


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


def collect(targets: list[str]) -> Collection:
    """Run dirs, grid roots (with grid_state.json) or grid YAMLs -> the runs to compare."""
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
            raise ConfigError(f"compare: {t} is not a run folder, a grid root or a grid file")
        for d in dirs:
            s = read_summary(d)
            runs.append(RunRecord(d.name, d, s, summary_problem(s)))
    name = Path(targets[0]).name if len(targets) == 1 else "runs"
    return Collection(name, runs, " ".join(targets))


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
def _num(x) -> float:
    return float(x) if isinstance(x, (int, float)) else float("nan")


def mean_std(values: list[float]) -> tuple[float, float]:
    v = np.array([x for x in values if math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def power_law_fit(params, losses) -> dict:
    """Least squares in log space: log L = log a - alpha log N  ->  {a, alpha, r2, n}."""
    n, y = np.log(np.asarray(params, float)), np.log(np.asarray(losses, float))
    slope, intercept = np.polyfit(n, y, 1)
    pred = intercept + slope * n
    ss_res, ss_tot = float(((y - pred) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return {"a": float(math.exp(intercept)), "alpha": float(-slope),
            "r2": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan"), "n": len(n)}


def cell_rows(col: Collection) -> list[dict]:
    """One row per cell, in the order cells first appear (the grid's expansion order)."""
    cells: dict[str, list[RunRecord]] = {}
    for r in col.runs:
        cells.setdefault(r.cell, []).append(r)
    rows = []
    for cell, runs in cells.items():
        ok = [r for r in runs if r.error is None]
        row = {"cell": cell, **{k: _fmt_axis(v) for k, v in runs[0].axes.items()},
               "seeds": len(ok), "runs": len(runs),
               "status": "finished" if len(ok) == len(runs) else f"{len(runs) - len(ok)} failed"}
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = mean_std([_num(r.summary.get(m)) for r in ok])
        for k in COUNTS:
            row[k] = mean_std([_num(r.summary.get(k)) for r in ok])[0]
        row["git_commit"] = ";".join(sorted({str(r.summary.get("git_commit")) for r in ok}))
        errors = [f"{r.name}: {_short_error(r.error)}" for r in runs if r.error]
        row["errors"] = " | ".join(errors)
        rows.append(row)
    return rows


def _short_error(error: str) -> str:
    """`why` (first line) and the last line of the log tail, which names the error."""
    lines = [ln.strip() for ln in error.splitlines() if ln.strip()]
    return lines[0] if len(lines) == 1 else f"{lines[0]}: {lines[-1]}"


def _fmt_axis(v) -> str:
    if isinstance(v, dict):
        return v.get("label") or " ".join(f"{k}={x}" for k, x in v.items())
    return str(v)


# ---- outputs -------------------------------------------------------------------------------
def write_results(col: Collection, out: Path, power_law: str | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rows = cell_rows(col)
    power_law = power_law or (col.spec or {}).get("power_law")
    fit = None
    if power_law:
        pts = [(r.summary["params"], r.summary[power_law]) for r in col.runs if r.error is None]
        if len({p for p, _ in pts}) >= 2:
            fit = {**power_law_fit(*zip(*pts)), "metric": power_law}
            for row in rows:
                row["power_law_alpha"] = fit["alpha"]
                row["power_law_fit"] = fit["a"] * row["params"] ** -fit["alpha"]
    _write_csv(rows, out / "summary.csv")
    plots = [plot_curves(col, out / "pix_loss_curves.png"), plot_finals(col, rows, out / "final_metrics.png")]
    if fit:
        plots.append(plot_power_law(col, fit, out / "power_law.png"))
    reading = plot_by_height(col.runs, out)  # runs evaluated with eval.captions
    if reading:
        plots.append(reading)
    (out / "summary.md").write_text(markdown(col, rows, fit, [p.name for p in plots]))
    return {"rows": rows, "fit": fit, "files": [out / "summary.csv", out / "summary.md", *plots]}


def _write_csv(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv(r.get(k)) for k in keys})


def _csv(v):
    if isinstance(v, float):
        if not math.isfinite(v):
            return ""
        return str(int(v)) if v.is_integer() else f"{v:.6g}"
    return "" if v is None else v


def _pm(mean: float, std: float, digits: int = 4) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if math.isfinite(std) else "")


def _int(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:,.0f}"


def markdown(col: Collection, rows: list[dict], fit: dict | None, plots: list[str]) -> str:
    shown = [m for m in METRICS if any(math.isfinite(r[f"{m}_mean"]) for r in rows)]
    head = ["cell", "seeds", *shown, "params", "tokens seen", "pix tokens seen", "wall s",
            "pix tok/s"]
    lines = [f"# Grid `{col.name}`", "",
             f"Generated by `pixword compare {col.source}` from {len(col.runs)} runs; every number "
             "is read from the runs' summary.json (final validation) and metrics.jsonl.",
             "Metrics are mean ± sample standard deviation over the finished seeds of a cell.", ""]
    if col.spec:
        lines += [f"- base: `{col.spec['base']}`, seeds {col.spec.get('seeds')}",
                  f"- fixed: `{json.dumps(col.spec.get('fixed') or {})}`",
                  f"- axes: `{json.dumps(col.spec.get('axes') or {})}`"]
    commits = sorted({c for r in rows for c in r["git_commit"].split(";") if c})
    machines = sorted({str(r.summary.get("machine")) for r in col.runs if r.summary})
    total = sum(_num(r.summary.get("wall_s")) for r in col.runs if r.summary)
    lines += [f"- git commit: {', '.join(f'`{c}`' for c in commits) or 'n/a'}",
              f"- machine: {'; '.join(machines) or 'n/a'}",
              f"- wall time of the finished runs, summed: {total / 60:.1f} min", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["cell"], str(r["seeds"]) + ("" if r["status"] == "finished" else f" ({r['status']})")]
        cells += [_pm(r[f"{m}_mean"], r[f"{m}_std"], 2 if m == "val/fold_psnr" else 4) for m in shown]
        cells += [_int(r["params"]), _int(r["tokens_seen"]), _int(r["pix_tokens_seen"]),
                  _int(r["wall_s"]), _int(r["pix_tokens_per_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    if fit:
        lines += ["", f"Power-law fit over {fit['n']} runs, least squares in log space: "
                  f"{fit['metric']} = {fit['a']:.4g} * params^-{fit['alpha']:.4f} "
                  f"(alpha = {fit['alpha']:.4f}, R² = {fit['r2']:.3f})."]
    failed = [r for r in rows if r["errors"]]
    if failed:
        lines += ["", "Failed or missing runs (not in the means):", ""]
        lines += [f"- {e}" for r in failed for e in r["errors"].split(" | ")]
    lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in plots), ""]
    if col.root:
        lines += ["The same final metrics are in TensorBoard's HParams view: "
                  f"`tensorboard --logdir {_show_path(col.root)}`.", ""]
    return "\n".join(lines)


def _show_path(p: Path) -> str:
    rel = os.path.relpath(p)
    return str(p) if rel.startswith("..") else rel


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(cells: list[str]) -> dict:
    cmap = _plt().get_cmap("tab10" if len(cells) <= 10 else "tab20")
    return {c: cmap(i % cmap.N) for i, c in enumerate(cells)}


def plot_curves(col: Collection, path: Path) -> Path:
    plt = _plt()
    cells = list(dict.fromkeys(r.cell for r in col.runs))
    colors = _colors(cells)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labelled = set()
    for r in col.runs:
        steps, vals = r.curve("val/pix_loss")
        if not steps:
            continue
        seed = r.summary.get("seed") if r.summary else None
        ax.plot(steps, vals, color=colors[r.cell], marker="o", ms=3,
                ls="-" if seed in (None, 0) else "--", alpha=0.85,
                label=None if r.cell in labelled else r.cell)
        labelled.add(r.cell)
    ax.set(xlabel="step", ylabel="val/pix_loss", title=f"{col.name}: validation pix loss (solid: seed 0)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_finals(col: Collection, rows: list[dict], path: Path) -> Path:
    plt = _plt()
    shown = [m for m in ("val/loss", "val/pix_loss", "val/pix_acc", "val/fold_psnr")
             if any(math.isfinite(r[f"{m}_mean"]) for r in rows)]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown) + 1, 4.2), squeeze=False)
    x = np.arange(len(rows))
    colors = _colors([r["cell"] for r in rows])
    for ax, m in zip(axes[0], shown):
        means = [r[f"{m}_mean"] for r in rows]
        stds = [r[f"{m}_std"] if math.isfinite(r[f"{m}_std"]) else 0 for r in rows]
        ax.bar(x, means, yerr=stds, capsize=3, color=[colors[r["cell"]] for r in rows], alpha=0.8)
        for i, row in enumerate(rows):  # each seed's value, so the spread is visible
            vals = [_num(r.summary.get(m)) for r in col.runs if r.cell == row["cell"] and r.error is None]
            ax.scatter([i] * len(vals), vals, color="k", s=8, zorder=3)
        ax.set_xticks(x, [r["cell"] for r in rows], rotation=60, ha="right", fontsize=7)
        ax.set_title(m, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{col.name}: final metrics (bar: mean, error bar: std, dots: seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_power_law(col: Collection, fit: dict, path: Path) -> Path:
    plt = _plt()
    m = fit["metric"]
    ok = [r for r in col.runs if r.error is None]
    n = np.array([r.summary["params"] for r in ok], float)
    y = np.array([r.summary[m] for r in ok], float)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(n, y, color="k", s=14, label="runs (each seed)", zorder=3)
    xs = np.geomspace(n.min() / 1.2, n.max() * 1.2, 50)
    ax.plot(xs, fit["a"] * xs ** -fit["alpha"], color="C3",
            label=f"fit {m} = {fit['a']:.3g} N^-{fit['alpha']:.3f} (R² {fit['r2']:.2f})")
    ax.set(xscale="log", yscale="log", xlabel="parameters N", ylabel=m,
           title=f"{col.name}: final {m} against parameters")
    from matplotlib.ticker import FormatStrFormatter

    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FormatStrFormatter("%.2f"))  # plain numbers: the loss spans less than a decade
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
