"""Metric helpers for arrays already in memory (probes, the W* sanity check), as numpy in and out.

Thin adapters over the engine's evaluator (``offseg_vis.engine.evaluate``), so the confusion matrix
and the mmseg IoU protocol live in one place. (``engine.evaluate`` imports only ``models``.)
"""

from __future__ import annotations

import numpy as np
import torch

from offseg_vis.constants import IGNORE_INDEX
from offseg_vis.engine.evaluate import confusion_matrix as _confusion_matrix
from offseg_vis.engine.evaluate import metrics_from_confusion


def confusion_matrix(
    prediction: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Counts (K, K) with rows = ground truth, columns = prediction; ``ignore_index`` labels skipped."""
    pred = torch.from_numpy(np.asarray(prediction, dtype=np.int64))
    target = torch.from_numpy(np.asarray(label, dtype=np.int64))
    if pred.numel() != target.numel():
        raise ValueError(f"prediction has {pred.numel()} values but label has {target.numel()}.")
    return _confusion_matrix(pred.reshape(-1), target.reshape(-1), num_classes, ignore_index).numpy()


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU (K,); NaN for classes absent from both label and prediction."""
    return metrics_from_confusion(confusion).iou


def mean_iou(confusion: np.ndarray) -> float:
    """mIoU over classes seen in the label or the prediction (mmseg protocol)."""
    return metrics_from_confusion(confusion).mIoU


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Fraction of labelled pixels predicted correctly (aAcc)."""
    return metrics_from_confusion(confusion).aAcc
