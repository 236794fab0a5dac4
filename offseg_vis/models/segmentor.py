"""Segmentor = backbone + decode head; the loss; whole-image and sliding-window prediction.

Contracts every backbone and head in this package follows:

* backbone(images (B, 3, H, W)) -> list of 4 feature maps at strides 4, 8, 16, 32, and the
  attribute ``out_channels`` (list of 4 ints). Backbones that need the input padded to a
  multiple (EfficientFormerV2: 32) declare ``size_divisor``; the segmentor pads for them.
* head(features, return_intermediates=False) -> logits (B, K, h, w) at ``head.output_stride``,
  or, with intermediates, the :class:`ClassifierOutput` of the head's classifier. Heads own
  ``head.classifier`` (OffsetLearning or LinearClassifier) and ``head.num_classes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offseg_vis.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from offseg_vis.errors import InputError
from offseg_vis.models.layers import as_pair
from offseg_vis.models.offset_learning import ClassifierOutput
from offseg_vis.models.upsample import upsampled_argmax


@dataclass
class SegmentorOutput:
    """Logits and what the classifier computed on the way.

    Attributes:
        logits: (B, K, h, w) at the head's output stride (not upsampled).
        classifier: the head classifier's :class:`ClassifierOutput` (E, W, offsets, attentions).
        input_size: (H, W) of the images that went in (before any padding).
    """

    logits: Tensor
    classifier: ClassifierOutput
    input_size: tuple[int, int]


class Segmentor(nn.Module):
    """Backbone + head.

    Args:
        backbone: returns 4 feature maps (see module docstring).
        head: decode head ending in a classifier.
        ignore_index: label value excluded from the loss and the metrics.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = head
        self.ignore_index = ignore_index
        # Non-persistent: not part of checkpoints, as in the official models.
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.decode_head.num_classes

    @property
    def classifier(self) -> nn.Module:
        return self.decode_head.classifier

    def normalize(self, images_uint8: Tensor) -> Tensor:
        """uint8 or [0, 255] float images (B, 3, H, W) -> ImageNet-normalised float (B, 3, H, W)."""
        x = images_uint8.to(self.pixel_mean.dtype) / 255.0
        return (x - self.pixel_mean) / self.pixel_std

    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        """The size an (h, w) input runs at: rounded up to the backbone's ``size_divisor`` (1 if none)."""
        divisor = getattr(self.backbone, "size_divisor", 1)
        return h + (-h) % divisor, w + (-w) % divisor

    def _pad_to_divisor(self, images: Tensor, value: float = 0.0) -> Tensor:
        """Zero-pad (B, ..., H, W) at the bottom and right to :meth:`padded_size` (``value`` fills labels)."""
        h, w = images.shape[-2:]
        ph, pw = self.padded_size(h, w)
        return F.pad(images, (0, pw - w, 0, ph - h), value=value) if (ph, pw) != (h, w) else images

    def forward(self, images: Tensor, return_intermediates: bool = False) -> Tensor | SegmentorOutput:
        """Normalised images (B, 3, H, W) -> logits (B, K, h, w) at the head's stride.

        With ``return_intermediates`` the result is a :class:`SegmentorOutput`. Inputs whose size
        the backbone cannot take are zero-padded; the logits then cover the padded area
        (``predict`` crops it away).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Segmentor expects images of shape (B, 3, H, W), got {tuple(images.shape)}.")
        size = (images.shape[2], images.shape[3])
        feats = self.backbone(self._pad_to_divisor(images))
        out = self.decode_head(feats, return_intermediates=return_intermediates)
        if return_intermediates:
            return SegmentorOutput(logits=out.logits, classifier=out, input_size=size)
        return out

    def loss(self, images: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of the logits upsampled (bilinear, align_corners=False) to the label size.

        images (B, 3, H, W) normalised; labels (B, H, W) int64 with ``ignore_index`` for unlabelled
        pixels. Returns a scalar. A batch with no labelled pixel gives 0 (not NaN).
        """
        logits = self(images)
        if self.padded_size(*images.shape[-2:]) != tuple(images.shape[-2:]):
            # Padded inputs give logits over the padded canvas: back to the input's own grid first.
            logits = self._resize_to_input(logits, images)
        return self.loss_from_logits(logits, labels)

    def loss_from_logits(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of (B, K, h, w) logits against (B, H, W) labels (see :meth:`loss`)."""
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        valid = labels != self.ignore_index
        if not bool(valid.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits, labels, ignore_index=self.ignore_index)

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        mode: str = "whole",
        crop: int | tuple[int, int] = 512,
        stride: int | tuple[int, int] = 480,
    ) -> Tensor:
        """Normalised images (B, 3, H, W) of any size -> logits (B, K, H, W) at the input size.

        mode "whole" runs the model once; "slide" runs overlapping crops of ``crop`` with step
        ``stride`` and averages the logits where crops overlap (images smaller than the crop are
        run once, padded).
        """
        if mode == "whole":
            return self.predict_whole(images)
        if mode == "slide":
            return self._slide(images, as_pair(crop), as_pair(stride))
        raise InputError(f"predict mode must be 'whole' or 'slide', got {mode!r}.")

    @torch.no_grad()
    def predict_whole(self, images: Tensor) -> Tensor:
        """One run over the whole (padded) image: (B, 3, H, W) -> logits (B, K, H, W) at the input size."""
        return self._resize_to_input(self(images), images)

    @torch.no_grad()
    def predict_labels(self, images: Tensor) -> Tensor:
        """One run over the whole image: (B, 3, H, W) -> class ids (B, H, W), the argmax of
        :meth:`predict_whole`'s logits, computed by :func:`~offseg_vis.models.upsample.upsampled_argmax`
        without forming the (B, K, H, W) upsampled logits."""
        h, w = images.shape[-2:]
        return upsampled_argmax(self(images).float(), self.padded_size(h, w), crop=(h, w))

    def _resize_to_input(self, logits: Tensor, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        ph, pw = self.padded_size(h, w)
        if (ph, pw) != (h, w):
            # Logits cover the padded canvas: resize to it, then crop the real image.
            logits = F.interpolate(logits, size=(ph, pw), mode="bilinear", align_corners=False)
            return logits[..., :h, :w]
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)

    def _slide(self, images: Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> Tensor:
        b, _, h, w = images.shape
        ch, cw = min(crop[0], h), min(crop[1], w)
        rows = max(math.ceil((h - ch) / stride[0]), 0) + 1
        cols = max(math.ceil((w - cw) / stride[1]), 0) + 1
        total = images.new_zeros((b, self.num_classes, h, w))
        count = images.new_zeros((1, 1, h, w))
        for r in range(rows):
            for c in range(cols):
                y0 = min(r * stride[0], h - ch)
                x0 = min(c * stride[1], w - cw)
                patch = images[..., y0 : y0 + ch, x0 : x0 + cw]
                total[..., y0 : y0 + ch, x0 : x0 + cw] += self.predict_whole(patch)
                count[..., y0 : y0 + ch, x0 : x0 + cw] += 1
        return total / count
