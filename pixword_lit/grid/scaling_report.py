"""`pixword compare` on a grid with `scaling: METRIC`: the L(N, D) fit (scaling.py) written
out as tables, plots and a Markdown report.

    scaling_fit.csv       E, A, alpha, B, beta with bootstrap 95% intervals; how the fit
                          converged; the fit without the largest-compute cells beside it
    scaling_cells.csv     per cell: N, steps, D, training FLOPs, seeds, observed mean, fitted,
                          residual (the seed noise and the fit's error side by side)
    scaling_heldout.csv   the cells of largest compute: observed, and predicted by the fit
                          that did not see them
    isoflop.csv           loss against N at fixed training FLOPs (fitted; observed where the
                          size's own budgets bracket the steps that FLOPs buy)
    isoflop_optimal.csv   per FLOP budget: the compute-optimal size, fitted and observed
    scaling.md, scaling_fit.png, isoflop.png

N is `params` (every parameter), D `pix_tokens_seen`, C `train_flops` of each run's
summary.json, the loss the grid's `scaling:` metric at the final validation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pixword_lit.grid import scaling
from pixword_lit.grid.plots import _plt, _save
from pixword_lit.grid.tables import write_csv
from pixword_lit.system.config import ConfigError

HELD_OUT = 3  # cells of largest compute the held-out fit leaves out
SAMPLES = 500  # bootstrap refits
BOOT_STARTS = 4  # start-grid points each refit tries beside the full fit's optimum


def _size_label(run) -> str:
    """The run's size: its `@size`-like axis value (an axis whose name has "size"), else N."""
    for k, v in run.axes.items():
        if "size" in k.lower():
            return str(v.get("label", v)) if isinstance(v, dict) else str(v)
    return f"{run.value('params'):,.0f}"


def scaling_data(runs, metric: str):
    """Finished runs with N, D, C and the metric -> (n, d, loss, run cells, cells)."""
    ok = [r for r in runs if r.error is None and all(
        math.isfinite(r.value(k)) for k in ("params", "pix_tokens_seen", "train_flops", metric))]
    if len({r.value("params") for r in ok}) < 3 or len({r.value("steps") for r in ok}) < 2:
        raise ConfigError(f"compare: scaling: {metric} needs finished runs at 3 or more sizes and "
                          f"2 or more budgets with params, pix_tokens_seen and train_flops "
                          f"({len(ok)} usable runs)")
    by_cell: dict[str, list] = {}
    for r in ok:
        by_cell.setdefault(r.cell, []).append(r)
    cells = [scaling.Cell(name, _size_label(rs[0]), *(float(np.mean([r.value(k) for r in rs]))
                          for k in ("params", "steps", "pix_tokens_seen", "train_flops", metric)),
                          len(rs)) for name, rs in by_cell.items()]
    arrays = (np.array([r.value(k) for r in ok]) for k in ("params", "pix_tokens_seen", metric))
    return (*arrays, [r.cell for r in ok], cells, ok)


def seed_noise(ok_runs, metric: str) -> tuple[float, int]:
    """Pooled sample std of the metric over cells with 2+ seeds -> (std, cells used)."""
    groups: dict[str, list[float]] = {}
    for r in ok_runs:
        groups.setdefault(r.cell, []).append(r.value(metric))
    var = [(np.var(v, ddof=1), len(v) - 1) for v in groups.values() if len(v) >= 2]
    if not var:
        return math.nan, 0
    return float(math.sqrt(sum(v * k for v, k in var) / sum(k for _, k in var))), len(var)


def write_scaling(col, metric: str, out: Path, samples: int | None = None, starts=None) -> list[Path]:
    """Fit, bootstrap, held-out check and IsoFLOP view of a size x budget grid -> files."""
    n, d, loss, run_cells, cells, ok = scaling_data(col.runs, metric)
    samples = samples or SAMPLES
    fit = scaling.fit_scaling(n, d, loss, starts)
    ci = scaling.bootstrap(n, d, loss, fit, samples, starts=BOOT_STARTS)
    held_fit, held = scaling.held_out(n, d, loss, cells, run_cells, HELD_OUT, starts)
    grid_rows, optimal = scaling.isoflop(fit, cells)
    noise, noise_cells = seed_noise(ok, metric)
    by_n, by_d = scaling.slopes(cells)

    rows = scaling.fit_table(fit, ci, metric)
    rows += [{"parameter": f"heldout_{r['parameter']}", "value": r["value"], "metric": metric}
             for r in scaling.fit_table(held_fit, {k: (math.nan, math.nan, 0) for k in scaling.PARAMS},
                                        metric)]
    rows += [{"parameter": "seed_std", "value": noise, "bootstrap_fits": noise_cells, "metric": metric}]
    cell_rows = [{"cell": c.name, "size": c.size, "params": c.params, "steps": c.steps,
                  "tokens": c.tokens, "train_flops": c.flops, "seeds": c.seeds, "observed": c.loss,
                  "fitted": float(fit.predict(c.params, c.tokens)),
                  "residual": float(fit.predict(c.params, c.tokens)) - c.loss} for c in cells]
    rms = math.sqrt(np.mean([r["residual"] ** 2 for r in cell_rows]))
    rows += [{"parameter": "residual_rms", "value": rms, "metric": metric},
             {"parameter": "heldout_max_abs_error_pct", "value": max(abs(r["rel_error_pct"]) for r in held),
              "metric": metric}]
    files = [out / f for f in ("scaling_fit.csv", "scaling_cells.csv", "scaling_heldout.csv",
                               "isoflop.csv", "isoflop_optimal.csv", "slopes_params.csv",
                               "slopes_data.csv")]
    for table, path in zip((rows, cell_rows, held, grid_rows, optimal, by_n, by_d), files):
        write_csv(table, path)
    files += [plot_fit(col.name, metric, fit, cells, out / "scaling_fit.png"),
              plot_isoflop(col.name, metric, grid_rows, optimal, out / "isoflop.png")]
    (out / "scaling.md").write_text(report(col.name, metric, fit, ci, held_fit, held, cell_rows,
                                           optimal, noise, noise_cells, samples, by_n, by_d))
    return [out / "scaling.md", *files]


def report(name, metric, fit, ci, held_fit, held, cell_rows, optimal, noise, noise_cells, samples,
           by_n, by_d) -> str:
    rms = math.sqrt(np.mean([r["residual"] ** 2 for r in cell_rows]))
    within = rms <= 2 * noise if math.isfinite(noise) else None
    lines = [f"# Grid `{name}`: the scaling fit", "",
             f"{metric} at the final validation, fitted as L(N, D) = E + A / N^alpha + B / D^beta "
             "(Hoffmann et al. 2022, approach 3: Huber loss, delta 1e-3, on log L; L-BFGS from "
             f"{fit.starts} starting points; grid/scaling.py). N = every parameter, D = training "
             "pix tokens, C = training FLOPs counted as `pixword bench` counts them. Intervals: "
             f"2.5 and 97.5 percentiles of {samples} bootstrap refits over runs.", "",
             "| parameter | value | 95% interval |", "|---|---|---|"]
    for k in scaling.PARAMS:
        lines.append(f"| {k} | {getattr(fit, k):.4g} | {ci[k][0]:.4g} to {ci[k][1]:.4g} |")
    lines += ["", f"Converged: gradient max-norm {fit.grad_norm:.2g} at the optimum; "
              f"{fit.starts_at_best} of {fit.starts} starts reached the best objective "
              f"({fit.objective:.4g}), {fit.runs} runs. Residual RMS over cells (fitted - observed "
              f"mean): {rms:.4f}; seed noise (pooled std over {noise_cells} cells with 2+ seeds): "
              f"{noise:.4f}. "
              + {True: "The form describes the cells within about the seed noise.",
                 False: "**The form does not describe these cells**: its residuals are more than "
                        "twice the seed noise, so E, alpha and beta above (and the IsoFLOP optimum "
                        "from them) summarize a shape the data does not have; read the slopes below.",
                 None: "No cell has 2 seeds: the noise is unknown."}[within], "",
              "## Without the form: slopes read from the cells", "",
              "Per budget, the least-squares slope of the loss against log2 N over the sizes "
              "(cell means), with its 95% Student-t interval:", "",
              "| steps | sizes | loss per doubling of N | 95% interval | smallest N | largest N "
              "| best size |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['steps']:.0f} | {r['sizes']} | {r['per_doubling_n']:+.4f} | {r['low']:+.4f} to "
              f"{r['high']:+.4f} | {r['loss_smallest']:.4f} | {r['loss_largest']:.4f} | {r['best_size']} |"
              for r in by_n]
    lines += ["", "Per size, the loss change per doubling of D between consecutive budgets:", "",
              "| size | N | steps | loss | per doubling of D |", "|---|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['params']:,.0f} | {r['from_steps']:.0f} to {r['to_steps']:.0f} | "
              f"{r['loss_from']:.4f} to {r['loss_to']:.4f} | {r['per_doubling_d']:+.4f} |" for r in by_d]
    lines += ["",
              f"## Held out: the {len(held)} cells of largest compute", "",
              f"Fitted without them: E {held_fit.E:.4g}, alpha {held_fit.alpha:.4g}, "
              f"beta {held_fit.beta:.4g}.", "",
              "| cell | train FLOPs | observed | predicted | error | error % |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['cell']} | {r['train_flops']:.3g} | {r['observed']:.4f} | {r['predicted']:.4f} "
              f"| {r['error']:+.4f} | {r['rel_error_pct']:+.2f} |" for r in held]
    lines += ["", "## IsoFLOP: the compute-optimal size per training budget", "",
              "| training FLOPs | optimal (fitted) | loss (fitted) | optimal (observed) | loss (observed) |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['budget_flops']:.3g} | {r['optimal_size_fitted']} ({r['optimal_params_fitted']:,.0f}) "
              f"| {r['loss_fitted']:.4f} | {r['optimal_size_observed'] or '-'} | "
              + (f"{r['loss_observed']:.4f} |" if math.isfinite(r["loss_observed"]) else "- |")
              for r in optimal]
    lines += ["", "Observed: the size's own runs, linear in log steps between its two nearest "
              "budgets (none outside them); a budget where fewer than 2 sizes are observed has no "
              "observed optimum.", "", "## Cells", "",
              "| cell | N | steps | D | C | seeds | observed | fitted | residual |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['cell']} | {r['params']:,.0f} | {r['steps']:.0f} | {r['tokens']:.3g} | "
              f"{r['train_flops']:.3g} | {r['seeds']} | {r['observed']:.4f} | {r['fitted']:.4f} | "
              f"{r['residual']:+.4f} |" for r in cell_rows]
    lines += ["", "Figures: scaling_fit.png (runs and fitted curves), isoflop.png.", ""]
    return "\n".join(lines)


def plot_fit(name, metric, fit, cells, path: Path) -> Path:
    """Left: loss against D, one colour per size (dots = cell means, lines = the fit); right:
    loss against N, one colour per budget."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, other, label in ((left, "tokens", "params", "size"), (right, "params", "tokens", "steps")):
        groups: dict = {}
        for c in cells:
            groups.setdefault(c.size if label == "size" else c.steps, []).append(c)
        cmap = plt.get_cmap("viridis")
        for i, (g, cs) in enumerate(sorted(groups.items(), key=lambda kv: getattr(kv[1][0], other))):
            color = cmap(i / max(1, len(groups) - 1))
            cs = sorted(cs, key=lambda c: getattr(c, key))
            x = np.array([getattr(c, key) for c in cs])
            ax.scatter(x, [c.loss for c in cs], color=color, s=18, zorder=3,
                       label=f"{g}" if label == "size" else f"{g:.0f} steps")
            xs = np.geomspace(x.min() / 1.3, x.max() * 1.3, 60)
            fixed = np.mean([getattr(c, other) for c in cs])  # one N per size, D per budget
            ax.plot(xs, fit.predict(fixed, xs) if key == "tokens" else fit.predict(xs, fixed), color=color)
        ax.set(xscale="log", xlabel="training pix tokens D" if key == "tokens" else "parameters N",
               ylabel=metric)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    left.set_title(f"{name}: {metric} against data, per size")
    right.set_title("against parameters, per budget (line: the fit)")
    return _save(plt, fig, path)


def plot_isoflop(name, metric, rows, optimal, path: Path) -> Path:
    """Loss against N at each FLOP budget: the fit (line), observed (dots), optimum (star)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    cmap = plt.get_cmap("plasma")
    budgets = sorted({r["budget_flops"] for r in rows})
    for i, C in enumerate(budgets):
        color = cmap(i / max(1, len(budgets)))
        at = sorted((r for r in rows if r["budget_flops"] == C), key=lambda r: r["params"])
        ax.plot([r["params"] for r in at], [r["fitted"] for r in at], color=color, label=f"C = {C:.2g}")
        seen = [r for r in at if math.isfinite(r["observed"])]
        ax.scatter([r["params"] for r in seen], [r["observed"] for r in seen], color=color, s=18)
        best = next(o for o in optimal if o["budget_flops"] == C)
        ax.scatter([best["optimal_params_fitted"]], [best["loss_fitted"]], marker="*", s=120,
                   color=color, edgecolor="k", zorder=4)
    ax.set(xscale="log", xlabel="parameters N", ylabel=metric,
           title=f"{name}: IsoFLOP (line fitted, dots observed, star optimum)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)
