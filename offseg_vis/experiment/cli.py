"""``offseg experiment``: the command line over the runner and the table."""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from offseg_vis.errors import ConfigError
from offseg_vis.experiment.analysis import (
    DEFAULT_ANALYSIS_DOC,
    DEFAULT_ANALYSIS_IMAGES,
    analyse_arm,
    format_analysis,
)
from offseg_vis.experiment.arms import VARIANTS, parse_arms
from offseg_vis.experiment.budget import (
    DEFAULT_CONFIG,
    DEFAULT_DOC,
    DEFAULT_ITERS,
    DEFAULT_RESULTS,
    DEFAULT_WORK_DIR,
    load_base,
)
from offseg_vis.experiment.contrast import arm_contrast, format_contrasts
from offseg_vis.experiment.curve import budget_curve, format_curve, plot_curve
from offseg_vis.experiment.results import read_results
from offseg_vis.experiment.runner import run_grid, status
from offseg_vis.experiment.table import format_doc, grid_command, summarise
from offseg_vis.models.weights import atomic_write_text


class _ListThenOverrides(argparse.Action):
    """``nargs="+"`` option whose ``key=value`` tokens go to the overrides (so overrides may follow it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = [v for v in values if "=" not in v]
        if not items:
            parser.error(f"{option_string} needs at least one value")
        setattr(namespace, self.dest, items)
        namespace.extra_overrides = [*getattr(namespace, "extra_overrides", []), *(v for v in values if "=" in v)]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``offseg experiment`` to the ``offseg`` sub-commands."""
    register_experiment(sub)


def register_experiment(sub: argparse._SubParsersAction, old_name: str | None = None) -> None:
    """Add ``experiment`` to a sub-command set.

    Args:
        old_name: the command line this registration stands in for (``offseg bench experiment``);
            it then prints one line naming ``offseg experiment`` before running the same command.
    """
    p = sub.add_parser(
        "experiment",
        help="offset vs per-pixel classifier on FashionScenes: run any part of the grid, or --table"
        + (" (now `offseg experiment`)" if old_name else ""),
        description="Train and evaluate classifier arms (variant@style) x seeds under one budget, appending a "
        "JSON line per finished run to the results file and skipping runs already there; an interrupted "
        "run resumes. --table writes the Markdown summary instead. Overrides (key=value) change the base "
        "config for every arm.",
    )
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the base config")
    p.add_argument(
        "--arms",
        nargs="+",
        action=_ListThenOverrides,
        default=["grid"],
        help="variant@style (e.g. offset@1, offset-co@0.5), a variant (all its grid styles) or a group: "
        f"grid (default), main, ablation, all. Variants: {', '.join(VARIANTS)}",
    )
    p.add_argument("--seeds", nargs="+", action=_ListThenOverrides, default=["0", "1", "2"])
    p.add_argument("--iters", type=int, default=DEFAULT_ITERS, help=f"steps per run (default {DEFAULT_ITERS})")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: the config's)")
    p.add_argument("--size", type=int, default=None, help="scene and crop side in px (default: the config's)")
    p.add_argument("--val-scenes", type=int, default=None, help="val scenes per style (default: the config's)")
    p.add_argument("--train-scenes", type=int, default=None, help="training scenes per epoch (default: config)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"base config (default {DEFAULT_CONFIG})")
    p.add_argument("--results", default=DEFAULT_RESULTS, help=f"results file (default {DEFAULT_RESULTS})")
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help=f"run folders (default {DEFAULT_WORK_DIR})")
    p.add_argument(
        "--keep-checkpoints", action="store_true", help="keep last weights and optimiser state of finished runs"
    )
    p.add_argument("--list", action="store_true", help="show each planned run as done, partial or pending")
    p.add_argument("--table", action="store_true", help="write the Markdown table of the results file; run nothing")
    p.add_argument(
        "--curve",
        nargs="+",
        action=_ListThenOverrides,
        default=None,
        help="with --table: add the paired Δ of these arms against the budget (iterations), with a figure",
    )
    p.add_argument(
        "--contrast",
        nargs=2,
        action="append",
        metavar=("ARM_A", "ARM_B"),
        default=None,
        help="with --table: add Δ(ARM_A) − Δ(ARM_B) paired by seed (does the gain differ between two settings?); "
        "may be given more than once",
    )
    p.add_argument("--doc", default=DEFAULT_DOC, help=f"where --table writes the page (default {DEFAULT_DOC})")
    p.add_argument(
        "--analyse",
        action="store_true",
        help="misalignment analysis of finished offset arms vs their linear baselines (their checkpoints); "
        f"writes {DEFAULT_ANALYSIS_DOC}",
    )
    p.add_argument(
        "--analysis-images",
        type=int,
        default=DEFAULT_ANALYSIS_IMAGES,
        help=f"val scenes probed by --analyse (default {DEFAULT_ANALYSIS_IMAGES})",
    )
    p.add_argument(
        "--analysis-doc", default=DEFAULT_ANALYSIS_DOC, help=f"where --analyse writes (default {DEFAULT_ANALYSIS_DOC})"
    )
    func = experiment_command if old_name is None else functools.partial(_renamed, old_name)
    p.set_defaults(func=func, extra_overrides=[])


def _renamed(old_name: str, args: argparse.Namespace) -> int:
    print(f"`{old_name}` is now `offseg experiment`; running that.", file=sys.stderr)
    return experiment_command(args)


def _seeds(values: Sequence[str]) -> list[int]:
    try:
        seeds = [int(v) for v in values]
    except ValueError as err:
        raise ConfigError(f"--seeds takes non-negative integers, e.g. --seeds 0 1 2 ({err}).") from err
    if any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds takes non-negative integers, got {seeds}.")
    return list(dict.fromkeys(seeds))


def experiment_command(args: argparse.Namespace) -> int:
    """Entry point of ``offseg experiment``."""
    if args.table:
        summaries = summarise(read_results(args.results))
        text = format_doc(summaries, args.results, _table_command(args))
        for arm_id in args.curve or ():
            text += _curve_section(summaries, arm_id, args)
        for a, b in args.contrast or ():
            text += _contrast_section(summaries, a, b, args.results)
        print(text)
        if args.doc:
            atomic_write_text(args.doc, text)
            print(f"written to {args.doc}", file=sys.stderr)
        return 0
    overrides = [*args.overrides, *args.extra_overrides]
    arms = parse_arms(args.arms)
    seeds = _seeds(args.seeds)
    base, budget = load_base(
        args.config, overrides, args.iters, args.batch_size, args.size, args.val_scenes, args.train_scenes
    )
    if args.list:
        print(f"budget {budget.key()}: {budget.describe()}")
        for arm_id, seed, state in status(budget, arms, seeds, args.results, args.work_dir):
            print(f"  {arm_id:<22} seed {seed}: {state}")
        return 0
    if args.analyse:
        return _analyse(args, base, budget, arms, seeds)
    run_grid(base, budget, arms, seeds, args.results, args.work_dir, args.keep_checkpoints)
    return 0


def _table_command(args: argparse.Namespace) -> str:
    """The ``offseg experiment --table ...`` line that regenerates this page."""
    parts = ["offseg", "experiment", "--table"]
    if args.results != DEFAULT_RESULTS:
        parts += ["--results", args.results]
    if args.curve:
        parts += ["--curve", *args.curve]
    for a, b in args.contrast or ():
        parts += ["--contrast", a, b]
    return shlex.join(parts)


def _contrast_section(summaries, a: str, b: str, results: str) -> str:
    """Markdown section of Δ(a) − Δ(b), paired by seed, in every budget holding both arms."""
    a, b = (arm.id for arm in parse_arms([a, b]))
    title = f"\n## Does the gain differ between `{a}` and `{b}`?\n"
    found = arm_contrast(summaries, a, b)
    if not found:
        return f"{title}\nNo budget in {results} holds seed-paired runs of both `{a}` and `{b}`.\n"
    note = (
        "Δ is each arm minus its own per-pixel twin; the contrast pairs the two Δs by seed. Arms of different "
        "scene presets or styles are scored on different val sets."
    )
    table = format_contrasts([c for _, c in found], [iters for iters, _ in found])
    return f"{title}\n{note}\n\n{table}\n"


def _curve_section(summaries, arm_id: str, args: argparse.Namespace) -> str:
    """Markdown section (and figure beside the doc) of one arm's Δ against the budget."""
    arm = parse_arms([arm_id])[0]
    points = budget_curve(summaries, arm.id)
    if not points:
        return f"\n## Budget curve of `{arm.id}`\n\nNo paired runs of `{arm.id}` in {args.results} yet.\n"
    figure = Path(args.doc or DEFAULT_DOC).parent / "figures" / f"experiment_budget_{arm.slug}.png"
    plot_curve(arm.id, points, figure)
    print(f"figure written to {figure}", file=sys.stderr)
    return (
        f"\n## Budget curve of `{arm.id}`\n\n![Δ vs budget](figures/{figure.name})\n\n{format_curve(arm.id, points)}\n"
    )


def _analyse(args: argparse.Namespace, base, budget, arms, seeds) -> int:
    if args.analysis_images < 1:
        raise ConfigError(f"--analysis-images must be positive, got {args.analysis_images}.")
    targets = [a for a in arms if a.spec.classifier == "offset"]
    if not targets:
        raise ConfigError("--analyse needs at least one Offset Learning arm in --arms, e.g. --arms offset@0.5.")
    analyses = []
    for arm in targets:
        for seed in seeds:
            print(f"analysing {arm.id} vs {arm.baseline.id}, seed {seed} ...", file=sys.stderr, flush=True)
            analyses.append(analyse_arm(base, budget, arm, seed, args.work_dir, args.analysis_images))
    # the grid's own command for these arms and budget, asked to analyse instead of train
    command = grid_command(budget.to_dict(), [a.id for a in targets], seeds, args.results)
    command += f" --analyse --analysis-images {args.analysis_images}"
    text = format_analysis(analyses, budget, command)
    print(text)
    atomic_write_text(args.analysis_doc, text)
    print(f"written to {args.analysis_doc}", file=sys.stderr)
    return 0
