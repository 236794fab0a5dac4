"""The joint UMAP of ``offseg_vis.analysis.embedding`` at the size the workbench promises.

Clustered stand-ins for decoder features (``before`` and ``after`` pixels of 11 classes, ``after``
pulled towards its class centre as ΔE does), after a numba warm-up, with the library's default
fit options. Wall and CPU seconds per repeat.
"""

from __future__ import annotations

import os
import time

import numpy as np

from offseg_vis.analysis.embedding import FitOptions, PixelFeatures, PixelSample, fit_joint_umap, warm_up_umap
from offseg_vis.engine.runtime import environment


def synthetic_pixels(points: int, dims: int, classes: int = 11, images: int = 8, seed: int = 0) -> PixelFeatures:
    """``points`` / 2 before and as many after features (float32), with class prototypes W and per-image W′."""
    rng = np.random.default_rng(seed)
    n = points // 2
    centres = rng.normal(size=(classes, dims)).astype(np.float32) * 3
    cls = rng.integers(0, classes, n)
    before = centres[cls] + rng.normal(size=(n, dims)).astype(np.float32) * 2.0
    after = before + 0.5 * (centres[cls] - before)
    sample = PixelSample(rng.integers(0, images, n), np.zeros(n, np.int64), np.zeros(n, np.int64), cls, "label")
    w = centres + rng.normal(size=centres.shape).astype(np.float32)
    w_ref = w[None] + 0.3 * rng.normal(size=(images, classes, dims)).astype(np.float32)
    return PixelFeatures(sample, before, after, w, w_ref)


def benchmark(
    points: int = 50_000, dims: int = 256, repeats: int = 2, method: str = "umap", n_epochs: int | None = None
) -> dict:
    """Time ``repeats`` joint fits; returns wall and CPU seconds per repeat and the warm-up time."""
    warm = warm_up_umap() if method == "umap" else 0.0  # numba's JIT only matters for UMAP
    pixels = synthetic_pixels(points, dims)
    extra = {} if n_epochs is None else {"n_epochs": n_epochs}
    wall, cpu = [], []
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fit_joint_umap(pixels, seed=r, method=method, **extra)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)  # all threads: the work done, whatever else runs
    return {
        "points": points,
        "dims": dims,
        "method": method,
        "options": repr(FitOptions(method=method)),
        "n_epochs": n_epochs,
        "warm_up_s": warm,
        "wall_s": wall,
        "cpu_s": cpu,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "environment": environment(),
    }


def format_result(result: dict) -> str:
    """Lines for people."""
    lines = [
        f"joint {result['method']} of {result['points']} points x {result['dims']} dims "
        f"({result['environment']['cpu']}); warm-up {result['warm_up_s']:.1f} s"
    ]
    for r, (w, c) in enumerate(zip(result["wall_s"], result["cpu_s"])):
        lines.append(f"  run {r}: {w:.1f} s wall, {c:.1f} s CPU")
    lines.append(f"  best {min(result['wall_s']):.1f} s wall; load average {result['load_average_1min']}")
    return "\n".join(lines)
