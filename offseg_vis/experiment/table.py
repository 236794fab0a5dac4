"""The Markdown table of a results file: means, stds and paired differences vs linear, per budget.

A difference is paired by seed and only between runs made by the same code: the same git commit
and the same scene generator version. A seed whose two runs straddle commits is not paired; the
table says how many such seeds were left out, and ``offseg experiment`` reruns them (the
commit is part of a run's identity).
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from offseg_vis.analysis.stats import finite_values, format_interval, t_interval
from offseg_vis.experiment.arms import DEFAULT_GRID, SCENES, VARIANTS, Arm
from offseg_vis.experiment.budget import DEFAULT_CONFIG, DEFAULT_RESULTS, Budget
from offseg_vis.experiment.record import RunRecord


@dataclass
class ArmSummary:
    """One table row: an arm's runs under one budget. Fractions in [0, 1]; std is the sample std.

    Attributes:
        delta_mean, delta_std, n_pairs: arm minus ``linear`` at the same style, per shared seed.
        seed_deltas: those differences, seed by seed: [(seed, delta), ...].
        straddling: seeds whose arm and ``linear`` runs were made by different code (not paired).
        full_deltas, full_straddling: the same against the full Offset Learning arm (``offset`` at the
            same style and preset), for ablations only (:attr:`is_ablation`).
        rerun_shifts: seeds run at more than one code version: [(seed, latest − earliest version's mIoU)].
    """

    arm: str
    variant: str
    style: float
    seeds: list[int]
    miou_mean: float
    miou_std: float
    aacc_mean: float
    delta_mean: float | None
    delta_std: float | None
    n_pairs: int
    params: int | None
    wall_mean_s: float
    loss_mean: float | None
    seed_deltas: list[tuple[int, float]] = field(default_factory=list)
    straddling: list[int] = field(default_factory=list)
    full_deltas: list[tuple[int, float]] = field(default_factory=list)
    full_straddling: list[int] = field(default_factory=list)
    rerun_shifts: list[tuple[int, float]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def delta_ci(self) -> tuple[float, float] | None:
        """95 % confidence interval of the mean paired difference (t, n - 1 df); None for n < 2."""
        deltas = [d for _, d in self.seed_deltas]
        return t_interval(deltas)

    @property
    def is_ablation(self) -> bool:
        """An Offset Learning variant other than the full model (an ablation or our own variant)."""
        return _is_ablation(self.variant)


@dataclass
class BudgetSummary:
    """All rows of one budget, plus where the numbers came from."""

    budget: dict
    rows: list[ArmSummary]
    machines: list[str]
    commits: list[str]


def _mean(xs: Iterable[float | None]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    xs = finite_values(xs)
    return statistics.fmean(xs) if xs else math.nan


def _std(xs: Iterable[float | None]) -> float:
    """Sample standard deviation of the finite values (NaN for fewer than two)."""
    xs = finite_values(xs)
    return statistics.stdev(xs) if len(xs) > 1 else math.nan


def code_version(record: RunRecord) -> tuple[str | None, str | None]:
    """(git commit, scene generator version) of a run: runs pair only within one code version."""
    return record.code_version


def _pair(runs: list[RunRecord], baseline_runs: list[RunRecord]) -> tuple[RunRecord, RunRecord] | None:
    """The (arm run, baseline run) made by the same code; the latest such code version wins.

    Each list holds one seed's runs in file order; within one code version the first run counts.
    """
    base_by_code: dict = {}
    for b in baseline_runs:
        base_by_code.setdefault(code_version(b), b)
    found = None
    seen = set()
    for r in runs:
        code = code_version(r)
        if code in seen:
            continue
        seen.add(code)
        if code in base_by_code:
            found = (r, base_by_code[code])
    return found


def _arm_order(record: RunRecord) -> tuple:
    variants = list(VARIANTS)
    v = record.variant if record.variant in variants else None
    return (record.scene_name, float(record.style), variants.index(v) if v else len(variants), record.arm)


def summarise(records: Iterable[RunRecord]) -> list[BudgetSummary]:
    """Group records by budget, then by arm; compute means, stds and paired differences vs linear.

    A seed's difference pairs the arm's run with the baseline's run of the same code version
    (:func:`code_version`); when several versions have both, the one appended last wins, and the
    arm's mIoU at that seed is the paired run's. Otherwise the seed's run of the latest code version
    counts for the mean (the first of them). Records without a val mIoU are left out.
    """
    groups: dict[str, dict[str, dict[int, list[RunRecord]]]] = {}
    budgets: dict[str, dict] = {}
    for r in records:
        if r.val.mIoU is None:
            continue
        budget = r.budget.to_dict()
        bkey = json.dumps(budget, sort_keys=True)
        budgets.setdefault(bkey, budget)
        groups.setdefault(bkey, {}).setdefault(r.arm, {}).setdefault(int(r.seed), []).append(r)
    out = []
    for bkey, arms in groups.items():
        rows = []
        for arm_id, by_seed in sorted(arms.items(), key=lambda kv: _arm_order(next(iter(kv[1].values()))[0])):
            rows.append(_summarise_arm(arm_id, by_seed, arms))
        all_runs = [r for by_seed in arms.values() for runs in by_seed.values() for r in runs]
        machines = sorted(
            {
                f"{r.machine.get('cpu')}, {r.machine.get('threads')} threads, torch {r.machine.get('torch')}"
                for r in all_runs
                if r.machine
            }
        )
        commits = sorted({(r.git_commit or "unknown")[:10] for r in all_runs})
        out.append(BudgetSummary(budgets[bkey], rows, machines, commits))
    return out


def _paired(
    by_seed: dict[int, list[RunRecord]], baseline: dict[int, list[RunRecord]]
) -> tuple[list[tuple[int, float]], list[int], dict[int, RunRecord]]:
    """Seed-paired differences of an arm against a baseline arm, made by the same code.

    Returns ([(seed, arm − baseline mIoU)], seeds whose runs straddle code versions, {seed: the arm's
    paired run}).
    """
    paired: list[tuple[int, float]] = []
    straddling: list[int] = []
    chosen: dict[int, RunRecord] = {}
    for s in sorted(by_seed):
        if s not in baseline:
            continue
        pair = _pair(by_seed[s], baseline[s])
        if pair is None:
            straddling.append(s)
            continue
        chosen[s] = pair[0]
        paired.append((s, pair[0].val.mIoU - pair[1].val.mIoU))
    return paired, straddling, chosen


def _latest_run(runs: list[RunRecord]) -> RunRecord:
    """The seed's run of the code version appended last (its first run there): what an unpaired seed
    contributes to its arm's mean, so a re-run pair replaces the old runs in the baseline's mean too."""
    latest = code_version(runs[-1])
    return next(r for r in runs if code_version(r) == latest)


def _rerun_shift(runs: list[RunRecord]) -> float:
    """mIoU of the seed's latest code version minus its earliest one (first run of each)."""
    return _latest_run(runs).val.mIoU - runs[0].val.mIoU


def _is_ablation(variant: str) -> bool:
    """An Offset Learning variant other than the full model (a paper ablation or our own variant)."""
    spec = VARIANTS.get(variant)
    return spec is not None and spec.classifier == "offset" and variant != "offset"


def _summarise_arm(arm_id: str, by_seed: dict[int, list[RunRecord]], arms: dict) -> ArmSummary:
    first = next(iter(by_seed.values()))[0]
    style = float(first.style)
    seeds = sorted(by_seed)
    chosen = {s: _latest_run(by_seed[s]) for s in seeds}
    paired: list[tuple[int, float]] = []
    straddling: list[int] = []
    full_paired: list[tuple[int, float]] = []
    full_straddling: list[int] = []
    if first.variant != "linear":
        paired, straddling, with_baseline = _paired(by_seed, arms.get(Arm("linear", style, first.scene_name).id, {}))
        chosen.update(with_baseline)
    if _is_ablation(first.variant):
        full_paired, full_straddling, _ = _paired(by_seed, arms.get(Arm("offset", style, first.scene_name).id, {}))
    runs = [chosen[s] for s in seeds]
    deltas = [d for _, d in paired]
    losses = [r.train_loss_final for r in runs if r.train_loss_final is not None]
    return ArmSummary(
        arm=arm_id,
        variant=first.variant,
        style=style,
        seeds=seeds,
        miou_mean=_mean([r.val.mIoU for r in runs]),
        miou_std=_std([r.val.mIoU for r in runs]),
        aacc_mean=_mean([r.val.aAcc for r in runs]),
        delta_mean=_mean(deltas) if deltas else None,
        delta_std=_std(deltas) if deltas else None,
        n_pairs=len(deltas),
        params=first.params,
        wall_mean_s=_mean([r.wall_time_s for r in runs]),
        loss_mean=_mean(losses) if losses else None,
        seed_deltas=paired,
        straddling=straddling,
        full_deltas=full_paired,
        full_straddling=full_straddling,
        rerun_shifts=[(s, _rerun_shift(by_seed[s])) for s in seeds if len({code_version(r) for r in by_seed[s]}) > 1],
    )


def _pm(mean: float, std: float, scale: float = 100.0, signed: bool = False) -> str:
    sign = "+" if signed else ""
    m = f"{scale * mean:{sign}.2f}"
    return f"{m} ± {scale * std:.2f}" if math.isfinite(std) else f"{m} ± n/a"


def _label(variant: str) -> str:
    spec = VARIANTS.get(variant)
    return spec.label if spec else variant


def grid_command(budget: dict, arms: Sequence[str], seeds: Sequence[int], results: str) -> str:
    """The ``offseg experiment`` command that produces (or completes) this budget's runs."""
    b = Budget.from_dict(budget)
    args = ["offseg", "experiment"]
    if sorted(arms) != sorted(a.id for a in DEFAULT_GRID):
        args += ["--arms", *arms]
    args += ["--seeds", *map(str, seeds), "--iters", str(b.iters), "--batch-size", str(b.batch_size)]
    args += ["--size", str(b.size), "--val-scenes", str(b.val_scenes), "--train-scenes", str(b.train_scenes)]
    if b.config != Path(DEFAULT_CONFIG).stem:
        args += ["--config", f"configs/{b.config}.yaml"]
    if results != DEFAULT_RESULTS:
        args += ["--results", results]
    args += list(b.overrides)
    return shlex.join(args)


def format_table(summary: BudgetSummary) -> str:
    """The Markdown table of one budget (val mIoU and differences in %, i.e. IoU points)."""
    lines = [
        "| arm | classifier | seeds | val mIoU % (mean ± std) "
        "| Δ mIoU vs linear, paired, points: mean [95 % CI] (n: each seed) "
        "| val aAcc % | final train loss | params | wall time / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary.rows:
        if row.variant == "linear":
            delta = "—"
        elif row.delta_mean is None:
            delta = "no paired linear run"
        else:
            delta = _interval_text(row.seed_deltas)
        if row.straddling:
            delta += _not_paired(row.straddling)
        loss = f"{row.loss_mean:.4f}" if row.loss_mean is not None else "n/a"
        params = f"{row.params / 1e6:.3f} M" if row.params else "n/a"
        lines.append(
            f"| `{row.arm}` | {_label(row.variant)} | {row.n} ({', '.join(map(str, row.seeds))}) "
            f"| {_pm(row.miou_mean, row.miou_std)} | {delta} | {100 * row.aacc_mean:.2f} | {loss} "
            f"| {params} | {row.wall_mean_s / 60:.1f} min |"
        )
    return "\n".join(lines)


def _not_paired(seeds: list[int]) -> str:
    """``; seed 2 not paired (...)`` or ``; seeds 0, 2 not paired (...)``."""
    return f"; seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} not paired (runs at different commits)"


def _interval_text(deltas: list[tuple[int, float]]) -> str:
    """``mean [95 % CI] (n=k: each seed)`` in points."""
    values = [d for _, d in deltas]
    ci = t_interval(values)
    interval = format_interval(ci, 100, missing="[n/a]")
    each = ", ".join(f"{100 * d:+.2f}" for d in values)
    return f"{100 * statistics.fmean(values):+.2f} {interval} (n={len(values)}: {each})"


def format_reruns(summary: BudgetSummary) -> str:
    """One line per arm with seeds run again at another code version: how far the re-run moved val mIoU
    (why pairs must share a commit); empty when nothing was re-run."""
    rows = [r for r in summary.rows if r.rerun_shifts]
    if not rows:
        return ""
    lines = ["Seeds run again at another code version (val mIoU of the latest minus the earliest, points):", ""]
    for row in rows:
        each = ", ".join(f"seed {seed}: {100 * d:+.4f}" for seed, d in row.rerun_shifts)
        largest = max(abs(d) for _, d in row.rerun_shifts)
        lines.append(f"- `{row.arm}`: {each} (largest |change| {100 * largest:.4f})")
    return "\n".join(lines)


def format_ablations(summary: BudgetSummary) -> str:
    """Markdown table of each ablation against the full Offset Learning arm of its style and preset
    (paired by seed within one code version); empty when the budget holds no ablation."""
    rows = [r for r in summary.rows if r.is_ablation]
    if not rows:
        return ""
    lines = [
        "Ablations against the full Offset Learning model (`offset` at the same style and preset), paired by "
        "seed at one commit:",
        "",
        "| arm | classifier | Δ mIoU vs full OL, points: mean [95 % CI] (n: each seed) |",
        "|---|---|---|",
    ]
    for row in rows:
        text = _interval_text(row.full_deltas) if row.full_deltas else "no paired full-OL run"
        if row.full_straddling:
            text += _not_paired(row.full_straddling)
        lines.append(f"| `{row.arm}` | {_label(row.variant)} | {text} |")
    return "\n".join(lines)


def format_doc(
    summaries: Sequence[BudgetSummary], results: str = DEFAULT_RESULTS, command: str = "offseg experiment --table"
) -> str:
    """The whole ``docs/experiment.md`` page: one section per budget found in the results file.

    ``command``: the command line that writes the page (named at its top)."""
    parts = [
        "# The offset-vs-per-pixel experiment",
        "",
        f"Generated by `{command}` from `{results}`; regenerate it, do not edit it.",
        "",
        "Each run trains the CPU default model (OffSeg-MBV2) on FashionScenes with one classifier and "
        "evaluates it on val scenes of the same style and scene preset. The seed fixes the training scene "
        "stream, data order, augmentation and initialisation, identical for every arm; the val set is fixed "
        "per style and preset. Style 0 = no per-scene appearance shift, 1 = the strongest. mIoU and its "
        "differences are in percent (IoU points); ± is the sample standard deviation over seeds; Δ is the arm "
        "minus `linear` at the same style, preset and seed, over the seeds both have at one git commit and "
        "generator version, with its 95 % confidence interval (Student t, n - 1 degrees of freedom). A CI "
        "that contains 0 is no evidence of a difference. Arms marked "
        '"not the paper\'s" are our own variants.',
        "",
        "Scene presets (`variant@style+preset`): "
        + "; ".join(
            f"`+{name}` = {', '.join(f'{k}={v}' for k, v in opts.items())}" for name, opts in SCENES.items() if name
        )
        + " (FashionScenes parameters added to the arm's style; see `FashionScenesConfig`).",
        "",
    ]
    if not summaries:
        parts += ["No finished runs yet. Run the grid:", "", "```", "offseg experiment", "```", ""]
    for s in summaries:
        b = Budget.from_dict(s.budget)
        arms = [r.arm for r in s.rows]
        seeds = sorted({seed for r in s.rows for seed in r.seeds})
        parts += [
            f"## Budget {b.key()}",
            "",
            b.describe() + ".",
            "",
            "```",
            grid_command(s.budget, arms, seeds, results),
            f"offseg experiment --table{'' if results == DEFAULT_RESULTS else ' --results ' + results}",
            "```",
            "",
            format_table(s),
            "",
            *([format_ablations(s), ""] if format_ablations(s) else []),
            *([format_reruns(s), ""] if format_reruns(s) else []),
            f"Machine: {'; '.join(s.machines) or 'n/a'}. Git commit: {', '.join(s.commits)}.",
            "",
        ]
    return "\n".join(parts)
