"""Mix Transformer (MiT-B0..B5), the SegFormer encoder (Xie et al., NeurIPS 2021).

Four stages; each starts with an overlapping patch embedding (strided conv + LayerNorm), then
transformer blocks whose self-attention reads keys/values from a spatially reduced copy of the
tokens (a strided conv of kernel = stride = ``sr_ratio``), and a Mix-FFN whose 3×3 depthwise conv
gives positional information (no position embeddings, so any input size works).

Module names reproduce the official MMSegmentation state-dict keys exactly
(``layers.{i}.0`` patch embed, ``layers.{i}.1.{j}`` blocks, ``layers.{i}.2`` the stage's final norm),
so official SegFormer / SegFormer-OL checkpoints load without renaming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from offseg_vis.errors import ConfigError, InputError
from offseg_vis.models.layers import DropPath, drop_path_rates

LAYER_NORM_EPS = 1e-6  # the official MiT builds every LayerNorm with eps 1e-6


@dataclass(frozen=True)
class MiTConfig:
    """Architecture of one MiT variant (four stages).

    Attributes:
        embed_dims: channels per stage.
        num_heads: attention heads per stage (head width = embed_dim / heads).
        depths: transformer blocks per stage.
        sr_ratios: spatial-reduction factor of keys/values per stage (1 = plain attention).
        patch_sizes: kernel of each stage's patch embedding (padding = kernel // 2).
        strides: stride of each stage's patch embedding (overall strides 4, 8, 16, 32).
        mlp_ratio: Mix-FFN hidden width / embed dim.
    """

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    patch_sizes: tuple[int, int, int, int] = (7, 3, 3, 3)
    strides: tuple[int, int, int, int] = (4, 2, 2, 2)
    mlp_ratio: int = 4


_WIDE = (64, 128, 320, 512)
MIT_VARIANTS: dict[str, MiTConfig] = {
    "b0": MiTConfig(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "b1": MiTConfig(embed_dims=_WIDE, depths=(2, 2, 2, 2)),
    "b2": MiTConfig(embed_dims=_WIDE, depths=(3, 4, 6, 3)),
    "b3": MiTConfig(embed_dims=_WIDE, depths=(3, 4, 18, 3)),
    "b4": MiTConfig(embed_dims=_WIDE, depths=(3, 8, 27, 3)),
    "b5": MiTConfig(embed_dims=_WIDE, depths=(3, 6, 40, 3)),
}


def tokens_to_map(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """(B, N, C) tokens, N = H*W row-major -> (B, C, H, W)."""
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, hw[0], hw[1])


def map_to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, N, C) tokens, N = H*W row-major."""
    return x.flatten(2).transpose(1, 2)


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows, then LayerNorm over channels.

    (B, C_in, H, W) -> tokens (B, N, C_out) and the new (H', W') = ceil(H/stride), ceil(W/stride).
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(in_channels, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.projection(x)  # (B, C, H', W')
        hw = (x.shape[2], x.shape[3])
        return self.norm(map_to_tokens(x)), hw  # (B, N, C)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a spatially reduced token map.

    With ``sr_ratio`` r > 1 the (H, W) map is shrunk by a conv of kernel = stride = r (then
    LayerNorm) before the key/value projection, so the cost is N·N/r² instead of N². The queries
    keep the full resolution. Children: ``attn`` (nn.MultiheadAttention), ``sr`` and ``norm``.
    """

    def __init__(self, embed_dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.sr_ratio = sr_ratio
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, bias=True, batch_first=True)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(embed_dim, embed_dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """x (B, N, C) tokens of an (H, W) map -> attended tokens (B, N, C) (no residual)."""
        kv = x
        if self.sr_ratio > 1:
            reduced = self.sr(tokens_to_map(x, hw))  # (B, C, H/r, W/r)
            kv = self.norm(map_to_tokens(reduced))  # (B, N/r², C)
        out, _ = self.attn(x, kv, kv, need_weights=False)
        return out


class MixFFN(nn.Module):
    """1×1 conv → 3×3 depthwise conv → GELU → 1×1 conv, on the token map.

    ``layers`` indices 0, 1, 4 hold the convs (2 is GELU, 3 and 5 dropouts), as in the official keys.
    """

    def __init__(self, embed_dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(embed_dim, hidden_dim, 1),
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Conv2d(hidden_dim, embed_dim, 1),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """x (B, N, C) -> (B, N, C) (no residual)."""
        return map_to_tokens(self.layers(tokens_to_map(x, hw)))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MixFFN(LN(x)); tokens (B, N, C)."""

    def __init__(self, embed_dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.attn = EfficientSelfAttention(embed_dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.ffn = MixFFN(embed_dim, embed_dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """x (B, N, C) -> (B, N, C)."""
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.ffn(self.norm2(x), hw))


def init_linear_or_layernorm(m: nn.Module) -> bool:
    """Transformer init shared by MiT and Swin: Linear trunc-normal(0.02) with zero bias, LayerNorm
    (1, 0). Returns whether ``m`` was one of them."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
        return True
    if isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
        return True
    return False


class MixVisionTransformer(nn.Module):
    """MiT encoder: images (B, 3, H, W) -> 4 maps (B, C_i, ceil(H/s), ceil(W/s)), s = 4, 8, 16, 32.

    ``layers[i]`` is ``[OverlapPatchEmbed, ModuleList of MiTBlock, LayerNorm]``.

    Args:
        config: the variant's :class:`MiTConfig`.
        in_channels: image channels.
        drop_path_rate: stochastic depth of the last block; it grows linearly from 0 over all
            blocks (the official SegFormer training config uses 0.1; off by default here).
    """

    def __init__(self, config: MiTConfig, in_channels: int = 3, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self.in_channels = in_channels
        self.out_channels = list(config.embed_dims)
        rates = drop_path_rates(drop_path_rate, sum(config.depths))
        self.layers = nn.ModuleList()
        prev, first_block = in_channels, 0
        for i, (dim, depth) in enumerate(zip(config.embed_dims, config.depths)):
            embed = OverlapPatchEmbed(prev, dim, config.patch_sizes[i], config.strides[i])
            heads, ratio = config.num_heads[i], config.sr_ratios[i]
            blocks = nn.ModuleList(
                MiTBlock(dim, heads, ratio, config.mlp_ratio, rates[first_block + j]) for j in range(depth)
            )
            self.layers.append(nn.ModuleList([embed, blocks, nn.LayerNorm(dim, eps=LAYER_NORM_EPS)]))
            prev, first_block = dim, first_block + depth
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official from-scratch init: Linear trunc-normal(0.02), LayerNorm (1, 0), conv
        normal(0, sqrt(2 / fan_out)) with zero bias."""
        for m in self.modules():
            if init_linear_or_layernorm(m):
                continue
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def min_input_size(self) -> int:
        """Smallest image side for which every reduced key/value map is at least 1 pixel."""
        side = 1
        while not self._fits(side):
            side += 1
        return side

    def _fits(self, side: int) -> bool:
        for stride, ratio in zip(self.config.strides, self.config.sr_ratios):
            side = math.ceil(side / stride)
            if side < ratio:
                return False
        return True

    def forward(self, x: Tensor) -> list[Tensor]:
        """images (B, 3, H, W) -> [(B, C_0, H/4, W/4), ..., (B, C_3, H/32, W/32)] (sizes rounded up)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"MiT expects images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        if not (self._fits(x.shape[2]) and self._fits(x.shape[3])):
            raise InputError(
                f"MiT needs images of at least {self.min_input_size()} pixels per side, got "
                f"{x.shape[2]}x{x.shape[3]}; resize or pad the image."
            )
        outs = []
        for embed, blocks, norm in self.layers:
            tokens, hw = embed(x)  # (B, N, C)
            for block in blocks:
                tokens = block(tokens, hw)
            x = tokens_to_map(norm(tokens), hw)  # (B, C, H, W)
            outs.append(x)
        return outs


def mit(variant: str = "b0", **kwargs) -> MixVisionTransformer:
    """Build MiT-``variant`` ("b0".."b5"); ``kwargs`` go to :class:`MixVisionTransformer`."""
    key = variant.lower()
    if key not in MIT_VARIANTS:
        raise ConfigError(f"Unknown MiT variant {variant!r}; choose one of {sorted(MIT_VARIANTS)}.")
    return MixVisionTransformer(MIT_VARIANTS[key], **kwargs)


__all__ = ["MIT_VARIANTS", "MiTConfig", "MixVisionTransformer", "mit"]
