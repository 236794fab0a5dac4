"""Small metric helpers shared by the analysis modules: confusion matrix and IoU.

(The engine has the dataset-level evaluator; these work on plain numpy arrays already in memory, e.g.
the probes of a notebook or the W* sanity check.)
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def confusion_matrix(
    prediction: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Counts (K, K) with rows = ground truth, columns = prediction; ``ignore_index`` labels skipped.

    prediction and label: integer arrays of the same shape (any shape).
    """
    prediction = np.asarray(prediction).reshape(-1).astype(np.int64)
    label = np.asarray(label).reshape(-1).astype(np.int64)
    if prediction.shape != label.shape:
        raise ValueError(f"prediction has {prediction.size} values but label has {label.size}.")
    keep = (label != ignore_index) & (label >= 0) & (label < num_classes)
    index = label[keep] * num_classes + prediction[keep]
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU (K,) = TP / (TP + FP + FN); NaN for classes absent from both label and prediction."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1e-12), np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean of the per-class IoU over classes seen in the label or the prediction (mmseg protocol:
    classes absent from both are NaN and skipped; a class only predicted counts as IoU 0)."""
    iou = iou_from_confusion(confusion)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Fraction of labelled pixels predicted correctly (aAcc)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total > 0 else float("nan")
