"""Differences of paired differences: did Offset Learning's gain (Δ = OL − per-pixel) change between two
settings? Paired by seed, because a seed fixes the training stream, order and initialisation in every arm,
so Δ(A, seed) − Δ(B, seed) cancels what the two settings share."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from offseg_vis.analysis.stats import format_interval, t_interval
from offseg_vis.experiment.table import BudgetSummary


@dataclass(frozen=True)
class DeltaContrast:
    """Δ(a) − Δ(b) over the seeds both hold. Fractions of mIoU (0.01 = one IoU point).

    Attributes:
        a, b: what the two Δs are (arm ids, or budgets such as "500 it").
        mean: mean over seeds of Δ(a) − Δ(b).
        ci: 95 % confidence interval (t, n − 1 df), None for n < 2.
        seed_values: [(seed, Δ(a) − Δ(b)), ...].
    """

    a: str
    b: str
    mean: float
    ci: tuple[float, float] | None
    seed_values: tuple[tuple[int, float], ...]

    @property
    def n(self) -> int:
        return len(self.seed_values)


def paired_contrast(
    a: str, a_deltas: Sequence[tuple[int, float]], b: str, b_deltas: Sequence[tuple[int, float]]
) -> DeltaContrast | None:
    """Δ(a) − Δ(b) seed by seed, over the seeds both lists hold; None when they share none."""
    other = dict(b_deltas)
    values = tuple((seed, d - other[seed]) for seed, d in a_deltas if seed in other)
    if not values:
        return None
    diffs = [v for _, v in values]
    return DeltaContrast(a, b, statistics.fmean(diffs), t_interval(diffs), values)


def arm_contrast(summaries: Sequence[BudgetSummary], a: str, b: str) -> list[tuple[int, DeltaContrast]]:
    """[(iterations, Δ(arm a) − Δ(arm b)), ...] over the budgets that hold seed-paired runs of both, by length."""
    out = []
    for s in summaries:
        rows = {r.arm: r for r in s.rows}
        if a in rows and b in rows:
            found = paired_contrast(a, rows[a].seed_deltas, b, rows[b].seed_deltas)
            if found is not None:
                out.append((int(s.budget["iters"]), found))
    return sorted(out, key=lambda ic: ic[0])


def format_contrasts(contrasts: Sequence[DeltaContrast], budgets: Sequence[int] | None = None) -> str:
    """Markdown table of contrasts in points (``budgets``: one iteration count per row, when they differ)."""
    lines = [
        f"|{' iterations |' if budgets else ''} contrast | Δ(a) − Δ(b), points | 95 % CI | n | each seed |",
        f"|{'---|' if budgets else ''}---|---|---|---|---|",
    ]
    for i, c in enumerate(contrasts):
        ci = format_interval(c.ci, 100)
        each = ", ".join(f"{s}: {100 * v:+.2f}" for s, v in c.seed_values)
        first = f" {budgets[i]} |" if budgets else ""
        lines.append(f"|{first} Δ({c.a}) − Δ({c.b}) | {100 * c.mean:+.2f} | {ci} | {c.n} | {each} |")
    return "\n".join(lines)
