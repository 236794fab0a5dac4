"""SegFormerHead: the all-MLP decoder of SegFormer, ending in a classifier chosen by name.

Data flow (spec §1.3, reference README "SegformerHeadOffsetLearning"):

    4 maps (strides 4..32) --1×1 Conv-BN-ReLU each--> C channels
        --bilinear resize to stride 4 (align_corners=False), concat in level order--> 4C
        --fusion_conv 1×1 Conv-BN-ReLU--> C at stride 4
        --[MaxPool2d(2, 2), floor]--> C at stride 8        (offset classifier, as in SegFormer-OL)
        --classifier--> K logits

The official SegFormer-OL inserts the max-pool (not mentioned in the paper); vanilla SegFormer
classifies at stride 4 after Dropout2d(0.1). Module names match the official keys (``convs.{i}``,
``fusion_conv``); the classifier lives under ``classifier`` (official: ``offset_learning`` /
``conv_seg``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offseg_vis.errors import ConfigError, InputError
from offseg_vis.models.layers import ConvNormAct
from offseg_vis.models.offset_learning import ClassifierOutput, build_classifier

# Dropout before a per-pixel classifier, as in the official BaseDecodeHead.cls_seg; the
# Offset-Learning heads never call cls_seg, so they have none.
LINEAR_DROPOUT = 0.1


def default_dropout(classifier: str) -> float:
    """The dropout the official model of this classifier type applies to the classifier's input."""
    return LINEAR_DROPOUT if classifier == "linear" else 0.0


class SegFormerHead(nn.Module):
    """All-MLP decoder + classifier. features: 4 maps -> logits (B, K, H/s, W/s), s = ``output_stride``.

    Args:
        in_channels: channels of the 4 backbone maps (strides 4, 8, 16, 32).
        num_classes: K.
        channels: C, width of the decoder and of the classifier's features (256 in every official config).
        classifier: "offset" (OffsetLearning) or "linear" (per-pixel 1×1 conv).
        classifier_options: passed to :func:`build_classifier`.
        norm: norm of the 1×1 ConvModules, "bn" (official; SyncBN in multi-GPU training) or "gn".
        pool_before_classifier: max-pool 2×2 before the classifier. None = as in the official models:
            True for "offset" (stride 8), False for "linear" (stride 4).
        dropout: Dropout2d before the classifier. None = as in the official models: 0.1 for
            "linear", 0 for "offset".
    """

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        channels: int = 256,
        classifier: str = "offset",
        classifier_options: dict | None = None,
        norm: str = "bn",
        pool_before_classifier: bool | None = None,
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ConfigError(f"SegFormerHead needs the channels of 4 backbone maps, got {list(in_channels)}.")
        self.in_channels = list(in_channels)
        self.num_classes = num_classes
        self.channels = channels
        self.convs = nn.ModuleList(ConvNormAct(c, channels, 1, norm=norm) for c in in_channels)
        self.fusion_conv = ConvNormAct(len(in_channels) * channels, channels, 1, norm=norm)
        if pool_before_classifier is None:
            pool_before_classifier = classifier == "offset"
        # Floor mode: odd sizes lose their last row / column, as in the official head.
        self.pool = nn.MaxPool2d(2, 2) if pool_before_classifier else None
        self.output_stride = 8 if pool_before_classifier else 4
        p = default_dropout(classifier) if dropout is None else dropout
        self.dropout = nn.Dropout2d(p) if p > 0 else None
        self.classifier = build_classifier(classifier, num_classes, channels, **(classifier_options or {}))

    def fuse(self, features: list[Tensor]) -> Tensor:
        """4 maps [(B, C_i, H_i, W_i)] -> fused map (B, C, H_0, W_0) at stride 4 (before the pool)."""
        if len(features) != len(self.convs):
            raise InputError(f"SegFormerHead expects {len(self.convs)} feature maps, got {len(features)}.")
        size = features[0].shape[-2:]
        outs = []
        for conv, feat in zip(self.convs, features):
            y = conv(feat)  # (B, C, H_i, W_i)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            outs.append(y)
        return self.fusion_conv(torch.cat(outs, dim=1))  # (B, 4C, H_0, W_0) -> (B, C, H_0, W_0)

    def decode(self, features: list[Tensor]) -> Tensor:
        """4 maps -> the classifier's input features (B, C, h, w) at ``output_stride``."""
        x = self.fuse(features)
        if self.pool is not None:
            x = self.pool(x)  # (B, C, H_0 // 2, W_0 // 2)
        return x

    def forward(self, features: list[Tensor], return_intermediates: bool = False) -> Tensor | ClassifierOutput:
        """4 maps -> logits (B, K, h, w), or the classifier's :class:`ClassifierOutput`."""
        x = self.decode(features)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.classifier(x, return_intermediates=return_intermediates)


__all__ = ["SegFormerHead"]
