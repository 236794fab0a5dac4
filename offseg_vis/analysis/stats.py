"""Intervals for paired comparisons: the mean of per-unit differences with a Student-t confidence interval.

One implementation serves the experiment table (units: seeds) and the twin page (units: images).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def finite_values(xs: Iterable[float | None]) -> list[float]:
    """The finite values of ``xs`` as floats (None, NaN and inf left out)."""
    return [float(x) for x in xs if x is not None and math.isfinite(x)]


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Two-sided ``level`` confidence interval of the mean of ``values`` (Student t, n - 1 df).

    None when there are fewer than two values (no spread to estimate).
    """
    from scipy.stats import t as student_t  # imported here: scipy.stats is heavy, needed only for intervals

    xs = finite_values(values)
    if len(xs) < 2:
        return None
    half = student_t.ppf(0.5 + level / 2, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    m = statistics.fmean(xs)
    return (m - half, m + half)


def format_interval(ci: tuple[float, float] | None, scale: float = 1.0, digits: int = 2, missing: str = "n/a") -> str:
    """``[+lo, +hi]`` of an interval times ``scale`` (signed, ``digits`` decimals), or ``missing`` for None."""
    if ci is None:
        return missing
    return f"[{scale * ci[0]:+.{digits}f}, {scale * ci[1]:+.{digits}f}]"
