"""Training throughput (images/s) of a zoo model, linear vs offset classifier.

Times full training steps (forward, cross-entropy, backward, AdamW step with the engine's parameter
groups) on random images and labels, after warm-up steps; reports the median and best step time.
Data loading is excluded, so the numbers are an upper bound of what ``offseg train`` reaches.
The 1-minute load average is printed: on a shared machine, compare classifiers by their ratio.

    python scripts/bench_train_throughput.py --model offseg-mbv2 --size 128 --batch 16 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from offseg_vis.engine.config import OptimConfig
from offseg_vis.engine.optim import build_optimizer
from offseg_vis.models.zoo import build_model


def bench(
    model_name: str, classifiers: list[str], size: int, batch: int, num_classes: int, warmup: int, steps: int
) -> dict[str, list[float]]:
    """Seconds per training step for each classifier.

    The classifiers' steps are interleaved (A, B, A, B, ...) so that on a shared machine both see
    the same background load and their ratio stays meaningful.
    """
    runs = {}
    for clf in classifiers:
        torch.manual_seed(0)
        model = build_model(model_name, num_classes=num_classes, classifier=clf)
        model.train()
        runs[clf] = (model, build_optimizer(model, OptimConfig(lr=1e-4)))
    images = torch.randn(batch, 3, size, size)  # (B, 3, S, S)
    labels = torch.randint(0, num_classes, (batch, size, size))  # (B, S, S)
    times: dict[str, list[float]] = {clf: [] for clf in classifiers}
    for i in range(warmup + steps):
        for clf, (model, optimizer) in runs.items():
            start = time.perf_counter()
            loss = model.loss(images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i >= warmup:
                times[clf].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="offseg-mbv2")
    parser.add_argument("--classifiers", nargs="+", default=["linear", "offset"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--num-classes", type=int, default=11)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {
        "model": args.model,
        "size": args.size,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "classifiers": {},
    }
    all_times = bench(args.model, args.classifiers, args.size, args.batch, args.num_classes, args.warmup, args.steps)
    results["load_average_1min"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for clf, times in all_times.items():
        med, best = statistics.median(times), min(times)
        results["classifiers"][clf] = {
            "median_step_s": med,
            "best_step_s": best,
            "img_per_s_median": args.batch / med,
            "img_per_s_best": args.batch / best,
        }
        print(
            f"{args.model} [{clf}] {args.size}px batch {args.batch}, {results['threads']} threads: "
            f"{args.batch / med:.1f} img/s (median step {med * 1000:.0f} ms, best {best * 1000:.0f} ms)"
        )
    print(f"load average (1 min) at the end: {results['load_average_1min']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
