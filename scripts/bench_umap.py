"""Benchmark the joint UMAP of ``offseg_vis.analysis.embedding`` at the size the workbench promises.

50,000 points x 256 dims (25,000 "before" + 25,000 "after" pixels of 11 classes, Gaussian clusters as a
stand-in for decoder features), after a numba warm-up, with the library's default fit options. Prints
one line per repeat and the best; ``--json`` also writes the numbers to a file.

    python scripts/bench_umap.py [--points 50000] [--dims 256] [--repeats 2] [--method umap|pca]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from offseg_vis.analysis.embedding import (
    FitOptions,
    PixelFeatures,
    PixelSample,
    fit_joint_umap,
    warm_up_umap,
)


def synthetic_pixels(points: int, dims: int, classes: int = 11, images: int = 8, seed: int = 0) -> PixelFeatures:
    """Clustered before/after features: after = before pulled towards its class centre (like ΔE)."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=50_000, help="points fitted (before + after)")
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--method", default="umap", choices=["umap", "pca"])
    parser.add_argument("--n-epochs", type=int, default=None, help="UMAP epochs (default: the library's)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()

    print(f"cores visible: {os.cpu_count()}; options: {FitOptions(method=args.method)}")
    warm = warm_up_umap()
    print(f"warm-up (numba JIT, first process only is slow): {warm:.1f} s")
    pixels = synthetic_pixels(args.points, args.dims)
    times, cpu = [], []
    for r in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        extra = {} if args.n_epochs is None else {"n_epochs": args.n_epochs}
        emb = fit_joint_umap(pixels, seed=r, method=args.method, **extra)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        # CPU seconds (all threads) tell how much work it was when other jobs share the cores.
        print(f"run {r}: {times[-1]:.1f} s wall, {cpu[-1]:.1f} s CPU for {emb.params['points']} points x "
              f"{args.dims} dims; load average now {os.getloadavg()[0]:.1f}")
    print(f"best {min(times):.1f} s wall, mean {np.mean(times):.1f} s; CPU best {min(cpu):.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"points": args.points, "dims": args.dims, "method": args.method, "warm_up_s": warm,
                       "times_s": times, "cpu_s": cpu, "n_epochs": args.n_epochs}, f, indent=2)


if __name__ == "__main__":
    main()
