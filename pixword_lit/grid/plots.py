"""compare's plots: validation curves, final metrics with their 95% intervals, the power law.

`runs` are compare.RunRecord-like objects (cell, seed, summary, error, curve()); `rows` are
compare.cell_rows() rows.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# the bar chart's candidates, in order: the metrics that vary across the grid's cells are drawn
BAR_METRICS = ["val/loss", "val/pix_loss", "val/pix_acc", "val/bpd_8bit", "val/bpd_palette",
               "val/word_loss", "val/fold_psnr", "eval/cer", "eval/exact_match", "eval/answer_nll"]
MAX_PANELS = 6


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(cells: list[str]) -> dict:
    cmap = _plt().get_cmap("tab10" if len(cells) <= 10 else "tab20")
    return {c: cmap(i % cmap.N) for i, c in enumerate(cells)}


def _save(plt, fig, path: Path) -> Path:
    """Lay out, write and close a figure: -> its path."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def varies(rows: list[dict], metric: str) -> bool:
    """The metric has a value in some cell and differs between cells (a metric every cell
    shares, like val/fold_psnr under one folding, says nothing about the grid's axes)."""
    means = [r[f"{metric}_mean"] for r in rows if math.isfinite(r.get(f"{metric}_mean", math.nan))]
    if not means:
        return False
    return len(rows) == 1 or max(means) - min(means) > 1e-9 * max(1.0, max(abs(m) for m in means))


def plot_curves(name: str, runs, path: Path) -> Path | None:
    """val/pix_loss against step, one colour per cell; None when no run has a curve (runs
    re-read from a runs.csv)."""
    curves = [(r, *r.curve("val/pix_loss")) for r in runs]
    if not any(steps for _, steps, _ in curves):
        return None
    plt = _plt()
    colors = _colors(list(dict.fromkeys(r.cell for r in runs)))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labelled = set()
    for r, steps, vals in curves:
        if not steps:
            continue
        ax.plot(steps, vals, color=colors[r.cell], marker="o", ms=3,
                ls="-" if r.seed in (None, 0) else "--", alpha=0.85,
                label=None if r.cell in labelled else r.cell)
        labelled.add(r.cell)
    ax.set(xlabel="step", ylabel="val/pix_loss", title=f"{name}: validation pix loss (solid: seed 0)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def bar_metrics(rows: list[dict]) -> list[str]:
    return [m for m in BAR_METRICS if varies(rows, m)][:MAX_PANELS]


def plot_finals(name: str, runs, rows: list[dict], path: Path) -> Path:
    """One panel per metric that varies across cells: bar = mean, error bar = the 95%
    Student-t interval over seeds, dots = the seeds."""
    plt = _plt()
    shown = bar_metrics(rows) or ["val/loss"]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown) + 1, 4.2), squeeze=False)
    x = np.arange(len(rows))
    colors = _colors([r["cell"] for r in rows])
    for ax, m in zip(axes[0], shown):
        means = [r[f"{m}_mean"] for r in rows]
        halves = [r[f"{m}_ci95"] if math.isfinite(r[f"{m}_ci95"]) else 0 for r in rows]
        ax.bar(x, means, yerr=halves, capsize=3, color=[colors[r["cell"]] for r in rows], alpha=0.8)
        for i, row in enumerate(rows):  # each seed's value, so the spread is visible
            vals = [r.value(m) for r in runs if r.cell == row["cell"] and r.error is None]
            ax.scatter([i] * len(vals), vals, color="k", s=8, zorder=3)
        ax.set_xticks(x, [r["cell"] for r in rows], rotation=60, ha="right", fontsize=7)
        ax.set_title(m, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{name}: final metrics (bar: mean, error bar: 95% Student-t interval over "
                 "seeds, dots: seeds)", fontsize=9)
    return _save(plt, fig, path)


def plot_power_law(name: str, runs, fit: dict, path: Path) -> Path:
    plt = _plt()
    m = fit["metric"]
    ok = [r for r in runs if r.error is None]
    n = np.array([r.value("params") for r in ok], float)
    y = np.array([r.value(m) for r in ok], float)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(n, y, color="k", s=14, label="runs (each seed)", zorder=3)
    xs = np.geomspace(n.min() / 1.2, n.max() * 1.2, 50)
    ax.plot(xs, fit["a"] * xs ** -fit["alpha"], color="C3",
            label=f"fit {m} = {fit['a']:.3g} N^-{fit['alpha']:.3f} (R² {fit['r2']:.2f})")
    ax.set(xscale="log", yscale="log", xlabel="parameters N", ylabel=m,
           title=f"{name}: final {m} against parameters")
    from matplotlib.ticker import FormatStrFormatter

    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FormatStrFormatter("%.2f"))  # plain numbers: the loss spans less than a decade
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_paired(name: str, pairs: list[dict], ref: str, metrics: list[str], path: Path) -> Path | None:
    """Each cell minus the reference cell, seed by seed: dot = mean difference, bar = its 95%
    Student-t interval; grey where the interval covers 0 (within noise). None without pairs."""
    shown = [m for m in metrics if any(p["metric"] == m for p in pairs)][:MAX_PANELS]
    if not shown:
        return None
    plt = _plt()
    cells = list(dict.fromkeys(p["cell"] for p in pairs))
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown) + 1.5, 0.45 * len(cells) + 2),
                             squeeze=False, sharey=True)
    for ax, m in zip(axes[0], shown):
        for i, cell in enumerate(cells):
            p = next((q for q in pairs if q["cell"] == cell and q["metric"] == m), None)
            if p is None:
                continue
            half = p["diff_ci95"] if math.isfinite(p["diff_ci95"]) else 0
            color = "0.6" if p["verdict"] != "differs" else ("C3" if p["diff_mean"] > 0 else "C0")
            ax.errorbar(p["diff_mean"], i, xerr=half, fmt="o", color=color, capsize=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(cells)), cells, fontsize=7)
        ax.set_title(f"{m} minus {ref}", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_ylim(len(cells) - 0.5, -0.5)  # the first cell on top
    fig.suptitle(f"{name}: paired differences to {ref} (95% Student-t interval over seeds; "
                 "grey: covers 0)", fontsize=9)
    return _save(plt, fig, path)
