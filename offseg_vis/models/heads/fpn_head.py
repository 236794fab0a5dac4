"""SimpleFPNHead: the light decoder of OffSeg-MBV2 (our CPU model; not in the paper).

Why this design: a top-down FPN sum is the cheapest way to give stride-4 pixels the semantics of
the stride-32 map (no 4×C concatenation at stride 4, unlike the all-MLP head), and one depthwise-
separable 3×3 conv at stride 4 smooths the upsampling seams. The classifier runs at stride 4, as in
OffSeg, so Offset Learning sees the same pixel grid as in the paper.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from offseg_vis.models.layers import conv_norm_act
from offseg_vis.models.offset_learning import ClassifierOutput, build_classifier


class SimpleFPNHead(nn.Module):
    """Laterals (1×1) → top-down sum → depthwise-separable 3×3 at stride 4 → classifier.

    Args:
        in_channels: channels of the 4 backbone maps (strides 4, 8, 16, 32).
        num_classes: K.
        channels: C, the width of the decoder and of the classifier's features.
        classifier: "offset" or "linear"; ``classifier_options`` go to it.
    """

    output_stride = 4

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        channels: int = 128,
        classifier: str = "offset",
        classifier_options: dict | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.channels = channels
        self.laterals = nn.ModuleList(conv_norm_act(c, channels) for c in in_channels)
        self.smooth = nn.Sequential(
            conv_norm_act(channels, channels, 3, groups=channels),
            conv_norm_act(channels, channels, 1),
        )
        self.classifier = build_classifier(classifier, num_classes, channels, **(classifier_options or {}))

    def decode(self, features: list[Tensor]) -> Tensor:
        """4 maps -> decoder features (B, C, H/4, W/4)."""
        x = self.laterals[-1](features[-1])
        for lateral, feat in zip(reversed(self.laterals[:-1]), reversed(features[:-1])):
            x = lateral(feat) + F.interpolate(x, size=feat.shape[-2:], mode="bilinear", align_corners=False)
        return self.smooth(x)

    def forward(self, features: list[Tensor], return_intermediates: bool = False) -> Tensor | ClassifierOutput:
        """4 maps -> logits (B, K, H/4, W/4), or the classifier's ClassifierOutput."""
        return self.classifier(self.decode(features), return_intermediates=return_intermediates)
