"""MSCAN-T/S/B, the SegNeXt encoder (Guo et al., NeurIPS 2022).

A convolutional stem (two stride-2 3×3 convs), then four stages of blocks built around
multi-scale convolutional attention (MSCA): a 5×5 depthwise conv, three branches of depthwise strip
convs (1×7/7×1, 1×11/11×1, 1×21/21×1), a 1×1 channel mix, and the result used as a multiplicative
gate on the block's input. Blocks are BatchNorm pre-norm with layer-scaled residuals; each stage
ends in a LayerNorm over channels. All convs are padded to keep the size, so any input size works.

Module names reproduce the official MMSegmentation keys (``patch_embed{i}``, ``block{i}``,
``norm{i}``, ``attn.spatial_gating_unit.conv0_1`` ...), so official SegNeXt checkpoints load as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from offseg_vis.errors import ConfigError, InputError
from offseg_vis.models.layers import DropPath, drop_path_rates

LAYER_SCALE_INIT = 1e-2
# MSCA strip-conv branches: (long side of the 1×k / k×1 kernels) for branches 0, 1, 2.
STRIP_KERNELS = (7, 11, 21)


@dataclass(frozen=True)
class MSCANConfig:
    """Architecture of one MSCAN variant (four stages).

    Attributes:
        embed_dims: channels per stage (strides 4, 8, 16, 32).
        depths: blocks per stage.
        mlp_ratios: hidden width / channels of each stage's conv MLP.
    """

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    mlp_ratios: tuple[int, int, int, int] = (8, 8, 4, 4)


MSCAN_VARIANTS: dict[str, MSCANConfig] = {
    "t": MSCANConfig(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2)),
    "s": MSCANConfig(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2)),
    "b": MSCANConfig(embed_dims=(64, 128, 320, 512), depths=(3, 3, 12, 3)),
}


class StemConv(nn.Module):
    """(B, 3, H, W) -> (B, C, ceil(H/4), ceil(W/4)): 3×3/2 conv to C/2, BN, GELU, 3×3/2 conv to C, BN.

    ``proj`` indices 0, 1, 3, 4 hold the weights (2 is GELU), as in the official keys.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, stride=2, padding=1),
            nn.BatchNorm2d(mid),
            nn.GELU(),
            nn.Conv2d(mid, out_channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class ConvPatchEmbed(nn.Module):
    """Downsampling between stages: 3×3 stride-2 conv, then BN. (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))


class MultiScaleConvAttention(nn.Module):
    """MSCA: x ⊙ conv3( d + Σ_b strip_b(d) ) with d = dw5×5(x); (B, C, H, W) -> (B, C, H, W).

    Branch b is a depthwise 1×k then k×1 conv (k = 7, 11, 21), named ``conv{b}_1`` and ``conv{b}_2``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        for branch, k in enumerate(STRIP_KERNELS):
            row = nn.Conv2d(channels, channels, (1, k), padding=(0, k // 2), groups=channels)
            col = nn.Conv2d(channels, channels, (k, 1), padding=(k // 2, 0), groups=channels)
            self.add_module(f"conv{branch}_1", row)
            self.add_module(f"conv{branch}_2", col)
        self.conv3 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        local = self.conv0(x)
        mixed = local
        for branch in range(len(STRIP_KERNELS)):
            row = getattr(self, f"conv{branch}_1")
            col = getattr(self, f"conv{branch}_2")
            mixed = mixed + col(row(local))
        gate = self.conv3(mixed)
        return gate * x


class MSCASpatialAttention(nn.Module):
    """x + proj_2(MSCA(GELU(proj_1(x)))); (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(channels, channels, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = MultiScaleConvAttention(channels)
        self.proj_2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.activation(self.proj_1(x))
        return x + self.proj_2(self.spatial_gating_unit(y))


class ConvMlp(nn.Module):
    """1×1 conv → 3×3 depthwise conv → GELU → 1×1 conv; (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class MSCABlock(nn.Module):
    """x + ls₁ ⊙ attn(BN(x)), then x + ls₂ ⊙ mlp(BN(x)); (B, C, H, W) -> (B, C, H, W).

    ``layer_scale_1`` / ``layer_scale_2`` are per-channel (C,) scales initialised to 1e-2.
    """

    def __init__(self, channels: int, mlp_ratio: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.layer_scale_1 = nn.Parameter(torch.full((channels,), LAYER_SCALE_INIT))
        self.layer_scale_2 = nn.Parameter(torch.full((channels,), LAYER_SCALE_INIT))
        self.norm1 = nn.BatchNorm2d(channels)
        self.attn = MSCASpatialAttention(channels)
        self.norm2 = nn.BatchNorm2d(channels)
        self.mlp = ConvMlp(channels, channels * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        scale_1 = self.layer_scale_1[:, None, None]  # (C, 1, 1)
        scale_2 = self.layer_scale_2[:, None, None]
        x = x + self.drop_path(scale_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(scale_2 * self.mlp(self.norm2(x)))


class MSCAN(nn.Module):
    """MSCAN encoder: images (B, 3, H, W) -> 4 maps (B, C_i, H/s, W/s), s = 4, 8, 16, 32 (rounded up).

    Stage i (1-based) is ``patch_embed{i}`` → ``block{i}`` (ModuleList of MSCABlock) → ``norm{i}``
    (LayerNorm over channels).

    Args:
        config: the variant's :class:`MSCANConfig`.
        in_channels: image channels.
        drop_path_rate: stochastic depth of the last block, growing linearly from 0 over all blocks
            (the official SegNeXt configs use 0.1; off by default here).
    """

    def __init__(self, config: MSCANConfig, in_channels: int = 3, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self.in_channels = in_channels
        self.out_channels = list(config.embed_dims)
        rates = drop_path_rates(drop_path_rate, sum(config.depths))
        prev, first_block = in_channels, 0
        for i, (dim, depth, ratio) in enumerate(zip(config.embed_dims, config.depths, config.mlp_ratios)):
            embed = StemConv(prev, dim) if i == 0 else ConvPatchEmbed(prev, dim)
            blocks = nn.ModuleList(MSCABlock(dim, ratio, rates[first_block + j]) for j in range(depth))
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dim))
            prev, first_block = dim, first_block + depth
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official from-scratch init: conv normal(0, sqrt(2 / fan_out)) with zero bias, norms (1, 0)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[tuple[nn.Module, nn.ModuleList, nn.LayerNorm]]:
        """(patch embed, blocks, norm) of each stage, in order."""
        return [
            (getattr(self, f"patch_embed{i}"), getattr(self, f"block{i}"), getattr(self, f"norm{i}"))
            for i in range(1, len(self.config.depths) + 1)
        ]

    def forward(self, x: Tensor) -> list[Tensor]:
        """images (B, 3, H, W) -> [(B, C_0, H/4, W/4), ..., (B, C_3, H/32, W/32)] (sizes rounded up)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"MSCAN expects images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        outs = []
        for embed, blocks, norm in self.stages():
            x = embed(x)  # (B, C, H, W)
            for block in blocks:
                x = block(x)
            # LayerNorm over channels: move C last and back.
            x = norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
            outs.append(x)
        return outs


def mscan(variant: str = "t", **kwargs) -> MSCAN:
    """Build MSCAN-``variant`` ("t", "s", "b"); ``kwargs`` go to :class:`MSCAN`."""
    key = variant.lower()
    if key not in MSCAN_VARIANTS:
        raise ConfigError(f"Unknown MSCAN variant {variant!r}; choose one of {sorted(MSCAN_VARIANTS)}.")
    return MSCAN(MSCAN_VARIANTS[key], **kwargs)


__all__ = ["MSCAN", "MSCAN_VARIANTS", "MSCANConfig", "mscan"]
