"""Training throughput (images/s) of a zoo model, per classifier, timed interleaved.

Full training steps (forward, cross-entropy, backward, AdamW step with the engine's parameter
groups) on random images and labels, after warm-up steps. Data loading is excluded, so the numbers
are an upper bound of what ``offseg train`` reaches. On a shared machine compare classifiers by
their paired ratio, not by absolute images/s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from offseg_vis.engine.config import OptimConfig
from offseg_vis.engine.optim import build_optimizer
from offseg_vis.engine.runtime import environment
from offseg_vis.engine.timing import paired_ratio, time_interleaved
from offseg_vis.models import build_model


def training_step(model_name: str, classifier: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """A closure running one optimiser step of a fresh ``model_name`` with ``classifier`` (seeded init)."""
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=num_classes, classifier=classifier)
    model.train()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4))

    def step() -> None:
        loss = model.loss(images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def benchmark(
    model_name: str = "offseg-mbv2",
    classifiers: Sequence[str] = ("linear", "offset"),
    size: int = 128,
    batch: int = 16,
    num_classes: int = 11,
    warmup: int = 3,
    steps: int = 10,
) -> dict:
    """Seconds per step and images/s for each classifier; ratios vs the first classifier.

    Returns:
        {"model", "size", "batch", "num_classes", "environment", "classifiers": {name: {...}},
        "ratio_vs_first": {name: median of per-step ratios}}.
    """
    images = torch.randn(batch, 3, size, size)  # (B, 3, S, S)
    labels = torch.randint(0, num_classes, (batch, size, size))  # (B, S, S)
    steps_by_name = {c: training_step(model_name, c, images, labels, num_classes) for c in classifiers}
    timed = time_interleaved(steps_by_name, warmup=warmup, runs=steps)
    first = timed[classifiers[0]]["times_s"]
    return {
        "model": model_name,
        "size": size,
        "batch": batch,
        "num_classes": num_classes,
        "environment": environment(),
        "classifiers": {
            c: {
                "median_step_s": t["median_s"],
                "best_step_s": t["min_s"],
                "img_per_s_median": batch / t["median_s"],
                "img_per_s_best": batch / t["min_s"],
                "steps": steps,
                "warmup": warmup,
            }
            for c, t in timed.items()
        },
        "ratio_vs_first": {c: paired_ratio(t["times_s"], first) for c, t in timed.items()},
    }


def format_result(result: dict) -> str:
    """One line per classifier."""
    env = result["environment"]
    lines = [
        f"{result['model']} training steps, {result['size']} px, batch {result['batch']}, K={result['num_classes']}, "
        f"{env['threads']} threads, {env['cpu']}, torch {env['torch']} (interleaved; data loading excluded)"
    ]
    for c, r in result["classifiers"].items():
        lines.append(
            f"  {c:<8} {r['img_per_s_median']:.1f} img/s (median step {1000 * r['median_step_s']:.0f} ms, "
            f"best {1000 * r['best_step_s']:.0f} ms); step time x{result['ratio_vs_first'][c]:.2f} of the first"
        )
    return "\n".join(lines)
