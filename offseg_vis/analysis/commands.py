"""``offseg analyse``: Markdown pages about a trained Offset Learning checkpoint and its per-pixel twin.

``offseg analyse twin`` — what Offset Learning changed against its twin, pixel by pixel:

    OMP_NUM_THREADS=1 offseg analyse twin checkpoints/offseg-mbv2_offset.safetensors \\
        checkpoints/offseg-mbv2_linear.safetensors --images 1000 --out docs/twin_offseg-mbv2.md

``offseg analyse sweep`` — the misalignment scores over a sweep of the W* regulariser:

    OMP_NUM_THREADS=1 offseg analyse sweep checkpoints/offseg-mbv2_offset.safetensors \\
        checkpoints/offseg-mbv2_linear.safetensors --images 60 --out docs/misalignment_sweep.md \\
        --figure docs/figures/misalignment_sweep.png

Both checkpoints are probed on the first ``--images`` val scenes of the offset checkpoint's own recipe (its
card's config: plain or a scene preset such as ``+looks``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from offseg_vis.analysis.compare import OUTCOME_CODES, OUTCOME_LABELS, OUTCOMES, TwinComparison, compare_to_baseline
from offseg_vis.analysis.corrections import probes_confusion
from offseg_vis.analysis.misalignment import (
    DEFAULT_RCONDS,
    DEFAULT_RIDGES,
    SCORE_LABELS,
    SWEEP_METRICS,
    SweepTable,
    misalignment_sweep,
    stable_orderings,
)
from offseg_vis.analysis.probe import probe
from offseg_vis.analysis.scores import mean_iou
from offseg_vis.analysis.stats import format_interval, t_interval
from offseg_vis.data.fashion_scenes import GENERATOR_VERSION
from offseg_vis.errors import CheckpointError, InputError


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``analyse`` (with the sub-commands ``twin`` and ``sweep``) to the ``offseg`` command."""
    analyse = sub.add_parser("analyse", help="analyses of trained checkpoints (twin comparison, misalignment sweep)")
    inner = analyse.add_subparsers(dest="analysis", required=True)
    twin = inner.add_parser("twin", help="what Offset Learning changed against its per-pixel twin, pixel by pixel")
    sweep = inner.add_parser(
        "sweep", help="W* consistency / alignment over a sweep of the regulariser (rcond, ridge, class means)"
    )
    for p, images in ((twin, 1000), (sweep, 60)):
        p.add_argument("offset", help="the Offset Learning checkpoint (.safetensors with its .json card)")
        p.add_argument("linear", help="its per-pixel twin (same recipe, data and seed)")
        p.add_argument("--images", type=int, default=images, help=f"val scenes probed (default {images})")
        p.add_argument("--start", type=int, default=0, help="first val scene (default 0)")
        p.add_argument("--out", default=None, help="write the Markdown page here (default: print it)")
    sweep.add_argument("--rconds", type=float, nargs="*", default=list(DEFAULT_RCONDS), help="pseudo-inverse cut-offs")
    sweep.add_argument("--ridges", type=float, nargs="*", default=list(DEFAULT_RIDGES), help="ridge λ (× s_max²)")
    sweep.add_argument("--no-class-mean", action="store_true", help="leave out the class-mean W*")
    sweep.add_argument("--figure", default=None, help="also save the sweep figure (PNG) here")
    twin.set_defaults(func=run_twin)
    sweep.set_defaults(func=run_sweep)


@dataclass
class TwinPair:
    """An Offset Learning checkpoint, its per-pixel twin and the val scenes of its recipe.

    Attributes:
        offset_model, linear_model: the two networks (eval mode, CPU).
        offset_meta, linear_meta: their cards.
        images, labels: the val scenes (H, W, 3) uint8 and their (H, W) int64 ground truth.
        used: a sentence naming the checkpoints and the scenes (dataset, indices, generator parameters).
        pairing: a sentence saying how the cards pair the two checkpoints.
    """

    offset_model: nn.Module
    linear_model: nn.Module
    offset_meta: dict
    linear_meta: dict
    images: list[np.ndarray]
    labels: list[np.ndarray]
    used: str
    pairing: str


def load_twin_pair(offset: str, linear: str, n: int, start: int, command: str) -> TwinPair:
    """Load ``offset`` and its twin ``linear`` and the val scenes ``start..start+n-1`` of the offset card's
    recipe.

    Raises:
        CheckpointError: the classifiers are not (offset, linear), or the cards record different recipes.
        InputError: more scenes asked for than the val set has.
    """
    from offseg_vis.engine.checkpoint import load_model, twin_pairing
    from offseg_vis.models.weights import weights_path

    offset_model, offset_meta = load_model(offset)
    linear_model, linear_meta = load_model(linear)
    pairing = twin_pairing(
        offset_meta, linear_meta, weights_path(offset).name, weights_path(linear).name, f"offseg analyse {command}"
    )
    images, labels, scenes = _val_scenes(offset_meta, n, start)
    used = f"Checkpoints `{weights_path(offset).name}` and `{weights_path(linear).name}`; {scenes}."
    return TwinPair(offset_model, linear_model, offset_meta, linear_meta, images, labels, used, pairing)


def _val_scenes(meta: dict, n: int, start: int) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """The first ``n`` val scenes (from ``start``) of the recipe a checkpoint card records: (images, labels,
    a phrase naming them: dataset, indices and generator parameters, no machine path)."""
    from offseg_vis.data.fashion_scenes import describe_parameters
    from offseg_vis.engine.config import from_dict
    from offseg_vis.engine.run import datasets_for

    if not isinstance(meta.get("config"), dict):
        raise CheckpointError("The offset checkpoint's card records no config, so its val set is unknown.")
    cfg = from_dict(meta["config"])
    raw = datasets_for(cfg, "val").dataset
    if start + n > len(raw):
        raise InputError(f"Asked for val scenes {start}..{start + n - 1} but the val set has {len(raw)}.")
    scenes = [raw[i] for i in range(start, start + n)]
    config = getattr(raw, "config", None)
    generator = f"generator {GENERATOR_VERSION}, {describe_parameters(config)}" if config is not None else ""
    what = f"{cfg.data.dataset} val scenes {start}..{start + n - 1}" + (f" ({generator})" if generator else "")
    return [s[0] for s in scenes], [s[1] for s in scenes], what


def sweep_page(table: SweepTable, command: str, used: str, seconds: float) -> str:
    """The Markdown page: what was used, every score at every setting, and the orderings that hold."""
    lines = [
        "# Misalignment scores across the W* regulariser",
        "",
        f"Generated by `{command}`; regenerate it, do not edit it. {used} Took {seconds:.0f} s.",
        "",
        "W* is each image's ideal set of class prototypes, mined from its features E (or E') and its ground "
        "truth (class-centred, see `offseg_vis/analysis/misalignment.py`). The pseudo-inverse W* = M·(Eᵀ)⁺ is "
        "ill-posed: E has tiny singular values, and which of them are kept (rcond) changes the scores. So W* "
        "is mined three ways: the pseudo-inverse over rcond, ridge regression W* = M·E·(EᵀE + λ·s_max²·I)⁻¹ "
        "over λ, and the knob-free class means (W*_k = mean feature of class k in the image).",
        "",
        "What the scores measure:",
        "",
        *[f"- **{m}** — {SCORE_LABELS[m]}." for m in SWEEP_METRICS],
        "",
        "The offset model's E and the linear model's E are different feature spaces (two trained networks), so "
        "comparing their scores compares two geometries, not one classifier before and after.",
        "",
        "## Every score at every setting",
        "",
        table.markdown(),
        "",
        "## Which orderings hold across the whole sweep",
        "",
        "An ordering is kept only when it has one strict sign at every setting listed. Over all "
        f"{len(table.settings)} settings (pseudo-inverse, ridge and class means), these survive:",
        "",
    ]
    surviving = [c for m in ("consistency", "alignment") for c in stable_orderings(table, m) if c.holds]
    lines += [f"- {c.statement}" for c in surviving] or [
        "- none: every ordering of two models flips or ties somewhere."
    ]
    lines += ["", "Every ordering not listed there depends on the setting, not only on the models. In detail:", ""]
    for metric in ("consistency", "alignment"):
        for methods, title in (
            (None, "all settings"),
            (("pinv",), "pseudo-inverse only"),
            (("ridge",), "ridge only"),
        ):
            checks = stable_orderings(table, metric, methods)
            lines.append(f"**{metric}, {title}:**")
            lines.append("")
            lines += [f"- {'holds' if c.holds else 'does not hold'}: {c.statement}" for c in checks]
            lines.append("")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _command(name: str, args: argparse.Namespace, extra: list[str]) -> str:
    """The command line that regenerates a page (paths as given)."""
    parts = [args.offset, args.linear, "--images", str(args.images), "--start", str(args.start), *extra]
    parts += ["--out", args.out] if args.out else []
    return f"OMP_NUM_THREADS=1 offseg analyse {name} " + " ".join(shlex.quote(str(a)) for a in parts)


def _emit(page: str, out: str | None, used: str) -> None:
    if out:
        _write_atomic(Path(out), page)
        print(f"wrote {out} ({used})")
    else:
        print(page)


def run_sweep(args: argparse.Namespace) -> int:
    """``offseg analyse sweep``."""
    start = time.perf_counter()
    pair = load_twin_pair(args.offset, args.linear, args.images, args.start, "sweep")
    names = pair.offset_meta.get("class_names")
    offset_probes = probe(
        pair.offset_model,
        pair.images,
        pair.labels,
        need={"features", "class_embed", "refined_features", "refined_class_embed"},
    )
    linear_probes = probe(pair.linear_model, pair.images, pair.labels, need={"features", "class_embed"})
    table = misalignment_sweep(
        offset_probes, linear_probes, names, rconds=args.rconds, ridges=args.ridges, class_mean=not args.no_class_mean
    )
    seconds = time.perf_counter() - start
    used = f"{pair.used} {pair.pairing} {table.images} labelled images; {len(table.settings)} W* settings."
    extra = ["--rconds", *[f"{r:g}" for r in args.rconds], "--ridges", *[f"{r:g}" for r in args.ridges]]
    extra += (["--no-class-mean"] if args.no_class_mean else []) + (["--figure", args.figure] if args.figure else [])
    page = sweep_page(table, _command("sweep", args, extra), used, seconds)
    if args.figure:
        from offseg_vis.analysis.plots import plot_misalignment_sweep

        fig = plot_misalignment_sweep(table)
        figure = Path(args.figure)
        figure.parent.mkdir(parents=True, exist_ok=True)
        tmp = figure.with_name(f".{figure.name}.tmp.png")
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, figure)
        print(f"wrote {figure}")
    _emit(page, args.out, used)
    return 0


def run_twin(args: argparse.Namespace) -> int:
    """``offseg analyse twin``."""
    start = time.perf_counter()
    pair = load_twin_pair(args.offset, args.linear, args.images, args.start, "twin")
    names = pair.offset_meta.get("class_names")
    need = {"prediction"}
    offset_probes = probe(pair.offset_model, pair.images, pair.labels, need=need)
    linear_probes = probe(pair.linear_model, pair.images, pair.labels, need=need)
    twin = compare_to_baseline(offset_probes, linear_probes, names)
    mious = (mean_iou(probes_confusion(offset_probes)), mean_iou(probes_confusion(linear_probes)))
    seconds = time.perf_counter() - start
    page = twin_page(twin, mious, _command("twin", args, []), f"{pair.used} {pair.pairing}", seconds)
    _emit(page, args.out, pair.used)
    return 0


def twin_page(twin: TwinComparison, mious: tuple[float, float], command: str, used: str, seconds: float) -> str:
    """The Markdown page of a twin comparison: totals, per-image paired statistics with 95 % CIs, per class.

    ``mious``: (Offset Learning, twin) mIoU on the same scenes, as fractions."""
    t, n = twin.totals(), twin.labelled_pixels
    acc_ol, acc_twin = twin.accuracies()
    miou_ol, miou_twin = mious
    counts = twin.image_counts.astype(np.float64)  # (I, 4): fixed, broken, both wrong, both right
    net = counts[:, 0] - counts[:, 1]
    acc_diff = 100 * net / np.maximum(counts.sum(1), 1)  # points of pixel accuracy, OL - twin, per image

    def interval(values: np.ndarray, unit: str, digits: int) -> str:
        bounds = format_interval(t_interval(values.tolist()), digits=digits, missing="(no interval: one image)")
        return f"{values.mean():+.{digits}f} {unit} {bounds}"

    rows = ["| outcome | pixels | share of labelled |", "|---|---:|---:|"]
    rows += [
        f"| {OUTCOME_LABELS[c]} | {t[o]:,} | {100 * t[o] / max(n, 1):.2f} % |" for o, c in zip(OUTCOMES, OUTCOME_CODES)
    ]
    per_class = ["| class | fixed | broken | both wrong | both right | net fixed |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in zip(twin.class_names, twin.class_counts):
        per_class.append(f"| {name} | " + " | ".join(f"{v:,}" for v in row) + f" | {row[0] - row[1]:+,} |")
    images = len(net)
    return "\n".join(
        [
            "# What Offset Learning changed: against its per-pixel twin",
            "",
            f"Generated by `{command}`; regenerate it, do not edit it. {used} Took {seconds:.0f} s.",
            "",
            "Every labelled pixel is *fixed* (twin wrong, Offset Learning right), *broken* (twin right, OL wrong), "
            "*both wrong* or *both right*; the four sum to the labelled pixels. This is the paper's comparison "
            "(Offset Learning against the per-pixel classifier), not the offsets-switched-off ablation.",
            "",
            "## Totals",
            "",
            f"{images:,} images, {n:,} labelled pixels. Net fixed (fixed − broken): **{twin.net_fixed:+,}** pixels.",
            "",
            *rows,
            "",
            f"Pixel accuracy {100 * acc_ol:.2f} % (Offset Learning) vs {100 * acc_twin:.2f} % (twin); mIoU on these "
            f"scenes {100 * miou_ol:.2f} % vs {100 * miou_twin:.2f} %.",
            "",
            f"## Per image (paired, n = {images:,} images, 95 % CI, Student t)",
            "",
            f"- net fixed pixels per image: {interval(net, 'px', 1)}",
            f"- pixel accuracy, Offset Learning − twin: {interval(acc_diff, 'points', 3)}",
            f"- images where Offset Learning gets more / fewer / the same pixels right: {int((net > 0).sum()):,} / "
            f"{int((net < 0).sum()):,} / {int((net == 0).sum()):,}",
            "",
            "These intervals are over images for **one trained pair** (one seed): they say how these two networks "
            "differ on these scenes, not whether Offset Learning beats a per-pixel classifier in general. That "
            "is a question about training seeds, which the experiment answers (`docs/experiment.md`).",
            "",
            "## Per ground-truth class",
            "",
            *per_class,
            "",
        ]
    )
