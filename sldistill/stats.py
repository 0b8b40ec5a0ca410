"""Small statistics for comparing runs over seeds: mean and sample standard deviation,
Student's t quantiles (through the regularized incomplete beta function), t-intervals of a
mean, and the number of seeds a difference needs. Plain Python: no SciPy dependency.
"""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ["mean_std", "t_quantile", "mean_ci", "seeds_needed"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (divisor N - 1; 0.0 for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_std of no values")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return f


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``t_quantile(0.975, 4)``
    is 2.776), by bisection of its distribution function."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """t-interval of the mean: ``mean ± t((1 + level) / 2, n - 1) * s / sqrt(n)`` (n >= 2)."""
    if len(values) < 2:
        raise ValueError("a confidence interval needs at least 2 values")
    m, s = mean_std(values)
    half = t_quantile(0.5 + level / 2.0, len(values) - 1) * s / math.sqrt(len(values))
    return m - half, m + half


def seeds_needed(delta: float, sd: float, *, alpha: float = 0.05, power: float = 0.8, paired: bool = False) -> int:
    """Runs per method for a two-sided t-test at level ``alpha`` to detect a true difference
    ``delta`` with probability ``power``: the smallest n with
    ``n >= 2 (t(1 - alpha/2, 2n - 2) + t(power, 2n - 2))^2 sd^2 / delta^2`` (two independent
    samples, each run's standard deviation ``sd``), or with ``paired``
    ``n >= (t(1 - alpha/2, n - 1) + t(power, n - 1))^2 sd^2 / delta^2`` (``sd`` then the standard
    deviation of the per-seed differences)."""
    if delta <= 0 or sd <= 0:
        raise ValueError("seeds_needed needs delta > 0 and sd > 0")
    for n in range(2, 100000):
        df = n - 1 if paired else 2 * n - 2
        z = t_quantile(1 - alpha / 2, df) + t_quantile(power, df)
        if n >= (1 if paired else 2) * z ** 2 * sd ** 2 / delta ** 2:
            return n
    raise ValueError("more than 100000 runs needed")
