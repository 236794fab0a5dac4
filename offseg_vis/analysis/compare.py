"""What Offset Learning changed: an Offset Learning model against its per-pixel twin.

The twin is the model trained with the same recipe, data and seed but the per-pixel (linear)
classifier — the paper's baseline. On the same images, against the ground truth, every labelled pixel
is one of

    FIXED        twin wrong, Offset Learning right
    BROKEN       twin right, Offset Learning wrong
    BOTH_WRONG   both wrong (not necessarily the same wrong class)
    BOTH_RIGHT   both right

and pixels labelled ``IGNORE_INDEX`` are IGNORED (counted nowhere). The four counts of an image sum to
its labelled pixels. Counts are kept per image, per ground-truth class and in total.

This is the comparison the paper makes. :mod:`offseg_vis.analysis.corrections` answers a different
question — the same offset model with ΔW = ΔE = 0, a classifier nobody trained ("ablation: offsets
switched off").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from offseg_vis.analysis.probe import IGNORE_INDEX, ImageProbe
from offseg_vis.errors import InputError

BOTH_RIGHT, FIXED, BROKEN, BOTH_WRONG, IGNORED = 0, 1, 2, 3, 255
OUTCOMES = ("fixed", "broken", "both_wrong", "both_right")  # column order of every count array
OUTCOME_CODES = (FIXED, BROKEN, BOTH_WRONG, BOTH_RIGHT)
OUTCOME_LABELS = {
    FIXED: "fixed (twin wrong, OL right)",
    BROKEN: "broken (twin right, OL wrong)",
    BOTH_WRONG: "both wrong",
    BOTH_RIGHT: "both right",
    IGNORED: "ignored (unlabelled)",
}
# Colours for figures and the app (RGB 0-255).
OUTCOME_COLORS = {
    FIXED: (40, 170, 60),
    BROKEN: (215, 40, 40),
    BOTH_WRONG: (245, 165, 30),
    BOTH_RIGHT: (205, 205, 205),
    IGNORED: (0, 0, 0),
}


@dataclass
class TwinComparison:
    """Offset Learning vs its per-pixel twin on a set of labelled images.

    Attributes:
        codes: one (H_i, W_i) uint8 map per image (FIXED, BROKEN, BOTH_WRONG, BOTH_RIGHT or IGNORED).
        image_counts: (I, 4) int64 pixels per image and outcome, columns in ``OUTCOMES`` order.
        class_counts: (K, 4) int64 pixels per ground-truth class and outcome, summed over the images.
        num_classes: K.
        class_names: K names.
    """

    codes: list[np.ndarray]
    image_counts: np.ndarray
    class_counts: np.ndarray
    num_classes: int
    class_names: list[str]

    def totals(self) -> dict[str, int]:
        """Pixels per outcome over all images, {"fixed", "broken", "both_wrong", "both_right"}."""
        sums = self.image_counts.sum(0)
        return {name: int(sums[j]) for j, name in enumerate(OUTCOMES)}

    def image_totals(self, index: int) -> dict[str, int]:
        """Pixels per outcome of image ``index``."""
        return {name: int(self.image_counts[index, j]) for j, name in enumerate(OUTCOMES)}

    @property
    def labelled_pixels(self) -> int:
        """Pixels with a ground-truth class (the four outcomes sum to this)."""
        return int(self.image_counts.sum())

    @property
    def net_fixed(self) -> int:
        """fixed − broken: how many more labelled pixels Offset Learning gets right than its twin."""
        t = self.totals()
        return t["fixed"] - t["broken"]

    def accuracies(self) -> tuple[float, float]:
        """(Offset Learning, twin) pixel accuracy over the labelled pixels, as fractions."""
        t, n = self.totals(), max(self.labelled_pixels, 1)
        return (t["fixed"] + t["both_right"]) / n, (t["broken"] + t["both_right"]) / n

    def summary(self) -> str:
        """One sentence with the totals."""
        t = self.totals()
        acc_ol, acc_twin = self.accuracies()
        return (
            f"Against its per-pixel twin on {len(self.codes)} image(s), {self.labelled_pixels:,} labelled pixels: "
            f"Offset Learning fixed {t['fixed']:,} and broke {t['broken']:,} (net {self.net_fixed:+,}); "
            f"both wrong {t['both_wrong']:,}, both right {t['both_right']:,}. Pixel accuracy "
            f"{100 * acc_ol:.2f} % (OL) vs {100 * acc_twin:.2f} % (twin)."
        )

    def table(self) -> str:
        """Plain-text table: one row per ground-truth class plus a total row."""
        width = max(len(n) for n in self.class_names + ["total"])
        lines = [f"{'class':<{width}}  " + "  ".join(f"{name:>11}" for name in OUTCOMES) + "   net fixed"]
        for k, name in enumerate(self.class_names):
            row = self.class_counts[k]
            lines.append(f"{name:<{width}}  " + "  ".join(f"{v:11d}" for v in row) + f"  {row[0] - row[1]:+10d}")
        tot = self.class_counts.sum(0)
        lines.append(f"{'total':<{width}}  " + "  ".join(f"{v:11d}" for v in tot) + f"  {tot[0] - tot[1]:+10d}")
        return "\n".join(lines)


def twin_codes(
    offset_prediction: np.ndarray,
    twin_prediction: np.ndarray,
    label: np.ndarray,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Code every pixel of one image: three (H, W) integer maps -> (H, W) uint8 (module docstring)."""
    ol, twin, lab = np.asarray(offset_prediction), np.asarray(twin_prediction), np.asarray(label)
    if not (ol.shape == twin.shape == lab.shape):
        raise InputError(
            f"The two predictions {ol.shape}, {twin.shape} and the label {lab.shape} must have one shape; "
            "compare the models on the same images."
        )
    ol_right, twin_right = ol == lab, twin == lab
    codes = np.full(lab.shape, BOTH_WRONG, dtype=np.uint8)
    codes[ol_right & twin_right] = BOTH_RIGHT
    codes[ol_right & ~twin_right] = FIXED
    codes[~ol_right & twin_right] = BROKEN
    codes[lab == ignore_index] = IGNORED
    return codes


def compare_predictions(
    offset_predictions: Sequence[np.ndarray],
    twin_predictions: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> TwinComparison:
    """:func:`compare_to_baseline` on plain arrays: per image an (H, W) Offset Learning prediction, the
    twin's (H, W) prediction and the (H, W) ground truth."""
    if not (len(offset_predictions) == len(twin_predictions) == len(labels)):
        raise InputError(
            f"Got {len(offset_predictions)} Offset Learning predictions, {len(twin_predictions)} twin "
            f"predictions and {len(labels)} labels; give one of each per image."
        )
    if not labels:
        raise InputError("compare_to_baseline needs at least one labelled image.")
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise InputError(f"Got {len(names)} class names for {num_classes} classes.")
    codes, image_counts = [], np.zeros((len(labels), len(OUTCOMES)), dtype=np.int64)
    class_counts = np.zeros((num_classes, len(OUTCOMES)), dtype=np.int64)
    for i, (ol, twin, lab) in enumerate(zip(offset_predictions, twin_predictions, labels)):
        c = twin_codes(ol, twin, lab, ignore_index)
        lab = np.asarray(lab).astype(np.int64)
        labelled = c != IGNORED
        if labelled.any() and (lab[labelled].min() < 0 or lab[labelled].max() >= num_classes):
            raise InputError(
                f"Label {i} holds values outside 0..{num_classes - 1} (and the ignore value {ignore_index})."
            )
        for j, code in enumerate(OUTCOME_CODES):
            sel = c == code
            image_counts[i, j] = int(sel.sum())
            class_counts[:, j] += np.bincount(lab[sel], minlength=num_classes)[:num_classes]
        codes.append(c)
    return TwinComparison(codes, image_counts, class_counts, num_classes, names)


def _as_list(probes) -> list[ImageProbe]:
    return [probes] if isinstance(probes, ImageProbe) else list(probes)


def compare_to_baseline(
    offset_probes: Sequence[ImageProbe] | ImageProbe,
    linear_probes: Sequence[ImageProbe] | ImageProbe,
    class_names: Sequence[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> TwinComparison:
    """Compare an Offset Learning model with its per-pixel twin on the same labelled images.

    Args:
        offset_probes: probes of the Offset Learning model (with labels), e.g. ``probe(ol, images, labels,
            need={"prediction"})``.
        linear_probes: probes of the twin (same recipe, data and seed, linear classifier) on the same
            images in the same order.
        class_names: K names (default "class k").

    Returns:
        a :class:`TwinComparison` (codes per image, counts per image, per class and in total).

    Raises:
        InputError: the probes are not of the same images (count, size, pixels or labels differ), a probe
            has no label, the models have different classes, or the roles are swapped.
    """
    ol, twin = _as_list(offset_probes), _as_list(linear_probes)
    if len(ol) != len(twin):
        raise InputError(
            f"Got {len(ol)} Offset Learning probes but {len(twin)} twin probes; probe both models on the same images."
        )
    if not ol:
        raise InputError("compare_to_baseline needs at least one pair of probes.")
    if any(not p.is_offset_model for p in ol) or any(p.is_offset_model for p in twin):
        raise InputError(
            "compare_to_baseline takes the Offset Learning model's probes first and its per-pixel twin's "
            "second; the probes given have other classifiers."
        )
    k = ol[0].num_classes
    if any(p.num_classes != k for p in ol + twin):
        raise InputError("The two models predict different numbers of classes; a twin has the same classes.")
    for i, (a, b) in enumerate(zip(ol, twin)):
        if a.image.shape != b.image.shape or not np.array_equal(a.image, b.image):
            raise InputError(
                f"Image {i} differs between the two probe lists ({a.image.shape} vs {b.image.shape}); "
                "probe both models on the same images in the same order."
            )
        if a.label is None:
            raise InputError(
                f"Image {i} has no ground truth; pass labels to probe() (fixed and broken need the truth)."
            )
        if b.label is not None and not np.array_equal(a.label, b.label):
            raise InputError(f"Image {i} carries different labels in the two probe lists; use one set of labels.")
    return compare_predictions(
        [p.prediction for p in ol], [p.prediction for p in twin], [p.label for p in ol], k, class_names, ignore_index
    )
