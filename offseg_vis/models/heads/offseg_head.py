"""OffSegHead: per-stage 1×1 convs, a coarse-to-fine FreqFusion cascade, and a classifier at stride 4.

Data flow (spec §2.2, reference README "OffSegHead and FreqFusion"):

1. ``pre[i]``: 1×1 Conv (no bias) + GroupNorm(32) + ReLU maps stage i to ``new_channels[i]``.
2. The maps are taken coarse to fine (s32, s16, s8, s4). The running map starts at s32; each
   FreqFusion gets hr = the next finer map and lr = the running map, with
   compressed_channels = (C_hr + C_lr) // 4, and returns an enhanced hr' and a ×2 lr'. The new
   running map concatenates them **interleaved in 4 groups** ([hr'₀, lr'₀, hr'₁, lr'₁, ...]), so
   the next FreqFusion's 4-group resampler sees whole groups of both.
3. ``align``: 1×1 Conv + GN(32) + ReLU to ``channels`` (256), then the classifier at stride 4.

Keys equal the official ``decode_head.*`` keys, except that the official ``offset_learning.*``
is ``classifier.*`` here and the dead ``conv_seg`` is not built.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from offseg_vis.errors import ConfigError, InputError
from offseg_vis.models.freqfusion import FreqFusion
from offseg_vis.models.layers import ConvNormAct
from offseg_vis.models.offset_learning import ClassifierOutput, build_classifier

__all__ = ["OffSegHead", "group_interleave"]

INTERLEAVE_GROUPS = 4


def group_interleave(a: Tensor, b: Tensor, groups: int = INTERLEAVE_GROUPS) -> Tensor:
    """Concatenate a (B, Ca, H, W) and b (B, Cb, H, W) group by group.

    Result (B, Ca + Cb, H, W) = [a group 0, b group 0, a group 1, b group 1, ...], each group of a
    holding Ca/groups channels and of b Cb/groups.
    """
    bsz, ca, h, w = a.shape
    cb = b.shape[1]
    if ca % groups or cb % groups:
        raise ValueError(f"Cannot interleave {ca} and {cb} channels in {groups} groups.")
    a = a.reshape(bsz * groups, ca // groups, h, w)  # (B·G, Ca/G, H, W)
    b = b.reshape(bsz * groups, cb // groups, h, w)
    return torch.cat([a, b], dim=1).reshape(bsz, ca + cb, h, w)


class OffSegHead(nn.Module):
    """OffSeg's decode head.

    Args:
        in_channels: channels of the 4 backbone maps (strides 4, 8, 16, 32).
        new_channels: channels after the per-stage 1×1 convs (T: 32, 32, 64, 128; B/L: 32, 64, 128, 256);
            each must be divisible by 32 (GroupNorm) and 4 (interleaving).
        num_classes: K.
        channels: C, the width of the aligned features fed to the classifier (256).
        classifier: "offset" (Offset Learning) or "linear" (per-pixel 1×1 conv).
        classifier_options: keyword options of the classifier (see ``build_classifier``).
    """

    output_stride = 4

    def __init__(
        self,
        in_channels: list[int],
        new_channels: list[int],
        num_classes: int,
        channels: int = 256,
        classifier: str = "offset",
        classifier_options: dict | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4 or len(new_channels) != 4:
            raise ConfigError(
                f"OffSegHead needs 4 input levels, got in_channels={in_channels}, new_channels={new_channels}."
            )
        self.in_channels = list(in_channels)
        self.new_channels = list(new_channels)
        self.num_classes = num_classes
        self.channels = channels
        self.pre = nn.ModuleList(ConvNormAct(cin, cout, 1, norm="gn") for cin, cout in zip(in_channels, new_channels))
        coarse_to_fine = new_channels[::-1]
        running = coarse_to_fine[0]
        fusions = []
        for hr_channels in coarse_to_fine[1:]:
            fusions.append(FreqFusion(hr_channels, running, compressed_channels=(hr_channels + running) // 4))
            running += hr_channels
        self.freqfusions = nn.ModuleList(fusions)
        self.align = ConvNormAct(running, channels, 1, norm="gn")
        self.classifier = build_classifier(classifier, num_classes, channels, **(classifier_options or {}))

    def decode(self, features: list[Tensor]) -> Tensor:
        """4 maps [(B, C_i, H/s, W/s) for s in 4, 8, 16, 32] -> aligned features (B, channels, H/4, W/4)."""
        if len(features) != 4:
            raise InputError(f"OffSegHead expects 4 feature maps, got {len(features)}.")
        for i, (feat, cin) in enumerate(zip(features, self.in_channels)):
            if feat.dim() != 4 or feat.shape[1] != cin:
                raise InputError(f"OffSegHead input {i} should have shape (B, {cin}, H, W), got {tuple(feat.shape)}.")
        maps = [pre(feat) for pre, feat in zip(self.pre, features)][::-1]  # coarse to fine
        running = maps[0]
        for fusion, hr in zip(self.freqfusions, maps[1:]):
            fused = fusion(hr_feat=hr, lr_feat=running)
            running = group_interleave(fused.hr, fused.lr)  # (B, C_hr + C_lr, h, w)
        return self.align(running)

    def forward(self, features: list[Tensor], return_intermediates: bool = False) -> Tensor | ClassifierOutput:
        """4 maps -> logits (B, K, H/4, W/4), or the classifier's :class:`ClassifierOutput`."""
        return self.classifier(self.decode(features), return_intermediates=return_intermediates)
