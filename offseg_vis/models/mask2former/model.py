"""Mask2Former(-OL) segmentor: Swin backbone + Mask2Former head + set-prediction loss.

Same API as :class:`~offseg_vis.models.segmentor.Segmentor` (it subclasses it for the padding and
the sliding window):

* ``forward(images)`` -> semantic logits (B, K, h, w) at stride 4 of the padded input, from the last
  prediction: ``softmax(class_logits)[..., :-1]ᵀ · sigmoid(mask_logits)`` (so "logits" are class
  scores in [0, Q], not log-probabilities; argmax is what matters).
* ``loss(images, labels)`` -> scalar: matched class / BCE / Dice losses summed over all L + 1
  predictions; ``loss_terms`` gives them one by one.
* ``predict(images, mode="whole"|"slide", crop, stride)`` -> (B, K, H, W) at the input size; mask
  logits are upsampled *before* the sigmoid, as mmseg does.
* ``forward(images, return_intermediates=True)`` -> :class:`Mask2FormerOutput` for the analysis
  probe. Its ``classifier`` is a :class:`ClassifierOutput` whose class axis is the **Q queries**
  (not the K classes) except for ``logits`` and ``logits_without_offsets``:

  ============================  ===============  ==================================================
  field                         shape            meaning
  ============================  ===============  ==================================================
  logits                        (B, K, h, w)     semantic logits (after offsets)
  logits_without_offsets        (B, N, K)        semantic logits had ΔW = ΔE = 0 (masks = E·Wᵀ)
  features                      (B, N, C)        E, the mask features before offsets
  class_embed                   (B, Q, C)        W, the queries' mask embeddings (per image!)
  coupled_logits                (B, N, Q)        A = E·Wᵀ, the query masks before offsets
  class_attention               (B, N, Q)        softmax over pixels of A   (offset model only)
  position_attention            (B, N, Q)        softmax over queries of A  (offset model only)
  class_prototypes, class_offset, refined_class_embed   (B, Q, C)   pooled E, ΔW, W' = W + ΔW
  feature_offset, refined_features                      (B, N, C)   ΔE, E' = E + ΔE
  logits_before_norm            (B, N, Q)        aligned query masks W'·E'ᵀ (there is no norm)
  ============================  ===============  ==================================================

  ``query_class_probs`` (B, Q, K) and ``query_labels`` (B, Q) tell which class each query stands for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from offseg_vis.constants import IGNORE_INDEX
from offseg_vis.errors import ConfigError, InputError
from offseg_vis.models.mask2former.config import Mask2FormerConfig, swin_t_config, variant_config
from offseg_vis.models.mask2former.criterion import Mask2FormerCriterion
from offseg_vis.models.mask2former.head import Mask2FormerHead, MaskPredictions
from offseg_vis.models.mask2former.swin import SwinTransformer
from offseg_vis.models.offset_learning import ClassifierOutput
from offseg_vis.models.registry import register_model
from offseg_vis.models.segmentor import Segmentor


def semantic_logits(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """class_logits (B, Q, K+1), mask_logits (B, Q, h, w) -> (B, K, h, w) = Σ_q p_q(k) · sigmoid(m_q)."""
    probs = class_logits.softmax(dim=-1)[..., :-1]  # drop "no object"
    return torch.einsum("bqk,bqhw->bkhw", probs, mask_logits.sigmoid())


@dataclass
class Mask2FormerOutput:
    """What Mask2Former computed for one batch (see the module docstring for ``classifier``).

    Attributes:
        logits: semantic logits (B, K, h, w) at stride 4 of the padded input.
        classifier: probe view of the last prediction (a :class:`ClassifierOutput`).
        input_size: (H, W) of the images before padding.
        class_logits: (B, Q, K+1) of the last prediction.
        mask_logits: aligned query masks (B, Q, h, w) of the last prediction.
        mask_logits_without_offsets: E·Wᵀ (B, Q, h, w) (equal to ``mask_logits`` for "linear").
        query_class_probs: softmax(class_logits)[..., :-1] (B, Q, K).
        query_labels: argmax of class_logits (B, Q); K means "no object".
        predictions: every prediction of the decoder (:class:`MaskPredictions`).
    """

    logits: Tensor
    classifier: ClassifierOutput
    input_size: tuple[int, int]
    class_logits: Tensor
    mask_logits: Tensor
    mask_logits_without_offsets: Tensor
    query_class_probs: Tensor
    query_labels: Tensor
    predictions: MaskPredictions


class Mask2FormerSegmentor(Segmentor):
    """Mask2Former(-OL) with the :class:`Segmentor` API (module docstring).

    Args:
        num_classes: K.
        classifier: "offset" (Mask2Former-OL) or "linear" (plain Mask2Former).
        config: sizes and loss settings (:class:`Mask2FormerConfig`).
        classifier_options: ``class_offsets`` / ``feature_offsets`` of the offset module.
        ignore_index: label value outside every target mask.
    """

    def __init__(
        self,
        num_classes: int,
        classifier: str = "offset",
        config: Mask2FormerConfig | None = None,
        classifier_options: dict | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        config = config or Mask2FormerConfig()
        backbone = SwinTransformer(config.backbone)
        backbone.size_divisor = config.size_divisor
        head = Mask2FormerHead(backbone.out_channels, num_classes, classifier, config.head, classifier_options)
        super().__init__(backbone, head, ignore_index)
        self.config = config
        self.criterion = Mask2FormerCriterion(num_classes, config.criterion, ignore_index)
        self._pending: tuple[Tensor, MaskPredictions] | None = None

    def _pad_labels(self, labels: Tensor) -> Tensor:
        """Pad labels like the images, with the ignore index (padding belongs to no mask)."""
        return self._pad_to_divisor(labels, value=self.ignore_index)

    def predictions(self, images: Tensor, return_intermediates: bool = False) -> MaskPredictions:
        """Normalised images (B, 3, H, W) -> every prediction of the head (:class:`MaskPredictions`)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"Mask2Former expects images of shape (B, 3, H, W), got {tuple(images.shape)}.")
        feats = self.backbone(self._pad_to_divisor(images))
        return self.decode_head(feats, return_intermediates=return_intermediates)

    def forward(self, images: Tensor, return_intermediates: bool = False) -> Tensor | Mask2FormerOutput:
        """Normalised images (B, 3, H, W) -> semantic logits (B, K, h, w), or a :class:`Mask2FormerOutput`.

        In training mode with autograd on, the predictions are also kept for one following
        :meth:`loss_from_logits` call (the training loop calls ``model(images)`` and then
        ``loss_from_logits(logits, labels)``).
        """
        preds = self.predictions(images, return_intermediates)
        logits = semantic_logits(preds.class_logits[-1], preds.mask_logits[-1])
        if self.training and torch.is_grad_enabled():
            self._pending = (logits, preds)
        if not return_intermediates:
            return logits
        return self._intermediates(logits, preds, (images.shape[2], images.shape[3]))

    def _intermediates(self, logits: Tensor, preds: MaskPredictions, size: tuple[int, int]) -> Mask2FormerOutput:
        mask_out = preds.last_mask_output
        class_logits = preds.class_logits[-1]
        b, q, h, w = preds.mask_logits[-1].shape
        plain_masks = mask_out.coupled_logits.transpose(1, 2).reshape(b, q, h, w)  # (B, Q, h, w)
        plain_semantic = semantic_logits(class_logits, plain_masks)  # (B, K, h, w)
        view = ClassifierOutput(
            logits=logits,
            features=mask_out.features,
            class_embed=mask_out.class_embed,
            coupled_logits=mask_out.coupled_logits,
            logits_without_offsets=plain_semantic.flatten(2).transpose(1, 2),  # (B, N, K)
            class_attention=mask_out.class_attention,
            position_attention=mask_out.position_attention,
            class_prototypes=mask_out.class_prototypes,
            class_offset=mask_out.class_offset,
            feature_offset=mask_out.feature_offset,
            refined_class_embed=mask_out.refined_class_embed,
            refined_features=mask_out.refined_features,
            logits_before_norm=mask_out.logits_before_norm,
            spatial_size=(h, w),
        )
        return Mask2FormerOutput(
            logits=logits,
            classifier=view,
            input_size=size,
            class_logits=class_logits,
            mask_logits=preds.mask_logits[-1],
            mask_logits_without_offsets=plain_masks,
            query_class_probs=class_logits.softmax(-1)[..., :-1],
            query_labels=class_logits.argmax(-1),
            predictions=preds,
        )

    def loss_terms(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Every weighted loss term (mmdet names: "loss_cls", …, "d0.loss_cls", …).

        images (B, 3, H, W) normalised; labels (B, H, W) int64 with ``ignore_index``.
        """
        preds = self.predictions(images)
        return self.criterion(preds.class_logits, preds.mask_logits, self._pad_labels(labels))

    def loss(self, images: Tensor, labels: Tensor) -> Tensor:
        """Scalar training loss: the sum of :meth:`loss_terms`."""
        return torch.stack(list(self.loss_terms(images, labels).values())).sum()

    def loss_from_logits(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The set-prediction loss of the forward pass that produced ``logits`` (training mode only).

        Mask2Former's loss needs the query predictions, not the semantic logits, so this uses the
        predictions kept by the last training-mode :meth:`forward`; labels are (B, H, W) at the
        input size.
        """
        pending, self._pending = self._pending, None
        if pending is None or pending[0].shape != logits.shape:
            raise InputError(
                "Mask2Former computes its loss from the query predictions of the forward pass just before: "
                "call model(images) in training mode right before loss_from_logits, or use model.loss(images, labels)."
            )
        preds = pending[1]
        return torch.stack(
            list(self.criterion(preds.class_logits, preds.mask_logits, self._pad_labels(labels)).values())
        ).sum()

    @torch.no_grad()
    def predict_whole(self, images: Tensor) -> Tensor:
        """Normalised images (B, 3, H, W) -> semantic logits (B, K, H, W) at the input size; mask
        logits are upsampled before the sigmoid, as mmseg does (``predict`` dispatches here)."""
        h, w = images.shape[-2:]
        preds = self.predictions(images)
        padded = self.padded_size(h, w)
        masks = F.interpolate(preds.mask_logits[-1], size=padded, mode="bilinear", align_corners=False)
        return semantic_logits(preds.class_logits[-1], masks)[..., :h, :w]

    @torch.no_grad()
    def predict_labels(self, images: Tensor) -> Tensor:
        """Normalised images (B, 3, H, W) -> class ids (B, H, W): the argmax of :meth:`predict_whole` (the
        mask logits are upsampled before the sigmoid, so the semantic scores exist at full size anyway)."""
        return self.predict_whole(images).argmax(1)


def build_mask2former(
    num_classes: int,
    classifier: str = "offset",
    variant: str = "swin-t",
    classifier_options: dict | None = None,
    config: Mask2FormerConfig | None = None,
) -> Mask2FormerSegmentor:
    """Build Mask2Former (``classifier="linear"``) or Mask2Former-OL (``"offset"``).

    Args:
        num_classes: K.
        classifier: "offset" or "linear".
        variant: "swin-t" (the paper's model) or "tiny" (CPU tests); ignored when ``config`` is given.
        classifier_options: ``class_offsets`` / ``feature_offsets`` for the offset module.
        config: a full :class:`Mask2FormerConfig` instead of a named variant.
    """
    cfg = config if config is not None else variant_config(variant)
    return Mask2FormerSegmentor(num_classes, classifier, cfg, classifier_options)


@register_model(
    "mask2former-swin-t",
    config=swin_t_config(),
    description="Swin-T + Mask2Former head (masked-attention decoder) + Offset Learning on the query masks",
    cost_table=False,
)
def build_registered_mask2former(
    num_classes: int,
    classifier: str,
    classifier_options: dict | None,
    config: Mask2FormerConfig,
    backbone_pretrained: bool | str | Path = False,
) -> Mask2FormerSegmentor:
    """The registry's builder (``build_model("mask2former-swin-t", K)``); ``model.config`` is ``config``.

    ``backbone_pretrained`` is accepted so that configs shared with the other models build, but only
    ``False`` works: there is no loader for Swin ImageNet weights (an error, never silently ignored).
    """
    if backbone_pretrained:
        raise ConfigError(
            f"backbone_pretrained={backbone_pretrained!r}: Mask2Former's Swin backbone has no ImageNet weight "
            "loader; load a whole official Mask2Former checkpoint with pretrained=... instead."
        )
    return Mask2FormerSegmentor(num_classes, classifier, config, classifier_options)
