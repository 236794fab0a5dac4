"""Correction map: what the offsets change, pixel by pixel.

"Before" is the classifier's prediction with both offsets zero (argmax of
``logits_without_offsets`` = norm(E·Wᵀ) for Offset Learning), "after" is the final prediction. Against
the ground truth each pixel is

    FIXED            wrong -> right
    BROKEN           right -> wrong
    CHANGED_WRONG    wrong -> a different wrong class
    UNCHANGED        same class before and after

and without ground truth only CHANGED / UNCHANGED can be told. Ignored label pixels get IGNORED.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from offseg_vis.analysis.compare import OUTCOME_COLORS
from offseg_vis.analysis.probe import IGNORE_INDEX, ImageProbe
from offseg_vis.errors import InputError

UNCHANGED, FIXED, BROKEN, CHANGED_WRONG, CHANGED, IGNORED = 0, 1, 2, 3, 4, 255
CODE_NAMES = {
    UNCHANGED: "unchanged",
    FIXED: "fixed",
    BROKEN: "broken",
    CHANGED_WRONG: "changed, still wrong",
    CHANGED: "changed",
    IGNORED: "ignored",
}
# Colours for figures and the app (RGB 0-255). A correction map is the twin comparison made between the model
# without and with its offsets, and codes 0-3 and 255 carry the twin outcomes' numbers (0 no change ~ both
# right, 1 fixed, 2 broken, 3 still wrong ~ both wrong, 255 ignored): they take the same colours, so the app's
# two maps read alike. CHANGED (no ground truth) is the one code of its own.
CODE_COLORS = {code: OUTCOME_COLORS.get(code, (60, 110, 220)) for code in CODE_NAMES}
LABELLED_CODES = (FIXED, BROKEN, CHANGED_WRONG, UNCHANGED)
UNLABELLED_CODES = (CHANGED, UNCHANGED)


@dataclass
class CorrectionMap:
    """Per-pixel correction codes and their counts.

    Attributes:
        codes: (H, W) uint8, one of the module's codes per pixel.
        before, after: (H, W) int64 predictions without and with offsets.
        label: (H, W) int64 ground truth, or None (then only CHANGED / UNCHANGED occur).
        num_classes: K.
        class_counts: (K, n_codes) pixels per class and code, in the order of ``code_order``. Classes
            are the ground-truth class with a label, else the "after" class.
        code_order: the codes that index the columns of ``class_counts``.
    """

    codes: np.ndarray
    before: np.ndarray
    after: np.ndarray
    label: np.ndarray | None
    num_classes: int
    class_counts: np.ndarray
    code_order: tuple[int, ...]

    @property
    def has_label(self) -> bool:
        return self.label is not None

    def counts(self) -> dict[str, int]:
        """Total pixels per code name (ignored pixels excluded)."""
        totals = self.class_counts.sum(0)
        return {CODE_NAMES[c]: int(totals[i]) for i, c in enumerate(self.code_order)}

    def changed_fraction(self) -> float:
        """Share of the counted pixels whose class changed."""
        total = self.class_counts.sum()
        unchanged = self.class_counts[:, self.code_order.index(UNCHANGED)].sum()
        return float((total - unchanged) / total) if total else 0.0

    def net_fixed(self) -> int:
        """fixed − broken pixels (0 without a label): the offsets' net effect on pixel accuracy."""
        if not self.has_label:
            return 0
        return int(
            self.class_counts[:, self.code_order.index(FIXED)].sum()
            - self.class_counts[:, self.code_order.index(BROKEN)].sum()
        )


def correction_codes(
    before: np.ndarray, after: np.ndarray, label: np.ndarray | None = None, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Code every pixel: (H, W) before, after[, label] -> (H, W) uint8 codes (see module docstring)."""
    before = np.asarray(before)
    after = np.asarray(after)
    if before.shape != after.shape:
        raise InputError(f"before {before.shape} and after {after.shape} predictions must have the same shape.")
    changed = before != after
    if label is None:
        return np.where(changed, CHANGED, UNCHANGED).astype(np.uint8)
    label = np.asarray(label)
    if label.shape != before.shape:
        raise InputError(f"The label {label.shape} must have the prediction's shape {before.shape}.")
    right_before = before == label
    right_after = after == label
    codes = np.full(before.shape, UNCHANGED, dtype=np.uint8)
    codes[changed & ~right_before & right_after] = FIXED
    codes[changed & right_before & ~right_after] = BROKEN
    codes[changed & ~right_before & ~right_after] = CHANGED_WRONG
    codes[label == ignore_index] = IGNORED
    return codes


def correction_map(
    probe_or_arrays: ImageProbe | tuple[np.ndarray, np.ndarray],
    label: np.ndarray | None = None,
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> CorrectionMap:
    """Build the correction map of one image.

    Args:
        probe_or_arrays: an :class:`ImageProbe` (its label is used unless ``label`` is given), or a
            pair (before (H, W), after (H, W)) of integer predictions.
        label: (H, W) ground truth; None = use the probe's label if any, else the label-free codes.
        num_classes: K (taken from the probe; for arrays default max class + 1).

    Returns:
        a :class:`CorrectionMap` with per-class counts.
    """
    if isinstance(probe_or_arrays, ImageProbe):
        p = probe_or_arrays
        before, after = p.prediction_before_offsets, p.prediction
        label = p.label if label is None else label
        num_classes = num_classes or p.num_classes
    else:
        try:
            before, after = probe_or_arrays
        except (TypeError, ValueError):
            msg = "correction_map takes an ImageProbe or a pair (before, after) of (H, W) arrays."
            raise InputError(msg) from None
        before, after = np.asarray(before), np.asarray(after)
    codes = correction_codes(before, after, label, ignore_index)
    if num_classes is None:
        seen = [before.max(), after.max()]
        if label is not None:
            lab = np.asarray(label)
            ok = lab != ignore_index
            if ok.any():
                seen.append(lab[ok].max())
        num_classes = int(max(seen)) + 1
    order = LABELLED_CODES if label is not None else UNLABELLED_CODES
    # Count per class: ground-truth class when there is a label, else the class after the offsets.
    owner = np.asarray(label) if label is not None else after
    counted = codes != IGNORED
    counts = np.zeros((num_classes, len(order)), dtype=np.int64)
    for j, code in enumerate(order):
        sel = counted & (codes == code)
        counts[:, j] = np.bincount(owner[sel].reshape(-1).astype(np.int64), minlength=num_classes)[:num_classes]
    return CorrectionMap(
        codes=codes,
        before=before.astype(np.int64),
        after=after.astype(np.int64),
        label=None if label is None else np.asarray(label).astype(np.int64),
        num_classes=num_classes,
        class_counts=counts,
        code_order=order,
    )


def total_class_counts(maps: Sequence[CorrectionMap]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Sum the per-class counts of several maps -> ((K, n_codes), code_order). All maps must agree on
    having a label or not."""
    if not maps:
        raise InputError("total_class_counts needs at least one CorrectionMap.")
    orders = {m.code_order for m in maps}
    if len(orders) != 1:
        raise InputError("Mix of maps with and without labels; compute them all the same way.")
    return np.sum([m.class_counts for m in maps], axis=0), maps[0].code_order


def corrections_table(maps: Sequence[CorrectionMap], class_names: Sequence[str] | None = None) -> str:
    """Plain-text table of per-class counts summed over ``maps`` plus a total row."""
    counts, order = total_class_counts(maps)
    k = counts.shape[0]
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(k)]
    width = max(len(n) for n in names + ["total"])
    header = f"{'class':<{width}}  " + "  ".join(f"{CODE_NAMES[c]:>20}" for c in order)
    lines = [header]
    for i in range(k):
        lines.append(f"{names[i]:<{width}}  " + "  ".join(f"{v:20d}" for v in counts[i]))
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{v:20d}" for v in counts.sum(0)))
    return "\n".join(lines)


def probes_confusion(
    probes: Sequence[ImageProbe], before_offsets: bool = False, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """(K, K) int64 confusion matrix (rows: label, columns: prediction) summed over the labelled probes.

    ``before_offsets`` scores the ablation's predictions (ΔW = ΔE = 0) instead of the model's own.
    """
    from offseg_vis.analysis.scores import confusion_matrix

    labelled = [p for p in probes if p.label is not None]
    if not labelled:
        raise InputError("Scoring predictions needs probes with labels; these probes were made without any.")
    k = labelled[0].num_classes
    return sum(
        confusion_matrix(p.prediction_before_offsets if before_offsets else p.prediction, p.label, k, ignore_index)
        for p in labelled
    )


def offset_effect(probes: Sequence[ImageProbe], ignore_index: int = IGNORE_INDEX) -> dict[str, float]:
    """mIoU and pixel accuracy of the predictions without and with the offsets, over labelled probes.

    Returns {"mIoU_before", "mIoU_after", "aAcc_before", "aAcc_after"} as fractions. Without offsets the
    classifier uses norm(E·Wᵀ) only; a model trained with offsets was never asked to work that way, so
    the gap says how much its predictions rely on the offsets.
    """
    from offseg_vis.analysis.scores import mean_iou, pixel_accuracy

    before = probes_confusion(probes, before_offsets=True, ignore_index=ignore_index)
    after = probes_confusion(probes, ignore_index=ignore_index)
    return {
        "mIoU_before": mean_iou(before),
        "mIoU_after": mean_iou(after),
        "aAcc_before": pixel_accuracy(before),
        "aAcc_after": pixel_accuracy(after),
    }
