"""The scaling fit (grid/scaling.py) and its report in `pixword compare` (grid/scaling_report.py):
losses drawn from a known L(N, D) with noise are fitted back within their intervals; the
scaling grid's learning rates are the sweep's best ones."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from pixword_lit.grid import scaling
from pixword_lit.grid.compare import collect, write_results
from pixword_lit.grid.spec import load_grid

TRUE = {"E": 3.5, "A": 30.0, "alpha": 0.4, "B": 100.0, "beta": 0.3}
SIZES = np.geomspace(6e4, 4e6, 6)  # the scaling grid's span (68x)
STEPS = (100, 300, 800)
TOKENS_PER_STEP = 7000.0
FLOPS_PER_PARAM_TOKEN = 6.0
# fewer starts than the default 432 (the test's time); the same kind of grid
STARTS = [list(s) for s in itertools.product((0.0, 1.5), (2.0, 10.0), (2.0, 10.0), (0.2, 0.8), (0.2, 0.8))]


def true_loss(n, d):
    return TRUE["E"] + TRUE["A"] / np.asarray(n) ** TRUE["alpha"] + TRUE["B"] / np.asarray(d) ** TRUE["beta"]


def draws(seeds=(0, 1), noise=0.003, rng_seed=1):
    """Every size x budget x seed, the loss multiplied by exp(N(0, noise))."""
    rng = np.random.default_rng(rng_seed)
    rows = [(n, s * TOKENS_PER_STEP, s, seed) for n, s, seed in itertools.product(SIZES, STEPS, seeds)]
    n, d = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    return rows, n, d, true_loss(n, d) * np.exp(rng.normal(0, noise, len(rows)))


@pytest.mark.slow
def test_the_fit_recovers_a_known_surface_within_its_intervals():
    _, n, d, loss = draws()
    fit = scaling.fit_scaling(n, d, loss, STARTS)
    assert fit.converged and fit.starts_at_best >= 2  # more than one start agrees
    ci = scaling.bootstrap(n, d, loss, fit, samples=120, starts=1)
    for k in ("E", "alpha", "beta"):
        low, high, refits = ci[k]
        assert refits >= 110
        assert low <= TRUE[k] <= high, (k, ci[k], getattr(fit, k))
        assert low < getattr(fit, k) < high
    # the intervals are informative, not everything: alpha's excludes 0 and 1
    assert 0 < ci["alpha"][0] and ci["alpha"][1] < 1
    # without noise the optimum is the truth (the optimizer converges, not just stops)
    exact = scaling.fit_scaling(n, d, true_loss(n, d), STARTS)
    for k, v in TRUE.items():
        assert getattr(exact, k) == pytest.approx(v, rel=1e-3), k


def test_a_surface_without_a_data_term_is_not_fitted_as_one():
    """Losses that do not fall with D: the fitted data term does not fall across the budgets
    either (the fit does not draw the shape it is asked for into any data). Its level is not
    identified (B / D^beta with beta near 0 trades with E), its fall is."""
    _, n, d, _ = draws()
    noise = np.exp(np.random.default_rng(2).normal(0, 0.003, len(n)))
    loss = (TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"]) * noise
    fit = scaling.fit_scaling(n, d, loss, STARTS)
    fall = fit.B / d.min() ** fit.beta - fit.B / d.max() ** fit.beta
    assert abs(fall) < 0.02  # from 100 to 800 steps, under 0.5% of a loss of about 4
    ref = scaling.fit_scaling(n, d, true_loss(n, d), STARTS)  # the same check fails with a data term
    assert ref.B / d.min() ** ref.beta - ref.B / d.max() ** ref.beta > 0.2


def test_held_out_and_isoflop_views():
    rows, n, d, loss = draws()
    names = [f"size-{int(r[0])}_data-{r[2]}" for r in rows]
    cells = []
    for name in dict.fromkeys(names):
        i = [j for j, x in enumerate(names) if x == name]
        cells.append(scaling.Cell(name, name.split("_")[0], n[i[0]], rows[i[0]][2], d[i[0]],
                                  FLOPS_PER_PARAM_TOKEN * n[i[0]] * d[i[0]], float(loss[i].mean()), len(i)))
    fit, held = scaling.held_out(n, d, loss, cells, names, k=3, starts=STARTS)
    top = sorted(cells, key=lambda c: c.flops)[-3:]
    assert {r["cell"] for r in held} == {c.name for c in top}
    for r in held:  # the true surface extrapolates: the error is about the noise
        assert abs(r["rel_error_pct"]) < 1.5, r
    full = scaling.fit_scaling(n, d, loss, STARTS)
    grid_rows, optimal = scaling.isoflop(full, cells, budgets=3)
    assert len(optimal) == 3 and len(grid_rows) == 3 * len(SIZES)
    for best in optimal:  # the fitted optimum is the lowest fitted loss at its budget
        at = [r for r in grid_rows if r["budget_flops"] == best["budget_flops"]]
        assert best["loss_fitted"] == min(r["fitted"] for r in at)
        assert best["sizes_observed"] >= 2
    # with FLOPs = 6 N D, a larger budget's optimum is no smaller (Chinchilla's picture); on
    # a surface whose parameter term weighs more, it grows across these budgets
    fitted = [b["optimal_params_fitted"] for b in optimal]
    assert fitted == sorted(fitted)
    by_n, by_d = scaling.slopes(cells)
    assert [r["steps"] for r in by_n] == list(STEPS)
    for r in by_n:  # the loss falls with N at every budget, and the interval says so
        assert r["high"] < 0
    for r in by_d:  # per doubling of D, as the true surface falls (noise 0.3% of ~4)
        n0, d0, d1 = r["params"], r["from_steps"] * TOKENS_PER_STEP, r["to_steps"] * TOKENS_PER_STEP
        expect = (true_loss(n0, d1) - true_loss(n0, d0)) / math.log2(d1 / d0)
        assert r["per_doubling_d"] == pytest.approx(expect, abs=0.03)
    heavy = scaling.Fit(3.5, 160.0, 0.4, 100.0, 0.3, 0.0, 0.0, 1, 1, len(n))  # optimum 0.2M to 0.9M
    params = [b["optimal_params_fitted"] for b in scaling.isoflop(heavy, cells, budgets=4)[1]]
    assert params == sorted(params) and params[-1] > params[0]


@pytest.mark.slow
def test_compare_writes_the_scaling_report(tmp_path, monkeypatch):
    from pixword_lit.grid import scaling_report

    monkeypatch.setattr(scaling, "START_GRID", {"e": (0.0, 1.5), "a": (5.0,), "b": (5.0,),
                                                "alpha": (0.2, 0.8), "beta": (0.2, 0.8)})
    monkeypatch.setattr(scaling_report, "SAMPLES", 60)  # the test's time
    monkeypatch.setattr(scaling_report, "BOOT_STARTS", 1)
    rows, n, d, loss = draws()
    head = ["cell", "@size", "@data", "seed", "run", "val/pix_loss", "params", "steps",
            "pix_tokens_seen", "train_flops", "git_commit", "machine", "error"]
    out = tmp_path / "scaling"
    out.mkdir()
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for (size, tokens, steps, seed), x in zip(rows, loss):
            cell = f"size-{int(size)}_data-D{steps}"
            w.writerow([cell, f"{int(size)}", f"D{steps}", seed, f"{cell}_s{seed}", x, size, steps,
                        tokens, FLOPS_PER_PARAM_TOKEN * size * tokens, "abc", "test", ""])
    col = collect([str(out / "runs.csv")])
    res = write_results(col, out, scaling="val/pix_loss")
    names = {Path(f).name for f in res["files"]}
    assert {"scaling.md", "scaling_fit.csv", "scaling_cells.csv", "scaling_heldout.csv", "isoflop.csv",
            "isoflop_optimal.csv", "scaling_fit.png", "isoflop.png"} <= names
    fit = {r["parameter"]: r for r in csv.DictReader(open(out / "scaling_fit.csv"))}
    for k in ("E", "alpha", "beta"):
        assert float(fit[k]["ci95_low"]) <= TRUE[k] <= float(fit[k]["ci95_high"]), fit[k]
    assert float(fit["seed_std"]["value"]) == pytest.approx(0.003 * 4, rel=0.5)  # noise 0.3% of ~4
    assert int(float(fit["starts_at_best"]["value"])) >= 2
    cells = list(csv.DictReader(open(out / "scaling_cells.csv")))
    assert len(cells) == len(SIZES) * len(STEPS)
    assert all(abs(float(c["residual"])) < 0.05 for c in cells)
    text = (out / "scaling.md").read_text()
    assert f"{float(fit['alpha']['value']):.4g}" in text and "Held out" in text
    assert "within about the seed noise" in text  # the true form, 0.3% noise
    # a surface the form cannot draw (loss rising, then falling, with D): the report says so
    bent = [x * (1.15 if s == 300 else 1.0) for (_, _, s, _), x in zip(rows, loss)]
    text = _report_of(tmp_path / "bent", rows, bent)
    assert "does not describe these cells" in text


def _report_of(out, rows, loss) -> str:
    out.mkdir()
    head = ["cell", "@size", "seed", "run", "val/pix_loss", "params", "steps", "pix_tokens_seen",
            "train_flops", "git_commit", "machine", "error"]
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for (size, tokens, steps, seed), x in zip(rows, loss):
            cell = f"size-{int(size)}_data-D{steps}"
            w.writerow([cell, f"{int(size)}", seed, f"{cell}_s{seed}", x, size, steps, tokens,
                        FLOPS_PER_PARAM_TOKEN * size * tokens, "abc", "test", ""])
    write_results(collect([str(out / "runs.csv")]), out, scaling="val/pix_loss")
    return (out / "scaling.md").read_text()


def test_compare_refuses_a_scaling_fit_without_enough_sizes(tmp_path):
    from pixword_lit.grid.scaling_report import scaling_data
    from pixword_lit.system.config import ConfigError

    class Run:
        def __init__(self, n, s):
            self.cell, self.error, self.axes = f"{n}-{s}", None, {}
            self._v = {"params": n, "pix_tokens_seen": s * 10.0, "train_flops": n * s, "steps": s,
                       "val/pix_loss": 4.0}

        def value(self, k):
            return self._v.get(k, math.nan)

    with pytest.raises(ConfigError, match="3 or more sizes"):
        scaling_data([Run(n, s) for n in (1e4, 1e5) for s in (10, 20)], "val/pix_loss")


def test_the_scaling_grid_trains_each_size_at_the_sweeps_best_rate():
    """scaling.yaml's sizes are scaling_lr.yaml's, and each size's rate is the one with the
    lowest final val/pix_loss in the committed sweep (results/scaling_lr/summary.csv)."""
    repo = Path(__file__).resolve().parent.parent
    main, sweep = (load_grid(repo / "experiments" / "grids" / f) for f in ("scaling.yaml", "scaling_lr.yaml"))
    sizes = {s["label"]: {k: v for k, v in s.items() if k != "optim.lr"} for s in main.axes["@size"]}
    assert sizes == {s["label"]: s for s in sweep.axes["@size"]}
    best: dict[str, tuple[float, float]] = {}
    for row in csv.DictReader(open(repo / "results" / "scaling_lr" / "summary.csv")):
        loss, lr = float(row["val/pix_loss_mean"]), float(row["optim.lr"])
        if row["@size"] not in best or loss < best[row["@size"]][0]:
            best[row["@size"]] = (loss, lr)
    assert set(best) == set(sizes)
    for s in main.axes["@size"]:
        assert s["optim.lr"] == best[s["label"]][1], s["label"]
    steps = sorted(x["trainer.max_steps"] for x in main.axes["@data"])
    assert steps[-1] / steps[0] >= 8  # the span of data budgets
