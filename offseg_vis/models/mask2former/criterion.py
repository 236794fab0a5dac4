"""Mask2Former's set-prediction loss: Hungarian matching, then class CE + point-sampled BCE and Dice.

For every prediction of the decoder (deep supervision) and every image:

1. The semantic label map becomes one binary target mask per class present (ignore pixels belong to
   no mask, so they count as background of every mask, as in mmseg).
2. Matching: on ``num_points`` uniformly random points, cost(q, g) = 2·(−p_q(class_g))
   + 5·BCE(mask_q, mask_g) + 5·Dice(mask_q, mask_g); ``scipy.optimize.linear_sum_assignment``
   picks the one-to-one assignment of least total cost.
3. Losses: cross-entropy over K+1 classes for every query (unmatched queries -> "no object",
   weight 0.1; weighted mean), and for matched queries BCE and Dice on ``num_points`` points chosen
   by uncertainty (|logit| smallest among 3× oversampled candidates for 75 %, the rest uniform),
   both averaged over the number of matched masks.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from offseg_vis.constants import IGNORE_INDEX
from offseg_vis.errors import InputError
from offseg_vis.models.mask2former.config import CriterionConfig


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of inputs (N, C, H, W) at coords (N, P, 2) = (x, y) in [0, 1] -> (N, C, P).

    Pixel centres sit at (i + 0.5) / size (``grid_sample`` with align_corners=False), zeros outside.
    """
    grid = (2 * coords - 1).unsqueeze(2)  # (N, P, 1, 2)
    return F.grid_sample(inputs, grid, mode="bilinear", align_corners=False).squeeze(3)


def uncertain_point_coords(
    mask_logits: Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> Tensor:
    """Points where each mask is least certain, plus uniform ones: mask_logits (M, 1, H, W) -> (M, P, 2).

    Draws ``num_points · oversample_ratio`` uniform candidates, keeps the
    ``importance_sample_ratio · num_points`` with the smallest |logit|, and fills the rest uniformly.
    """
    m = mask_logits.shape[0]
    candidates = torch.rand(m, int(num_points * oversample_ratio), 2, device=mask_logits.device)
    uncertainty = -point_sample(mask_logits, candidates)[:, 0].abs()  # (M, S)
    num_uncertain = int(importance_sample_ratio * num_points)
    idx = uncertainty.topk(num_uncertain, dim=1).indices  # (M, n)
    chosen = torch.gather(candidates, 1, idx.unsqueeze(-1).expand(-1, -1, 2))  # (M, n, 2)
    num_random = num_points - num_uncertain
    if num_random > 0:
        chosen = torch.cat([chosen, torch.rand(m, num_random, 2, device=mask_logits.device)], dim=1)
    return chosen


def semantic_to_targets(label: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """One binary mask per class present: label (H, W) int -> classes (G,) int64, masks (G, H, W) bool.

    Classes come out sorted. Ignore pixels belong to no mask. Raises InputError for a label value
    that is neither a class index nor ``ignore_index``.
    """
    classes = torch.unique(label)
    classes = classes[classes != ignore_index]
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        bad = classes[(classes < 0) | (classes >= num_classes)].tolist()
        raise InputError(
            f"Label values {bad} are not classes of this {num_classes}-class model nor the ignore index "
            f"{ignore_index}; remap the labels or build the model with the right num_classes."
        )
    masks = label.unsqueeze(0) == classes.view(-1, 1, 1)  # (G, H, W)
    return classes.long(), masks


def matching_cost(
    class_logits: Tensor, point_logits: Tensor, gt_classes: Tensor, gt_points: Tensor, cfg: CriterionConfig
) -> Tensor:
    """Pairwise cost (Q, G) between predictions and targets sampled at the same P points.

    Args:
        class_logits: (Q, K+1).
        point_logits: mask logits at the points (Q, P).
        gt_classes: (G,) class indices.
        gt_points: target mask values at the points (G, P) in [0, 1].
    """
    cost_class = -class_logits.softmax(-1)[:, gt_classes]  # (Q, G)
    p = point_logits.shape[1]
    pos, neg = F.softplus(-point_logits), F.softplus(point_logits)  # BCE against 1 and against 0
    cost_bce = (pos @ gt_points.t() + neg @ (1 - gt_points).t()) / p  # (Q, G)
    prob = point_logits.sigmoid()
    overlap = 2 * prob @ gt_points.t()  # (Q, G)
    total = prob.sum(-1)[:, None] + gt_points.sum(-1)[None, :]
    cost_dice = 1 - (overlap + 1) / (total + 1)
    return cfg.class_weight * cost_class + cfg.mask_weight * cost_bce + cfg.dice_weight * cost_dice


@torch.no_grad()
def hungarian_match(
    class_logits: Tensor, mask_logits: Tensor, gt_classes: Tensor, gt_masks: Tensor, cfg: CriterionConfig
) -> tuple[Tensor, Tensor]:
    """Best one-to-one assignment for one image.

    Args:
        class_logits: (Q, K+1); mask_logits: (Q, h, w); gt_classes: (G,); gt_masks: (G, H, W).

    Returns:
        (query indices, target indices), each (min(Q, G),) int64, sorted by query index.
    """
    if gt_classes.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=class_logits.device)
        return empty, empty
    coords = torch.rand(1, cfg.num_points, 2, device=mask_logits.device)
    point_logits = point_sample(mask_logits.unsqueeze(0).float(), coords)[0]  # (Q, P)
    gt_points = point_sample(gt_masks.unsqueeze(0).float(), coords)[0]  # (G, P)
    cost = matching_cost(class_logits.float(), point_logits, gt_classes, gt_points, cfg)
    if not torch.isfinite(cost).all():
        raise FloatingPointError("The matching cost has NaN or inf values: the model's outputs diverged.")
    # Imported here, not at the top: scipy.optimize takes ~0.9 s to import, and importing offseg_vis
    # registers Mask2Former, so a top-level import would slow every command; only training matches.
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    device = class_logits.device
    return (
        torch.as_tensor(np.asarray(rows), dtype=torch.long, device=device),
        torch.as_tensor(np.asarray(cols), dtype=torch.long, device=device),
    )


def _mean_over_processes(x: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x = x / dist.get_world_size()
    return x


class Mask2FormerCriterion(nn.Module):
    """Matched losses of every prediction, summed (see the module docstring).

    Args:
        num_classes: K.
        cfg: weights and point-sampling settings.
        ignore_index: label value that belongs to no target mask.
    """

    def __init__(self, num_classes: int, cfg: CriterionConfig | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cfg = cfg or CriterionConfig()
        self.ignore_index = ignore_index
        weights = torch.ones(num_classes + 1)
        weights[-1] = self.cfg.no_object_weight
        self.register_buffer("class_weights", weights, persistent=False)

    def targets(self, labels: Tensor) -> list[tuple[Tensor, Tensor]]:
        """labels (B, H, W) -> per image (classes (G,), masks (G, H, W) bool)."""
        return [semantic_to_targets(lab, self.num_classes, self.ignore_index) for lab in labels]

    def single_prediction_loss(
        self, class_logits: Tensor, mask_logits: Tensor, targets: list[tuple[Tensor, Tensor]]
    ) -> dict[str, Tensor]:
        """Matched losses of one prediction: class_logits (B, Q, K+1), mask_logits (B, Q, h, w) ->
        {"loss_cls", "loss_mask", "loss_dice"} scalars, already weighted."""
        b, q, _ = class_logits.shape
        cfg = self.cfg
        class_targets = torch.full((b, q), self.num_classes, dtype=torch.long, device=class_logits.device)
        matched_preds, matched_targets = [], []
        for i, (classes, masks) in enumerate(targets):
            rows, cols = hungarian_match(class_logits[i].detach(), mask_logits[i].detach(), classes, masks, cfg)
            class_targets[i, rows] = classes[cols]
            matched_preds.append(mask_logits[i, rows])
            matched_targets.append(masks[cols])
        loss_cls = (
            F.cross_entropy(
                class_logits.flatten(0, 1), class_targets.flatten(), weight=self.class_weights.to(class_logits.dtype)
            )
            * cfg.class_weight
        )
        preds = torch.cat(matched_preds)  # (M, h, w)
        num_masks = _mean_over_processes(class_logits.new_tensor(float(preds.shape[0]))).clamp(min=1.0)
        if preds.shape[0] == 0:
            zero = mask_logits.sum() * 0.0
            return {"loss_cls": loss_cls, "loss_mask": zero, "loss_dice": zero}
        gts = torch.cat(matched_targets).unsqueeze(1).to(preds.dtype)  # (M, 1, H, W)
        with torch.no_grad():
            coords = uncertain_point_coords(
                preds.unsqueeze(1), cfg.num_points, cfg.oversample_ratio, cfg.importance_sample_ratio
            )  # (M, P, 2)
            gt_points = point_sample(gts, coords)[:, 0]  # (M, P)
        pred_points = point_sample(preds.unsqueeze(1), coords)[:, 0]  # (M, P)
        prob = pred_points.sigmoid()
        dice = 1 - (2 * (prob * gt_points).sum(-1) + 1) / (prob.sum(-1) + gt_points.sum(-1) + 1)
        loss_dice = dice.sum() / num_masks * cfg.dice_weight
        bce = F.binary_cross_entropy_with_logits(pred_points, gt_points, reduction="sum")
        loss_mask = bce / (num_masks * cfg.num_points) * cfg.mask_weight
        return {"loss_cls": loss_cls, "loss_mask": loss_mask, "loss_dice": loss_dice}

    def forward(self, class_logits: list[Tensor], mask_logits: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        """All predictions' losses.

        Args:
            class_logits: L+1 tensors (B, Q, K+1); mask_logits: L+1 tensors (B, Q, h, w).
            labels: (B, H, W) int64, ``ignore_index`` for unlabelled pixels; any resolution (the
                losses compare at sampled points in normalised coordinates).

        Returns:
            mmdet-style names: "loss_cls", "loss_mask", "loss_dice" for the last prediction and
            "d{i}.loss_*" for the earlier ones (d0 = the query-only prediction).
        """
        targets = self.targets(labels)
        losses: dict[str, Tensor] = {}
        last = len(class_logits) - 1
        for i, (cls, masks) in enumerate(zip(class_logits, mask_logits)):
            prefix = "" if i == last else f"d{i}."
            for name, value in self.single_prediction_loss(cls, masks, targets).items():
                losses[prefix + name] = value
        return losses
