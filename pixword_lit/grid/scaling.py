"""The scaling fit of a grid over model size and data: L(N, D) = E + A / N^alpha + B / D^beta.

Fitted as Hoffmann et al. 2022 (Chinchilla, approach 3) fitted theirs: with
a = log A, b = log B, e = log E, minimize over (a, b, e, alpha, beta)

    sum_runs Huber_delta( LSE(a - alpha log N, b - beta log D, e) - log L ),  delta = 1e-3,

by L-BFGS (scipy's L-BFGS-B, float64, analytic gradient, run until its own tolerances stop
it) from each of a grid of starting points, keeping the best. Converged means: the best
start's gradient (max abs) is below `GRAD_TOL`, and the number of starts that reach the best
objective (within 1e-6 relative) is reported; a fit where only one start got there is
suspect (Besiroglu et al. 2024 found Chinchilla's own optimizer had stopped early).

- N: every parameter of the model (`summary.json` params: pixel table, word table and
  output heads included; Pearce & Song 2024: leaving embeddings out biases small-scale
  exponents, and pixword's pixel tables are a large share of a small model).
- D: training pix tokens seen (`pix_tokens_seen`: the pixels of every training image).
- C: training FLOPs (`train_flops`: one step counted as `pixword bench` counts it, times the
  steps; fit/flops.py).
- Intervals: bootstrap over runs (resampled with replacement, refitted, 2.5 and 97.5
  percentiles).
- Held out: the fit without the cells of largest compute, and its error predicting them.
- IsoFLOP: at fixed C, a size of per-step FLOPs f and per-step tokens d trains C/f steps on
  D = d C/f tokens; its loss there from the fit, and from the size's own runs (linear in
  log steps between its two nearest budgets, only inside the budgets it ran).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np

DELTA = 1e-3
GRAD_TOL = 1e-7
PARAMS = ("E", "A", "alpha", "B", "beta")
# starting points: e, a, b, alpha, beta (Hoffmann et al. used a similar grid)
START_GRID = {"e": (0.0, 1.0, 1.5), "a": (0.0, 5.0, 10.0, 20.0), "b": (0.0, 5.0, 10.0, 20.0),
              "alpha": (0.1, 0.5, 1.0), "beta": (0.1, 0.5, 1.0)}


@dataclass
class Fit:
    E: float
    A: float
    alpha: float
    B: float
    beta: float
    objective: float  # the Huber sum at the optimum
    grad_norm: float  # of the objective at the optimum (max abs over the 5 parameters)
    starts: int
    starts_at_best: int  # starts whose optimum is the best one (within 1e-9 relative)
    runs: int

    def predict(self, n, d):
        n, d = np.asarray(n, float), np.asarray(d, float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @property
    def converged(self) -> bool:
        return self.grad_norm < GRAD_TOL

    def theta(self) -> list[float]:
        return [math.log(self.E), math.log(self.A), math.log(self.B), self.alpha, self.beta]


def objective(theta, logn, logd, logl, weights, delta: float = DELTA):
    """The Huber objective at theta = (e, a, b, alpha, beta) and its gradient; weights count
    each run (a bootstrap draw's multiplicities, else all 1)."""
    e, a, b, alpha, beta = theta
    u = np.stack([a - alpha * logn, b - beta * logd, np.full_like(logn, e)])
    top = u.max(0)
    p = np.exp(u - top)
    total = p.sum(0)
    r = top + np.log(total) - logl  # log predicted - log observed
    p /= total  # d log pred / d (a, b, e) terms
    small = np.abs(r) <= delta
    h = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
    dh = weights * np.where(small, r, delta * np.sign(r))
    grad = np.array([dh @ p[2], dh @ p[0], dh @ p[1], -dh @ (p[0] * logn), -dh @ (p[1] * logd)])
    return float(weights @ h), grad


def _minimize(theta0, logn, logd, logl, weights, delta: float = DELTA):
    """L-BFGS (scipy's L-BFGS-B, no bounds, as Hoffmann et al. used) from theta0, run until it
    stops on its own tolerances -> (theta, objective, gradient max-norm)."""
    from scipy.optimize import minimize

    res = minimize(objective, np.asarray(theta0, float), args=(logn, logd, logl, weights, delta),
                   jac=True, method="L-BFGS-B",
                   options={"maxiter": 20000, "maxcor": 30, "ftol": 1e-15, "gtol": 1e-13})
    if not np.all(np.isfinite(res.x)) or not np.isfinite(res.fun):
        return res.x, math.inf, math.inf
    _, g = objective(res.x, logn, logd, logl, weights, delta)
    return res.x, float(res.fun), float(np.abs(g).max())


def _logs(n, d, loss):
    return tuple(np.log(np.asarray(x, float)) for x in (n, d, loss))


def grid_starts() -> list[list[float]]:
    g = START_GRID
    return [list(s) for s in itertools.product(g["e"], g["a"], g["b"], g["alpha"], g["beta"])]


def fit_scaling(n, d, loss, starts: list[list[float]] | None = None, delta: float = DELTA) -> Fit:
    """L(N, D) fitted to runs (N params, D tokens, final loss): L-BFGS from every start,
    keeping the lowest objective; `starts_at_best` counts the starts that reached it (within
    1e-6 relative), the check that the optimum is not one start's accident."""
    logn, logd, logl = _logs(n, d, loss)
    weights = np.ones_like(logl)
    starts = starts if starts is not None else grid_starts()
    results = [_minimize(s, logn, logd, logl, weights, delta) for s in starts]
    best_theta, best, grad = min(results, key=lambda r: r[1])
    at_best = sum(r[1] <= best * (1 + 1e-6) + 1e-15 for r in results)
    return _fit_of(best_theta, best, grad, len(starts), at_best, len(logl))


def _fit_of(theta, objective, grad, starts, at_best, runs) -> Fit:
    e, a, b, alpha, beta = (float(x) for x in theta)
    return Fit(math.exp(e), math.exp(a), alpha, math.exp(b), beta, objective, grad, starts,
               at_best, runs)


def bootstrap(n, d, loss, fit: Fit, samples: int = 500, seed: int = 0,
              starts: int = 4) -> dict[str, tuple]:
    """95% percentile intervals of E, A, alpha, B, beta over `samples` refits on runs drawn
    with replacement (as integer weights), each from the full fit's optimum and `starts`
    points of the start grid (a degenerate optimum, E at 0, would otherwise hold every refit
    where it is), keeping the best; a draw that does not identify the surface (fewer than 3
    sizes or 2 budgets) is skipped. -> {parameter: (low, high, refits)}."""
    rng = np.random.default_rng(seed)
    n, d = np.asarray(n, float), np.asarray(d, float)
    logn, logd, logl = _logs(n, d, loss)
    grid = grid_starts()
    pick = [grid[i] for i in np.linspace(0, len(grid) - 1, starts).round().astype(int)] if starts else []
    draws = []
    for _ in range(samples):
        counts = np.bincount(rng.integers(0, len(n), len(n)), minlength=len(n))
        used = counts > 0
        if len(set(n[used])) < 3 or len(set(d[used])) < 2:
            continue
        theta, obj, _ = min((_minimize(s, logn, logd, logl, counts.astype(float))
                             for s in [fit.theta(), *pick]), key=lambda r: r[1])
        if math.isfinite(obj):
            draws.append(theta)
    t = np.array(draws)
    with np.errstate(over="ignore"):  # a refit may send A or B far out: its exp is inf
        values = {"E": np.exp(t[:, 0]), "A": np.exp(t[:, 1]), "B": np.exp(t[:, 2]),
                  "alpha": t[:, 3], "beta": t[:, 4]}
    return {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)), len(v))
            for k, v in values.items()}


def fit_table(fit: Fit, ci: dict[str, tuple], metric: str) -> list[dict]:
    """One row per parameter: value and its bootstrap interval; then how the fit converged."""
    rows = [{"parameter": k, "value": getattr(fit, k), "ci95_low": ci[k][0], "ci95_high": ci[k][1],
             "bootstrap_fits": ci[k][2], "metric": metric} for k in PARAMS]
    info = asdict(fit)
    rows += [{"parameter": k, "value": float(info[k]), "metric": metric}
             for k in ("objective", "grad_norm", "starts", "starts_at_best", "runs")]
    return rows


@dataclass
class Cell:
    """A grid cell's numbers the fit needs (means over its finished seeds)."""
    name: str
    size: str
    params: float
    steps: float
    tokens: float
    flops: float
    loss: float
    seeds: int


def held_out(n, d, loss, cells: list[Cell], runs_cell: list[str], k: int = 3,
             starts=None) -> tuple[Fit, list[dict]]:
    """Fit without the runs of the k cells of largest training compute -> (that fit, one
    row per held-out cell: observed mean, predicted, error)."""
    top = {c.name for c in sorted(cells, key=lambda c: c.flops)[-k:]}
    keep = np.array([c not in top for c in runs_cell])
    n, d, loss = (np.asarray(x, float) for x in (n, d, loss))
    fit = fit_scaling(n[keep], d[keep], loss[keep], starts)
    rows = []
    for c in (c for c in cells if c.name in top):
        pred = float(fit.predict(c.params, c.tokens))
        rows.append({"cell": c.name, "params": c.params, "tokens": c.tokens, "train_flops": c.flops,
                     "observed": c.loss, "predicted": pred, "error": pred - c.loss,
                     "rel_error_pct": 100 * (pred - c.loss) / c.loss, "seeds": c.seeds})
    return fit, rows


def isoflop(fit: Fit, cells: list[Cell], budgets: int = 4) -> tuple[list[dict], list[dict]]:
    """Loss against N at fixed training FLOPs -> (one row per budget and size, one row per
    budget with its compute-optimal size, fitted and, where 2+ sizes reach it, observed)."""
    sizes: dict[str, list[Cell]] = {}
    for c in cells:
        sizes.setdefault(c.size, []).append(c)
    lo, hi = min(c.flops for c in cells), max(c.flops for c in cells)
    rows, best = [], []
    for C in np.geomspace(lo, hi, budgets + 2)[1:-1]:  # inside the grid's range
        at = []
        for size, cs in sizes.items():
            cs = sorted(cs, key=lambda c: c.steps)
            f_step = cs[0].flops / cs[0].steps
            d_step = cs[0].tokens / cs[0].steps
            steps = C / f_step
            observed = _interp_log(steps, [c.steps for c in cs], [c.loss for c in cs])
            row = {"budget_flops": float(C), "size": size, "params": cs[0].params, "steps": steps,
                   "tokens": steps * d_step, "fitted": float(fit.predict(cs[0].params, steps * d_step)),
                   "observed": observed}
            rows.append(row)
            at.append(row)
        fitted = min(at, key=lambda r: r["fitted"])
        seen = [r for r in at if math.isfinite(r["observed"])]
        obs = min(seen, key=lambda r: r["observed"]) if len(seen) >= 2 else None
        best.append({"budget_flops": float(C), "optimal_size_fitted": fitted["size"],
                     "optimal_params_fitted": fitted["params"], "loss_fitted": fitted["fitted"],
                     "optimal_size_observed": obs["size"] if obs else "",
                     "optimal_params_observed": obs["params"] if obs else math.nan,
                     "loss_observed": obs["observed"] if obs else math.nan,
                     "sizes_observed": len(seen)})
    return rows, best


def _interp_log(x: float, xs: list[float], ys: list[float]) -> float:
    """y at x, linear in log x between the two nearest xs; NaN outside [min xs, max xs]."""
    if not xs or x < xs[0] * (1 - 1e-9) or x > xs[-1] * (1 + 1e-9):
        return math.nan
    return float(np.interp(math.log(x), np.log(xs), ys))


def slopes(cells: list[Cell]) -> tuple[list[dict], list[dict]]:
    """The cells read without the fitted form -> (per budget: the least-squares slope of the
    loss against log2 N across sizes with its 95% Student-t interval (sizes - 2 degrees of
    freedom), per size and pair of consecutive budgets: the loss change per doubling of D)."""
    from scipy import stats

    by_steps: dict[float, list[Cell]] = {}
    by_size: dict[str, list[Cell]] = {}
    for c in cells:
        by_steps.setdefault(c.steps, []).append(c)
        by_size.setdefault(c.size, []).append(c)
    params = []
    for steps, cs in sorted(by_steps.items()):
        cs = sorted(cs, key=lambda c: c.params)
        if len(cs) < 3:
            continue
        fit = stats.linregress(np.log2([c.params for c in cs]), [c.loss for c in cs])
        half = float(stats.t.ppf(0.975, len(cs) - 2) * fit.stderr)
        params.append({"steps": steps, "sizes": len(cs), "per_doubling_n": float(fit.slope),
                       "ci95": half, "low": float(fit.slope) - half, "high": float(fit.slope) + half,
                       "loss_smallest": cs[0].loss, "loss_largest": cs[-1].loss,
                       "best_size": min(cs, key=lambda c: c.loss).size})
    data = []
    for size, cs in by_size.items():
        cs = sorted(cs, key=lambda c: c.tokens)
        for a, b in zip(cs, cs[1:]):
            data.append({"size": size, "params": a.params, "from_steps": a.steps, "to_steps": b.steps,
                         "loss_from": a.loss, "loss_to": b.loss,
                         "per_doubling_d": (b.loss - a.loss) / math.log2(b.tokens / a.tokens)})
    return params, data
