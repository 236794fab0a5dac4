"""Why an arm did or did not gain: the misalignment analysis on an experiment run's own checkpoints.

For one offset arm and seed this loads the arm's ``best`` weights and those of its per-pixel
baseline (``linear`` at the same style and scene preset, same seed), probes both on the first val
scenes of the arm, and reports

* W* consistency (cosine of one class's ideal prototype across images) and alignment (cosine of W
  with W*), before (E, W) and after (E', W') the offsets, and for the per-pixel model: a class-centred
  analogue of the paper's Fig. 3 (see :mod:`offseg_vis.analysis.misalignment`), at every setting of the
  W* regulariser (:func:`offseg_vis.analysis.misalignment.misalignment_sweep`), keeping only the orderings that hold
  at all of them;
* what Offset Learning changed against its per-pixel twin (the baseline arm, same seed): pixels fixed
  (twin wrong, OL right), broken (twin right, OL wrong), both wrong and both right
  (:func:`offseg_vis.analysis.compare_to_baseline`);
* the ablation "offsets switched off": the offset model's mIoU with ΔW = ΔE = 0 (argmax of norm(E·Wᵀ), a
  classifier nobody trained) and with its offsets, and the pixels switching them on turns right or wrong.
  It says how much the predictions lean on the offsets, not what they gain over a per-pixel model.

``offseg experiment --analyse --arms offset@0.5 offset@0.5+looks --seeds 0`` writes it to
``docs/experiment_analysis.md``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from offseg_vis.analysis import (
    compare_to_baseline,
    correction_map,
    offset_effect,
    probe,
)
from offseg_vis.analysis.corrections import CODE_NAMES, total_class_counts
from offseg_vis.analysis.misalignment import SweepTable, misalignment_sweep, stable_orderings
from offseg_vis.data.fashion_scenes import CLASSES
from offseg_vis.engine.checkpoint import checkpoint_weights, load_model
from offseg_vis.engine.run import datasets_for
from offseg_vis.errors import ConfigError
from offseg_vis.experiment.arms import Arm
from offseg_vis.experiment.budget import DEFAULT_WORK_DIR, Budget, run_config, run_dir_for

DEFAULT_ANALYSIS_DOC = "docs/experiment_analysis.md"
DEFAULT_ANALYSIS_IMAGES = 100


@dataclass
class ArmAnalysis:
    """The analysis of one offset arm at one seed (fractions in [0, 1]).

    Attributes:
        arm, seed: what was analysed; ``baseline`` is the per-pixel arm it is compared with.
        images: val scenes probed.
        sweep: the W* scores of "offset: before (E, W)", "offset: after (E', W')" and "linear (E, W)"
            at every regulariser setting (:class:`~offseg_vis.analysis.misalignment.SweepTable`).
        twin: pixels {"fixed", "broken", "both_wrong", "both_right"} of the offset model against its
            per-pixel twin (the baseline arm), summed over the images.
        effect: ablation, offsets switched off: {"mIoU_before", "mIoU_after", "aAcc_before", "aAcc_after"}
            of the offset model with ΔW = ΔE = 0 ("before") and with its offsets ("after").
        ablation: ablation, offsets switched off: summed correction-map counts {"fixed", "broken",
            "changed, still wrong", "unchanged"} from ΔW = ΔE = 0 to the model's own prediction.
    """

    arm: str
    baseline: str
    seed: int
    images: int
    sweep: SweepTable
    twin: dict
    effect: dict
    ablation: dict

    @property
    def twin_net_fixed(self) -> int:
        """fixed − broken against the twin."""
        return self.twin["fixed"] - self.twin["broken"]

    @property
    def twin_accuracy(self) -> tuple[float, float]:
        """(offset model, twin) pixel accuracy over the labelled pixels, fractions."""
        n = max(sum(self.twin.values()), 1)
        return (self.twin["fixed"] + self.twin["both_right"]) / n, (self.twin["broken"] + self.twin["both_right"]) / n

    def stable_orderings(self) -> list[str]:
        """The W* orderings (consistency, alignment) that hold at every setting of the sweep, as sentences."""
        return [c.statement for m in ("consistency", "alignment") for c in stable_orderings(self.sweep, m) if c.holds]

    def summary_row(self) -> dict:
        """The numbers the README quotes, flat."""
        return {
            "arm": self.arm,
            "seed": self.seed,
            "w_star_settings": len(self.sweep.settings),
            "w_star_stable_orderings": self.stable_orderings(),
            **{f"twin_{k}": v for k, v in self.twin.items()},
            **{f"ablation_{k}": v for k, v in self.effect.items()},
        }


def _weights(work_root: str | os.PathLike, arm: Arm, seed: int, budget: Budget) -> Path:
    run_dir = run_dir_for(work_root, arm, seed, budget)
    for tag in ("best", "last"):
        path = checkpoint_weights(run_dir, tag)
        if path.is_file():
            return path
    raise ConfigError(
        f"No weights of {arm.id} seed {seed} under this budget in {run_dir}. Run it first "
        f"(`offseg experiment --arms {arm.id} --seeds {seed}` with the same budget options), or "
        "pass the --work-dir it ran in."
    )


def analyse_arm(
    base,
    budget: Budget,
    arm: Arm,
    seed: int,
    work_root: str | os.PathLike = DEFAULT_WORK_DIR,
    n_images: int = DEFAULT_ANALYSIS_IMAGES,
) -> ArmAnalysis:
    """Probe the arm's and its baseline's checkpoints on the arm's first ``n_images`` val scenes.

    Raises:
        ConfigError: the arm is not an Offset Learning arm, or a run's weights are missing.
    """
    if arm.spec.classifier != "offset":
        raise ConfigError(f"--analyse compares an Offset Learning arm with its baseline; {arm.id} is per-pixel.")
    offset_path = _weights(work_root, arm, seed, budget)
    linear_path = _weights(work_root, arm.baseline, seed, budget)
    # the run's own val set (the cache its evaluation read), not a second recipe for it
    val_raw = datasets_for(run_config(base, arm, seed, budget), "val").dataset
    scenes = [val_raw[i] for i in range(min(n_images, len(val_raw)))]
    images, labels = [s[0] for s in scenes], [s[1] for s in scenes]
    offset_model, _ = load_model(offset_path)
    linear_model, _ = load_model(linear_path)
    offset_probes = probe(offset_model, images, labels)
    linear_probes = probe(linear_model, images, labels)
    return summarise_pair(arm.id, arm.baseline.id, seed, offset_probes, linear_probes, list(CLASSES))


def summarise_pair(
    arm: str, baseline: str, seed: int, offset_probes, linear_probes, class_names, **misalignment_options
) -> ArmAnalysis:
    """The analysis of an offset model and its per-pixel twin from their probes on the same labelled images
    (``misalignment_options`` go to :func:`~offseg_vis.analysis.misalignment.misalignment_sweep`)."""
    sweep = misalignment_sweep(offset_probes, linear_probes, class_names, **misalignment_options)
    counts, order = total_class_counts([correction_map(p) for p in offset_probes])  # (K, codes)
    return ArmAnalysis(
        arm=arm,
        baseline=baseline,
        seed=int(seed),
        images=len(offset_probes),
        sweep=sweep,
        twin=compare_to_baseline(offset_probes, linear_probes, class_names).totals(),
        effect=offset_effect(offset_probes),
        ablation={CODE_NAMES[code]: int(counts[:, j].sum()) for j, code in enumerate(order)},
    )


def format_analysis(analyses: Sequence[ArmAnalysis], budget: Budget, command: str) -> str:
    """``docs/experiment_analysis.md``: one summary table, then one section per (arm, seed)."""
    lines = [
        "# Why the offsets did or did not help: the misalignment analysis of experiment runs",
        "",
        f"Generated by `{command}`; regenerate it, do not edit it. Budget {budget.key()}: {budget.describe()}.",
        "",
        "W* is an image's ideal set of class prototypes, mined from its features and ground truth "
        "(class-centred, see `analysis/misalignment.py`); consistency = mean cosine of one class's W* across "
        "images (high = one fixed W can fit every image); alignment = cosine of the classifier's W (W' after "
        "the offsets) with W*: a class-centred analogue of the paper's Fig. 3. W* is ill-posed, so it is mined "
        "at every setting of the regulariser (pseudo-inverse cut-offs, ridge λ and the knob-free class means, "
        "as `docs/misalignment_sweep.md`), and an ordering of two models is kept only when it holds at all of "
        "them. The offset model's E and the linear model's E are different feature spaces.",
        "",
        "**Against the per-pixel twin** (the baseline arm at the same seed): fixed = twin wrong and Offset "
        "Learning right, broken = twin right and Offset Learning wrong, over the labelled pixels. "
        "**Ablation: offsets switched off** = the offset model with ΔW = ΔE = 0 (argmax of norm(E·Wᵀ), a "
        "classifier nobody trained) against the same model with its offsets; it measures how much the "
        "predictions lean on the offsets, not a gain over a per-pixel model.",
        "",
        "| arm | seed | images | vs per-pixel twin: px fixed / broken (net) | pixel accuracy % OL / twin "
        "| ablation, offsets switched off: mIoU % without → with | ablation: px turned right / wrong "
        "| W* orderings that hold at every setting |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in analyses:
        acc_ol, acc_twin = a.twin_accuracy
        stable = a.stable_orderings()
        lines.append(
            f"| `{a.arm}` | {a.seed} | {a.images} "
            f"| {a.twin['fixed']:,} / {a.twin['broken']:,} ({a.twin_net_fixed:+,}) "
            f"| {100 * acc_ol:.2f} / {100 * acc_twin:.2f} "
            f"| {100 * a.effect['mIoU_before']:.1f} → {100 * a.effect['mIoU_after']:.1f} "
            f"| {a.ablation.get('fixed', 0):,} / {a.ablation.get('broken', 0):,} "
            f"| {'<br>'.join(stable) or f'none: every ordering flips or ties within the {len(a.sweep.settings)}'} |"
        )
    for a in analyses:
        lines += [
            "",
            f"## `{a.arm}` vs `{a.baseline}`, seed {a.seed} ({a.images} val scenes): W* at every setting",
            "",
            a.sweep.markdown(),
        ]
    return "\n".join(lines) + "\n"
