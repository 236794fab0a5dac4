"""Δ mIoU against the training budget: one arm's paired difference at several iteration counts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from offseg_vis.analysis.stats import format_interval
from offseg_vis.experiment.contrast import DeltaContrast, format_contrasts, paired_contrast
from offseg_vis.experiment.table import BudgetSummary


@dataclass(frozen=True)
class CurvePoint:
    """One budget of a curve. Differences are fractions of mIoU (0.01 = one IoU point).

    Attributes:
        iters: optimiser steps of the budget.
        delta_mean: mean paired difference arm - linear.
        ci: 95 % confidence interval (t, n - 1 df), None for n < 2.
        seed_deltas: [(seed, delta), ...].
    """

    iters: int
    delta_mean: float
    ci: tuple[float, float] | None
    seed_deltas: tuple[tuple[int, float], ...]

    @property
    def n(self) -> int:
        return len(self.seed_deltas)


def _shape(budget: dict) -> tuple:
    """Everything of a budget but its length (iterations and the warm-up that follows from them)."""
    return tuple(sorted((k, str(v)) for k, v in budget.items() if k not in ("iters", "warmup_iters")))


def budget_curve(summaries: Sequence[BudgetSummary], arm: str) -> list[CurvePoint]:
    """The arm's paired Δ at every budget that differs from the others only in length, by iterations.

    Budgets of another shape (batch, size, scenes, config, overrides) than the longest one that
    holds the arm are left out, so a curve never mixes two set-ups.
    """
    holding = [(s, row) for s in summaries for row in s.rows if row.arm == arm and row.delta_mean is not None]
    if not holding:
        return []
    shape = _shape(max(holding, key=lambda sr: sr[0].budget["iters"])[0].budget)
    points = [
        CurvePoint(int(s.budget["iters"]), row.delta_mean, row.delta_ci, tuple(row.seed_deltas))
        for s, row in holding
        if _shape(s.budget) == shape
    ]
    return sorted(points, key=lambda p: p.iters)


def budget_changes(points: Sequence[CurvePoint]) -> list[DeltaContrast]:
    """Every shorter budget against the longest one: Δ(shorter) − Δ(longest), paired by seed (> 0: the gain
    shrank with training)."""
    if len(points) < 2:
        return []
    longest = max(points, key=lambda p: p.iters)
    out = []
    for p in sorted(points, key=lambda q: q.iters):
        if p is not longest:
            found = paired_contrast(f"{p.iters:,} it", p.seed_deltas, f"{longest.iters:,} it", longest.seed_deltas)
            if found is not None:
                out.append(found)
    return out


def format_curve(arm: str, points: Sequence[CurvePoint]) -> str:
    """Markdown table of a curve (points, i.e. percent)."""
    lines = [
        f"| iterations | Δ mIoU of `{arm}` vs linear, points | 95 % CI | n | each seed |",
        "|---|---|---|---|---|",
    ]
    for p in points:
        ci = format_interval(p.ci, 100)
        each = ", ".join(f"{s}: {100 * d:+.2f}" for s, d in p.seed_deltas)
        lines.append(f"| {p.iters} | {100 * p.delta_mean:+.2f} | {ci} | {p.n} | {each} |")
    changes = budget_changes(points)
    if changes:
        lines += [
            "",
            "Did the gain change with training? Paired by seed (> 0: the gain shrank):",
            "",
            format_contrasts(changes),
        ]
    return "\n".join(lines)


def plot_curve(arm: str, points: Sequence[CurvePoint], path: str | os.PathLike | None = None):
    """Figure of Δ vs iterations with 95 % CIs and each seed's difference; saved to ``path`` if given."""
    import matplotlib  # imported here: heavy (about a second), needed only to draw the figure

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    xs = [p.iters for p in points]
    ys = [100 * p.delta_mean for p in points]
    lo = [100 * (p.delta_mean - p.ci[0]) if p.ci else 0.0 for p in points]
    hi = [100 * (p.ci[1] - p.delta_mean) if p.ci else 0.0 for p in points]
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=4, label="mean Δ, 95 % CI (t)")
    for i, p in enumerate(points):
        seeds = [100 * d for _, d in p.seed_deltas]
        ax.scatter([p.iters] * p.n, seeds, s=12, color="0.35", zorder=3, label="each seed" if i == 0 else None)
    for p in points:
        if p.ci is None:  # say so rather than draw a point that looks exact
            ax.annotate(f"n = {p.n}, no CI", (p.iters, 100 * p.delta_mean), textcoords="offset points",
                        xytext=(-4, 8), ha="right", fontsize=7)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:,}" for x in xs])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the budgets, no 6×10² etc.
    ax.set_xlabel("training iterations (batch 16)")
    ax.set_ylabel("Δ val mIoU vs per-pixel (points)")
    ax.set_title(f"{arm}: paired difference vs budget", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    if path is not None:  # temp file + rename: a reader never sees half a PNG
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    return fig
