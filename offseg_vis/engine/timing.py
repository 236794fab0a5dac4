"""Timing helpers shared by every benchmark: warm-ups, median/min, and the context of a number."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def time_call(fn: Callable[[], object], warmup: int = 5, runs: int = 20, cuda: bool = False) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``runs`` times; seconds as median / min / all."""
    result = time_interleaved({"fn": fn}, warmup=warmup, runs=runs, cuda=cuda)["fn"]
    result.pop("times_s")
    return result


def time_interleaved(
    fns: dict[str, Callable[[], object]], warmup: int = 5, runs: int = 20, cuda: bool = False
) -> dict[str, dict]:
    """Time several callables round-robin: one call of each per round, ``warmup`` rounds untimed.

    Why: on a shared machine the load drifts over seconds; alternating calls exposes every variant
    to the same drift, so the ratio of two medians (and the per-round ratios) compares like with like.

    Returns:
        name -> {"median_s", "min_s", "runs", "warmup", "times_s"} (seconds, per round).
    """
    if not fns:
        raise ValueError("time_interleaved needs at least one callable")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {
        name: {"median_s": statistics.median(ts), "min_s": min(ts), "runs": runs, "warmup": warmup, "times_s": ts}
        for name, ts in times.items()
    }


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of per-round ratios ``numerator[i] / denominator[i]`` (two :func:`time_interleaved` series)."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("paired_ratio needs two non-empty series of equal length")
    return statistics.median(a / b for a, b in zip(numerator, denominator))
