"""Semantic-segmentation metrics with the mmseg protocol, and dataset evaluation.

One confusion matrix is accumulated over the whole dataset (not per image), rows = ground truth,
columns = prediction, pixels labelled ``ignore_index`` excluded. From it, per class k:

    IoU_k = TP_k / (TP_k + FP_k + FN_k)      Acc_k = TP_k / (TP_k + FN_k)

A class absent from both labels and predictions has IoU = NaN and is left out of mIoU (NaN-mean);
a class absent from the labels has Acc = NaN and is left out of mAcc. aAcc = trace / labelled pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from offseg_vis.constants import IGNORE_INDEX


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Confusion matrix of predicted vs true labels.

    Args:
        pred: predicted class ids, any shape (e.g. (B, H, W)), values in [0, K).
        target: true class ids, same shape; ``ignore_index`` pixels are skipped, as are labels
            outside [0, K).
        num_classes: K.

    Returns:
        (K, K) int64 on ``pred``'s device; entry [t, p] counts pixels of true class t predicted p.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape.")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long().to(pred.device)
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    # one bincount over the flattened (true, pred) pair index
    index = target[valid] * num_classes + pred[valid].clamp(0, num_classes - 1)
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)  # (K, K)


@dataclass
class SegMetrics:
    """Metrics of one confusion matrix. Fractions in [0, 1]; NaN for excluded classes.

    Attributes:
        mIoU, aAcc, mAcc: the headline numbers.
        iou, acc: per-class arrays (K,).
        class_names: K names.
        confusion: (K, K) int64 numpy array, rows = truth, columns = prediction.
    """

    mIoU: float
    aAcc: float
    mAcc: float
    iou: np.ndarray
    acc: np.ndarray
    class_names: list[str]
    confusion: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """``{"mIoU", "aAcc", "mAcc", "per_class": {name: {"IoU", "Acc"}}}``; NaN becomes None."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {
            "mIoU": num(self.mIoU),
            "aAcc": num(self.aAcc),
            "mAcc": num(self.mAcc),
            "per_class": {
                name: {"IoU": num(float(i)), "Acc": num(float(a))}
                for name, i, a in zip(self.class_names, self.iou, self.acc)
            },
        }

    def table(self) -> str:
        """A plain-text table: one row per class (IoU and Acc in %), then the summary."""
        width = max([len(n) for n in self.class_names] + [5])
        lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]
        for name, i, a in zip(self.class_names, self.iou, self.acc):
            fi = "   n/a" if math.isnan(i) else f"{100 * i:6.2f}"
            fa = "   n/a" if math.isnan(a) else f"{100 * a:6.2f}"
            lines.append(f"{name:<{width}}  {fi}  {fa}")
        lines.append("-" * (width + 16))
        lines.append(f"mIoU {100 * self.mIoU:.2f}  aAcc {100 * self.aAcc:.2f}  mAcc {100 * self.mAcc:.2f}")
        return "\n".join(lines)


def _nanmean(x: np.ndarray) -> float:
    finite = x[~np.isnan(x)]
    return float(finite.mean()) if finite.size else float("nan")


def metrics_from_confusion(confusion: Tensor | np.ndarray, class_names: Sequence[str] | None = None) -> SegMetrics:
    """mmseg metrics from a (K, K) confusion matrix (rows truth, columns prediction)."""
    cm = confusion.detach().cpu().numpy() if isinstance(confusion, Tensor) else np.asarray(confusion)
    cm = cm.astype(np.float64)
    k = cm.shape[0]
    tp = np.diag(cm)
    area_label = cm.sum(axis=1)
    area_pred = cm.sum(axis=0)
    union = area_label + area_pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(area_label > 0, tp / area_label, np.nan)
    total = area_label.sum()
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix.")
    return SegMetrics(
        mIoU=_nanmean(iou),
        aAcc=float(tp.sum() / total) if total > 0 else float("nan"),
        mAcc=_nanmean(acc),
        iou=iou,
        acc=acc,
        class_names=names,
        confusion=cm.astype(np.int64),
    )


class ConfusionMeter:
    """Accumulates a dataset-level confusion matrix batch by batch (and across processes)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: str | torch.device = "cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred, target: class ids of the same shape (e.g. (B, H, W))."""
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index).to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrices of every process (no-op outside torch.distributed)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def compute(self, class_names: Sequence[str] | None = None) -> SegMetrics:
        return metrics_from_confusion(self.matrix, class_names)


# ----------------------------------------------------------------------------------------------
# dataset evaluation


def _to_image_tensor(image: Any) -> tuple[Tensor, bool]:
    """A dataset image -> (tensor (3, H, W), is_normalised). uint8 HxWx3 arrays are not normalised."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
        if not (image.flags.c_contiguous and image.flags.writeable):  # e.g. a read-only cached scene
            image = np.array(image, order="C")
        return torch.from_numpy(image).permute(2, 0, 1), False  # (3, H, W)
    if isinstance(image, Tensor):
        return image, image.is_floating_point()
    raise TypeError(f"unsupported image type {type(image).__name__}")


def _sample(dataset: Any, index: int, transform: Any) -> tuple[Tensor, bool, Tensor]:
    """(image (3, H, W), is_normalised, mask (H, W)) of dataset item ``index``."""
    item = dataset[index]
    image, mask = item[0], item[1]
    if transform is not None and isinstance(image, np.ndarray):
        image, mask = transform(image, mask, np.random.default_rng(index))
    image, normalised = _to_image_tensor(image)
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask).long()
    return image, normalised, mask


def predict_logits(
    model: nn.Module,
    images: Tensor,
    mode: str = "whole",
    crop: int | Sequence[int] = 512,
    stride: int | Sequence[int] = 480,
) -> Tensor:
    """Normalised images (B, 3, H, W) -> logits (B, K, H, W) at the input size."""
    crop = tuple(crop) if not isinstance(crop, int) else crop
    stride = tuple(stride) if not isinstance(stride, int) else stride
    return model.predict(images, mode=mode, crop=crop, stride=stride)


def _eval_class_names(dataset: Any, class_names: Sequence[str] | None, num_classes: int) -> Sequence[str] | None:
    """The given names, else ``dataset.classes`` when it has ``num_classes`` entries, else None."""
    if class_names is None:
        class_names = getattr(dataset, "classes", None)
        if class_names is not None and len(class_names) != num_classes:
            class_names = None
    return class_names


def _sample_groups(dataset: Any, indices: list[int], batch_size: int, transform: Any):
    """Yield lists of samples (image (3, H, W), is_normalised, mask (H, W)), read batch by batch:
    a batch of same-size images is one group, a mixed-size batch runs image by image."""
    for start in range(0, len(indices), batch_size):
        samples = [_sample(dataset, i, transform) for i in indices[start : start + batch_size]]
        same_size = len({tuple(s[0].shape) for s in samples}) == 1
        yield from ([samples] if same_size else [[s] for s in samples])


def _score_group(
    model: nn.Module,
    group: list[tuple[Tensor, bool, Tensor]],
    meter: ConfusionMeter,
    device: torch.device,
    mode: str,
    crop: int | Sequence[int],
    stride: int | Sequence[int],
    autocast_dtype: torch.dtype | None,
) -> None:
    """Predict one group of same-size images and add each prediction, resized to its mask's size
    (bilinear on the logits), to ``meter``."""
    images = torch.stack([s[0] for s in group]).to(device)  # (B, 3, H, W)
    if not group[0][1]:
        images = model.normalize(images)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = predict_logits(model, images, mode, crop, stride)  # (B, K, H, W)
    for logit, (_, _, mask) in zip(logits.float(), group):
        if logit.shape[-2:] != mask.shape[-2:]:
            logit = F.interpolate(logit[None], size=mask.shape[-2:], mode="bilinear", align_corners=False)[0]
        meter.update(logit.argmax(0), mask.to(device))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Any,
    mode: str = "whole",
    crop: int | Sequence[int] = 512,
    stride: int | Sequence[int] = 480,
    batch_size: int = 1,
    max_images: int | None = None,
    device: str | torch.device | None = None,
    class_names: Sequence[str] | None = None,
    transform: Any = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    distributed: bool | None = None,
) -> SegMetrics:
    """Evaluate a segmentor on a dataset with one dataset-level confusion matrix.

    Args:
        model: a Segmentor (``predict(images, mode, crop, stride)`` -> (B, K, H, W) logits).
        dataset: items ``(image, mask, ...)``; the image is either a normalised float tensor
            (3, H, W) (e.g. a TransformedDataset) or a uint8 (H, W, 3) array, which is passed
            through ``transform`` when given, else normalised with the model's ImageNet mean/std.
            Masks are (H, W) int with 255 = ignore. Logits are resized to the mask's size (the
            prediction is scored at the label resolution, as in mmseg).
        mode, crop, stride: whole or sliding-window inference.
        batch_size: images per forward pass; images of different sizes run one by one.
        max_images: use only the first N items.
        class_names: K names (default: ``dataset.classes`` if present, else indices).
        autocast_dtype: run the forward under CUDA autocast with this dtype.
        distributed: shard the images over the processes and sum the matrices (default: when a
            process group is initialised).

    Returns:
        :class:`SegMetrics` (fractions in [0, 1]).
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}.")
    num_classes = int(model.num_classes)
    device = torch.device(next(model.parameters()).device if device is None else device)
    class_names = _eval_class_names(dataset, class_names, num_classes)
    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)

    total = len(dataset) if max_images is None else min(len(dataset), max_images)
    indices = list(range(rank, total, world))  # disjoint shards: every image counted once
    meter = ConfusionMeter(num_classes, getattr(model, "ignore_index", IGNORE_INDEX), device=device)
    was_training = model.training
    model.eval()
    bar = None
    if progress and rank == 0:
        bar = tqdm(total=len(indices), desc="eval", unit="img", leave=False, dynamic_ncols=True)
    try:
        for group in _sample_groups(dataset, indices, batch_size, transform):
            _score_group(model, group, meter, device, mode, crop, stride, autocast_dtype)
            if bar is not None:
                bar.update(len(group))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    if distributed:
        meter.all_reduce()
    return meter.compute(class_names)
