"""Timing helpers shared by every benchmark: warm-ups, median/min, and the context of a number."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where available)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """What every benchmark number is printed beside."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu": cpu_model(),
        "python": platform.python_version(),
    }


def time_call(fn: Callable[[], object], warmup: int = 5, runs: int = 20, cuda: bool = False) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``runs`` times; seconds as median / min / all."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": runs, "warmup": warmup}
