"""Intervals over seeds: Student-t 95% intervals of a cell's mean and of paired
(same seed) differences between cells, without scipy.

A grid runs few seeds (2 or 3), so the interval uses Student's t with n - 1 degrees of freedom,
not the normal 1.96: with 2 seeds the half-width is t(0.975, 1) * std / sqrt(2) = 8.98 std.
A paired difference subtracts the reference cell's value of the same seed before averaging,
so what a seed shares across cells (data order, initial weights) cancels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEVEL = 0.95


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on the CDF; 0.5 < p < 1 gives t > 0)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass
class Interval:
    """Mean of n values with the half-width of its 95% Student-t interval (nan below 2)."""

    mean: float
    half: float
    n: int
    std: float

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    @property
    def covers_zero(self) -> bool | None:
        """None when there is no interval (fewer than 2 values)."""
        if not math.isfinite(self.half):
            return None
        return self.low <= 0.0 <= self.high


def interval(values) -> Interval:
    """Mean, 95% Student-t half-width and sample std of the finite values."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    n = len(v)
    if n == 0:
        return Interval(float("nan"), float("nan"), 0, float("nan"))
    mean = sum(v) / n
    if n == 1:
        return Interval(mean, float("nan"), 1, float("nan"))
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    return Interval(mean, t_quantile(0.5 + LEVEL / 2, n - 1) * std / math.sqrt(n), n, std)


def paired(values: dict, reference: dict) -> Interval:
    """{seed: value} of a cell and of the reference cell -> the interval of their difference
    over the seeds both have (cell minus reference)."""
    seeds = [s for s in values if s in reference]
    return interval([values[s] - reference[s] for s in seeds
                     if math.isfinite(values[s]) and math.isfinite(reference[s])])
