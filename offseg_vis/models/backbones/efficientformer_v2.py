"""EfficientFormerV2 (S1 / S2 / L) as the OffSeg backbone, in plain PyTorch.

Layout (reference README, "EfficientFormerV2 backbone"): a two-conv stem to stride 4, then the list
``network = [stage1, down1, stage2, down2, stage3, down3, stage4]``; the four feature maps are the
outputs of list indices 0, 2, 4, 6 (strides 4, 8, 16, 32), with no extra norm.

* FFN blocks: x + ls₂·Mlp(x); Mlp = 1×1 → BN → GELU → dw3×3 → BN → GELU → 1×1 → BN.
* The last ``vit_num`` blocks of stages 3 and 4 add attention first: x + ls₁·Attention4D(x).
  Stage-3 attention runs at half resolution (dw-conv stride 2, then bilinear ×2 back).
* down3 (stage 3 → 4) adds an Attention4DDownsample branch to its strided conv.
* Relative attention biases are learned for a 512×512 input (``attention_biases_seg``) and, for
  other sizes, the gathered (heads, N, N) bias matrix is resized bicubically as an image.
* All BatchNorms keep their running statistics frozen during training (``freeze_bn_stats``).

Module and parameter names are chosen so that ``state_dict()`` keys equal the official OffSeg
backbone's keys exactly (``official_keys/efficientformerv2_*_offseg_backbone.json``), which also
makes Snap's ImageNet checkpoint load by name (:func:`load_imagenet_weights`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offseg_vis.errors import CheckpointError, ConfigError, InputError
from offseg_vis.models.key_accounting import misfit_parts
from offseg_vis.models.layers import conv_norm_act, drop_path, upsample_bilinear_2x
from offseg_vis.models.safe_pickle import safe_load

__all__ = [
    "VARIANTS",
    "EfficientFormerV2",
    "EfficientFormerV2Config",
    "ImageNetLoadReport",
    "efficientformer_v2",
    "load_imagenet_weights",
]


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EfficientFormerV2Config:
    """One EfficientFormerV2 variant.

    Attributes:
        widths: channels of the 4 stages (strides 4, 8, 16, 32).
        depths: blocks per stage.
        vit_num: how many of the last blocks of stages 3 and 4 are attention blocks.
        mlp_ratios: per stage, the hidden/width ratio of every block's Mlp (read off the official
            key shapes: ``mlp.fc1.weight`` is (ratio·width, width, 1, 1)).
        drop_path_rate: stochastic depth of the last block (linear ramp from 0 over all blocks).
    """

    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    vit_num: int
    mlp_ratios: tuple[tuple[int, ...], ...]
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        for depth, ratios in zip(self.depths, self.mlp_ratios):
            if len(ratios) != depth:
                raise ConfigError(f"mlp_ratios {self.mlp_ratios} do not match depths {self.depths}.")


VARIANTS: dict[str, EfficientFormerV2Config] = {
    "s1": EfficientFormerV2Config(
        widths=(32, 48, 120, 224),
        depths=(3, 3, 9, 6),
        vit_num=2,
        mlp_ratios=((4,) * 3, (4,) * 3, (4, 4, 3, 3, 3, 3, 4, 4, 4), (4, 4, 3, 3, 4, 4)),
        drop_path_rate=0.0,
    ),
    "s2": EfficientFormerV2Config(
        widths=(32, 64, 144, 288),
        depths=(4, 4, 12, 8),
        vit_num=4,
        mlp_ratios=((4,) * 4, (4,) * 4, (4, 4) + (3,) * 6 + (4,) * 4, (4, 4, 3, 3, 3, 3, 4, 4)),
        drop_path_rate=0.02,
    ),
    "l": EfficientFormerV2Config(
        widths=(40, 80, 192, 384),
        depths=(5, 5, 15, 10),
        vit_num=6,
        mlp_ratios=((4,) * 5, (4,) * 5, (4,) * 4 + (3,) * 7 + (4,) * 4, (4, 4, 4) + (3,) * 4 + (4,) * 3),
        drop_path_rate=0.1,
    ),
}

# Snap's ImageNet models run at 224: their (unused here) bias placeholders have these grids.
IMAGENET_RESOLUTION = 224


# --------------------------------------------------------------------------------------------------
# Small building blocks
# --------------------------------------------------------------------------------------------------


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (with bias, as in the official model) followed by BatchNorm; keys ``0.*`` and ``1.*``."""
    return conv_norm_act(cin, cout, kernel, act=None, stride=stride, groups=groups, bias=True)


def _folding(bn: nn.BatchNorm2d) -> bool:
    """True when a conv and the BatchNorm after it may run as one folded conv: the BN uses its running
    statistics, nothing needs gradients and no graph is being recorded (an exported graph keeps the
    plain conv → BN pairs, which exporters and quantisers expect)."""
    return not bn.training and not torch.is_grad_enabled() and not _recording_graph()


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, out_scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Weight (C_out, C_in/g, k, k) and bias (C_out,) of one conv equal to ``out_scale · bn(conv(x))``
    with the BN in eval mode (s = γ/√(var + ε): W·s, (b − μ)·s + β, both times ``out_scale`` (C_out,)).

    Computed afresh on every call from the current parameters (a few thousand to a few hundred
    thousand values per conv), so loaded or edited weights are always used; nothing is cached or
    written back, and the state dict is unchanged.
    """
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # (C_out,)
    shift = bn.bias - bn.running_mean * scale
    bias = shift if conv.bias is None else conv.bias * scale + shift
    if out_scale is not None:
        scale, bias = scale * out_scale, bias * out_scale
    return conv.weight * scale.view(-1, 1, 1, 1), bias


def conv_then_bn(x: Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tensor:
    """bn(conv(x)): (B, C_in, H, W) -> (B, C_out, H', W'); one folded conv at inference (see :func:`_folding`).

    Why: EfficientFormerV2 has a BN after every conv (≈ 95 at S1); folding saves a full pass over
    each output and its allocation. Results equal the plain pair within fp32 rounding.
    """
    if not _folding(bn):
        return bn(conv(x))
    weight, bias = fold_conv_bn(conv, bn)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _conv_bn_seq(seq: nn.Sequential, x: Tensor) -> Tensor:
    """A :func:`conv_bn` Sequential (children conv, BN) applied through :func:`conv_then_bn`."""
    return conv_then_bn(x, seq[0], seq[1])


def _gelu_conv_bn(seq: nn.Sequential, x: Tensor) -> Tensor:
    """The attention ``proj`` Sequential (GELU, conv, BN) with the conv → BN pair through :func:`conv_then_bn`."""
    return conv_then_bn(F.gelu(x), seq[1], seq[2])


def relative_bias_index(query_grid: int, key_grid: int) -> Tensor:
    """Index of the relative-position bias table for every (query, key) pair.

    Queries sit on a ``query_grid``² grid, keys on a ``key_grid``² grid; query (a_r, a_c) is placed
    at (step·a_r, step·a_c) in key coordinates with step = ceil(key_grid / query_grid). The offset
    (|Δrow|, |Δcol|) is numbered in first-seen order while enumerating queries then keys in raster
    order. Returns (query_grid², key_grid²) int64.
    """
    step = -(-key_grid // query_grid)
    q = torch.arange(query_grid)
    k = torch.arange(key_grid)
    q_rows, q_cols = (q * step).repeat_interleave(query_grid), (q * step).repeat(query_grid)  # (Nq,)
    k_rows, k_cols = k.repeat_interleave(key_grid), k.repeat(key_grid)  # (Nk,)
    d_row = (q_rows[:, None] - k_rows[None, :]).abs()  # (Nq, Nk)
    d_col = (q_cols[:, None] - k_cols[None, :]).abs()
    # First-seen numbering of (d_row, d_col) pairs in raster order of (query, key).
    codes = (d_row * (key_grid + step * query_grid) + d_col).flatten()  # unique code per offset
    return _first_seen_rank(codes).view(query_grid * query_grid, key_grid * key_grid)


def _first_seen_rank(codes: Tensor) -> Tensor:
    """codes (L,) -> (L,) int64: each element's value numbered 0, 1, ... in order of first appearance."""
    _, inverse = torch.unique(codes, return_inverse=True)  # (L,) index of each element's value
    first = torch.full((int(inverse.max()) + 1,), codes.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(codes.numel()), reduce="amin")  # first position per value
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(first.numel())
    return rank[inverse]


class Mlp(nn.Module):
    """1×1 expand → BN → GELU → depthwise 3×3 → BN → GELU → 1×1 project → BN; (B, C, H, W) -> same."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        # Registration order mirrors the official state-dict order (fc1, fc2, mid, mid_norm, norm1, norm2).
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.mid = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.mid_norm = nn.BatchNorm2d(hidden)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.norm1(self.fc1(x)))
        x = F.gelu(self.mid_norm(self.mid(x)))
        return self.norm2(self.fc2(x))

    def folded(self, x: Tensor, out_scale: Tensor) -> Tensor:
        """``out_scale · forward(x)`` with every BN (and the layer scale ``out_scale`` (C, 1, 1)) folded
        into its conv and the GELUs in place: three convs and two activation passes, three
        allocations instead of nine. Only for inference (:func:`_folding`); (B, C, H, W) -> same."""
        w, b = fold_conv_bn(self.fc1, self.norm1)
        x = torch.ops.aten.gelu_(F.conv2d(x, w, b))
        w, b = fold_conv_bn(self.mid, self.mid_norm)
        x = torch.ops.aten.gelu_(F.conv2d(x, w, b, padding=self.mid.padding, groups=self.mid.groups))
        w, b = fold_conv_bn(self.fc2, self.norm2, out_scale.view(-1))
        return F.conv2d(x, w, b)


def _recording_graph() -> bool:
    """True while torch.jit, torch.compile, torch.export or the ONNX exporter records a graph (a
    cached tensor would become a constant of it)."""
    return (
        torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.onnx.is_in_onnx_export()
    )


class _RelativeBias(nn.Module):
    """Shared head layout and bias logic of both attention modules.

    Sets ``heads``, ``key_dim``, ``value_dim`` (= attn_ratio·key_dim per head) and ``scale`` and
    registers the bias tables: ``attention_biases_seg`` (heads, T) is the learned table for the 512×512 grid and
    ``attention_bias_idxs_seg`` (Nq₀, Nk₀) its index; ``attention_biases`` / ``attention_bias_idxs``
    are placeholders that receive Snap's ImageNet tables (never read in forward).
    """

    def __init__(
        self,
        heads: int,
        key_dim: int,
        attn_ratio: int,
        seg_q_grid: int,
        seg_k_grid: int,
        imagenet_q_grid: int,
        imagenet_k_grid: int,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.key_dim = key_dim
        self.value_dim = attn_ratio * key_dim
        self.scale = key_dim**-0.5
        seg_idx = relative_bias_index(seg_q_grid, seg_k_grid)
        imagenet_q, imagenet_k = imagenet_q_grid**2, imagenet_k_grid**2
        # Registration order reproduces the official key order: parameter first, then the buffers.
        # The seg table starts at zero (it is not initialised from ImageNet).
        self.attention_biases_seg = nn.Parameter(torch.zeros(heads, int(seg_idx.max()) + 1))
        # Placeholders constructed like the official ones (zeros / ones); Snap's checkpoint fills them.
        self.register_buffer("attention_biases", torch.zeros(heads, imagenet_k))
        self.register_buffer("attention_bias_idxs", torch.ones(imagenet_q, imagenet_k, dtype=torch.long))
        self.register_buffer("attention_bias_idxs_seg", seg_idx)

    def _add_key_value(self, dim: int, local_stride: int) -> None:
        """Register ``k``, ``v`` and the depthwise 3×3 ``v_local`` (stride ``local_stride``), in that order
        (after ``q``: the official key order)."""
        inner_v = self.value_dim * self.heads
        self.k = conv_bn(dim, self.key_dim * self.heads)
        self.v = conv_bn(dim, inner_v)
        self.v_local = conv_bn(inner_v, inner_v, kernel=3, stride=local_stride, groups=inner_v)

    def _keys_values(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, C, H, W) -> keys (B, heads, kd, N), values (B, heads, N, vd) and the local value branch
        (B, heads·vd, h', w'), N = H·W."""
        b, _, h, w = x.shape
        n = h * w
        k = _conv_bn_seq(self.k, x).reshape(b, self.heads, self.key_dim, n)
        v_map = _conv_bn_seq(self.v, x)  # (B, heads·vd, H, W)
        v = v_map.reshape(b, self.heads, self.value_dim, n).transpose(2, 3)
        return k, v, _conv_bn_seq(self.v_local, v_map)

    def _scores(self, q: Tensor, k: Tensor) -> Tensor:
        """Attention logits (q·k)·scale + relative bias: q (B, heads, Nq, kd), k (B, heads, kd, Nk) ->
        (B, heads, Nq, Nk).

        At inference one ``baddbmm`` (scale and bias applied inside the product) instead of a product,
        a multiply and an add over the (B, heads, Nq, Nk) map (2·10⁶ values in stage 4's downsampling
        attention at 512²); equal within fp32 rounding.
        """
        b, heads, nq, _ = q.shape
        nk = k.shape[-1]
        bias = self.relative_bias(nq, nk)  # (heads, Nq, Nk)
        if torch.is_grad_enabled() or _recording_graph():
            return (q @ k) * self.scale + bias
        bias = bias.expand(b, heads, nq, nk).reshape(b * heads, nq, nk)  # a view at batch 1
        scores = torch.baddbmm(bias, q.reshape(b * heads, nq, -1), k.reshape(b * heads, -1, nk), alpha=self.scale)
        return scores.view(b, heads, nq, nk)

    def relative_bias(self, num_queries: int, num_keys: int) -> Tensor:
        """The (heads, num_queries, num_keys) attention bias for the current input size.

        The gathered (heads, Nq₀, Nk₀) matrix is resized as a 2-D image (bicubic, align_corners=False)
        when the token counts differ from the 512×512 ones; at 512×512 it is used as is.

        Without autograd the result is cached, keyed on the size and on an exact copy of the learned
        table and index (compared in full on every call, a few thousand values), so weights loaded
        or edited in any way, even through ``.data``, are never served stale. Why: the gather over
        the (Nq, Nk) index (2·10⁵-8·10⁵ entries at 512², five attention blocks in S1) cost ≈ 6 %
        of an OffSeg-T forward on one CPU thread; the cached copy costs nothing.
        """
        table, index = self.attention_biases_seg, self.attention_bias_idxs_seg
        cacheable = not (torch.is_grad_enabled() and table.requires_grad) and not _recording_graph()
        if cacheable:
            cached = getattr(self, "_bias_cache", None)
            if (
                cached is not None
                and cached[0] == (num_queries, num_keys, torch.is_inference_mode_enabled())
                and cached[1].device == table.device
                and cached[1].dtype == table.dtype
                and torch.equal(cached[1], table)
                and torch.equal(cached[2], index)
            ):
                return cached[3]
        bias = table[:, index]  # (heads, Nq0, Nk0)
        if bias.shape[-2:] != (num_queries, num_keys):
            bias = F.interpolate(
                bias.unsqueeze(0), size=(num_queries, num_keys), mode="bicubic", align_corners=False
            ).squeeze(0)
        if cacheable:
            key = (num_queries, num_keys, torch.is_inference_mode_enabled())
            self._bias_cache = (key, table.detach().clone(), index.clone(), bias)
        return bias


class Attention4D(_RelativeBias):
    """Multi-head self-attention on a feature map with talking heads and a local value branch.

    (B, C, H, W) -> (B, C, H, W). With ``stride`` 2 (stage 3) attention runs on the map downsampled
    by a depthwise stride-2 conv and the result is upsampled ×2 (bilinear) before ``proj``.

    Args:
        dim: channels C.
        grid: token grid side at 512×512 after the optional stride (bias table size).
        imagenet_grid: the same at Snap's 224×224 (placeholder buffer size).
        key_dim, heads, attn_ratio: 32, 8, 4 (value dim = attn_ratio·key_dim per head).
        stride: 1 or 2.
    """

    def __init__(
        self,
        dim: int,
        grid: int,
        imagenet_grid: int,
        key_dim: int = 32,
        heads: int = 8,
        attn_ratio: int = 4,
        stride: int = 1,
    ) -> None:
        super().__init__(heads, key_dim, attn_ratio, grid, grid, imagenet_grid, imagenet_grid)
        self.stride = stride
        inner_v = self.value_dim * heads
        if stride > 1:
            self.stride_conv = conv_bn(dim, dim, kernel=3, stride=stride, groups=dim)
        self.q = conv_bn(dim, key_dim * heads)
        self._add_key_value(dim, local_stride=1)
        self.talking_head1 = nn.Conv2d(heads, heads, 1)
        self.talking_head2 = nn.Conv2d(heads, heads, 1)
        # Index 0 is the (parameter-free) GELU, so the keys are proj.1.* and proj.2.*.
        self.proj = nn.Sequential(nn.GELU(), nn.Conv2d(inner_v, dim, 1), nn.BatchNorm2d(dim))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, C, H, W); with stride 2, H and W must be even."""
        if self.stride > 1:
            x = _conv_bn_seq(self.stride_conv, x)
        b, _, h, w = x.shape
        n = h * w
        q = _conv_bn_seq(self.q, x).reshape(b, self.heads, self.key_dim, n).transpose(2, 3)  # (B, heads, N, kd)
        k, v, v_local = self._keys_values(x)  # (B, heads, kd, N), (B, heads, N, vd), (B, heads·vd, h, w)

        attn = self._scores(q, k)  # (B, heads, N, N)
        attn = self.talking_head1(attn).softmax(dim=-1)  # heads mix before the softmax over keys
        attn = self.talking_head2(attn)  # ... and after it
        out = (attn @ v).transpose(2, 3).reshape(b, self.heads * self.value_dim, h, w) + v_local
        if self.stride > 1:
            if self.stride == 2 and not _recording_graph():
                out = upsample_bilinear_2x(out)  # torch's kernel copies to channels-last and back here
            else:
                out = F.interpolate(out, scale_factor=self.stride, mode="bilinear", align_corners=False)
        return _gelu_conv_bn(self.proj, out)


class LGQuery(nn.Module):
    """Local-global query of the downsampling attention: (dw3×3 s2 conv + s2 subsample) → 1×1 conv + BN.

    (B, C, H, W) -> (B, out_dim, ceil(H/2), ceil(W/2)).
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.local = conv_norm_act(dim, dim, 3, norm=None, act=None, stride=2, groups=dim, bias=True)
        self.proj = conv_bn(dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return _conv_bn_seq(self.proj, self.local(x) + x[:, :, ::2, ::2])


class Attention4DDownsample(_RelativeBias):
    """Attention whose queries live on the stride-2 grid: (B, C, H, W) -> (B, out_dim, H/2, W/2).

    key_dim 16, 8 heads, value dim 64 per head, no talking heads. The bias index relates each query
    (a_r, a_c) placed at (2a_r, 2a_c) to every key position.

    Args:
        dim, out_dim: input and output channels.
        grid: key grid side at 512×512 (stride 16: 32); the query grid is half of it.
        imagenet_grid: the key grid side at 224×224 (14).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        grid: int,
        imagenet_grid: int,
        key_dim: int = 16,
        heads: int = 8,
        attn_ratio: int = 4,
    ) -> None:
        half, imagenet_half = -(-grid // 2), -(-imagenet_grid // 2)
        super().__init__(heads, key_dim, attn_ratio, half, grid, imagenet_half, imagenet_grid)
        inner_v = self.value_dim * heads
        self.q = LGQuery(dim, key_dim * heads)
        self._add_key_value(dim, local_stride=2)
        self.proj = nn.Sequential(nn.GELU(), nn.Conv2d(inner_v, out_dim, 1), nn.BatchNorm2d(out_dim))

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        q_map = self.q(x)  # (B, heads·kd, h2, w2)
        h2, w2 = q_map.shape[-2:]
        n2 = h2 * w2
        q = q_map.reshape(b, self.heads, self.key_dim, n2).transpose(2, 3)  # (B, heads, N2, kd)
        k, v, v_local = self._keys_values(x)  # (B, heads, kd, N), (B, heads, N, vd), (B, heads·vd, h2, w2)

        attn = self._scores(q, k).softmax(dim=-1)  # (B, heads, N2, N)
        out = (attn @ v).transpose(2, 3).reshape(b, self.heads * self.value_dim, h2, w2) + v_local
        return _gelu_conv_bn(self.proj, out)


class FFNBlock(nn.Module):
    """x + ls₂·Mlp(x) (layer scale ls₂ of shape (C, 1, 1)); (B, C, H, W) -> same."""

    def __init__(self, dim: int, mlp_ratio: int, drop_path_rate: float = 0.0, layer_scale: float = 1e-5):
        super().__init__()
        self.layer_scale_2 = nn.Parameter(torch.full((dim, 1, 1), layer_scale))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor) -> Tensor:
        if _folding(self.mlp.norm2) and not self.training:
            return self.mlp.folded(x, self.layer_scale_2).add_(x)  # x + ls₂·Mlp(x), one pass
        return x + drop_path(self.layer_scale_2 * self.mlp(x), self.drop_path_rate, self.training)


class AttnFFNBlock(nn.Module):
    """x + ls₁·Attention4D(x), then x + ls₂·Mlp(x); (B, C, H, W) -> same."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: int,
        grid: int,
        imagenet_grid: int,
        stride: int,
        drop_path_rate: float = 0.0,
        layer_scale: float = 1e-5,
    ) -> None:
        super().__init__()
        self.layer_scale_1 = nn.Parameter(torch.full((dim, 1, 1), layer_scale))
        self.layer_scale_2 = nn.Parameter(torch.full((dim, 1, 1), layer_scale))
        self.token_mixer = Attention4D(dim, grid, imagenet_grid, stride=stride)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor) -> Tensor:
        x = x + drop_path(self.layer_scale_1 * self.token_mixer(x), self.drop_path_rate, self.training)
        if _folding(self.mlp.norm2) and not self.training:
            return self.mlp.folded(x, self.layer_scale_2).add_(x)  # x + ls₂·Mlp(x), one pass
        return x + drop_path(self.layer_scale_2 * self.mlp(x), self.drop_path_rate, self.training)


class Downsample(nn.Module):
    """Stage transition: 3×3 stride-2 conv + BN (keys ``proj``/``norm``); (B, C, H, W) -> (B, C', H/2, W/2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return conv_then_bn(x, self.proj, self.norm)


class AttnDownsample(nn.Module):
    """Stage 3 → 4 transition: Attention4DDownsample(x) + BN(conv3×3 s2(x)) (keys ``attn``, ``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, grid: int, imagenet_grid: int) -> None:
        super().__init__()
        self.attn = Attention4DDownsample(cin, cout, grid, imagenet_grid)
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x) + conv_then_bn(x, self.conv, self.bn)


# --------------------------------------------------------------------------------------------------
# The backbone
# --------------------------------------------------------------------------------------------------


class EfficientFormerV2(nn.Module):
    """EfficientFormerV2 feature extractor: images (B, 3, H, W) -> 4 maps at strides 4, 8, 16, 32.

    H and W must be multiples of 32 (``size_divisor``; the Segmentor pads for us): stage-3 attention
    halves the stride-16 map and doubles it back.

    Args:
        config: widths, depths, vit_num, per-block mlp ratios, drop-path rate.
        resolution: the training input side the attention-bias tables are sized for (512).
        freeze_bn_stats: keep every BatchNorm in eval mode during training (running statistics
            frozen, affine parameters still learn), as the official backbone does.
        layer_scale_init: initial value of the residual layer scales.
    """

    size_divisor = 32

    def __init__(
        self,
        config: EfficientFormerV2Config,
        resolution: int = 512,
        freeze_bn_stats: bool = True,
        layer_scale_init: float = 1e-5,
    ) -> None:
        super().__init__()
        if resolution % 32:
            raise ConfigError(f"resolution must be a multiple of 32, got {resolution}.")
        self.config = config
        self.freeze_bn_stats = freeze_bn_stats
        widths = config.widths
        self.out_channels = list(widths)
        self.patch_embed = nn.Sequential(
            nn.Conv2d(3, widths[0] // 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(widths[0] // 2),
            nn.GELU(),
            nn.Conv2d(widths[0] // 2, widths[0], 3, stride=2, padding=1),
            nn.BatchNorm2d(widths[0]),
            nn.GELU(),
        )
        total_blocks = sum(config.depths)
        rates = [config.drop_path_rate * i / max(total_blocks - 1, 1) for i in range(total_blocks)]
        layers: list[nn.Module] = []
        block_index = 0
        for stage, (dim, depth) in enumerate(zip(widths, config.depths)):
            blocks = []
            for i in range(depth):
                ratio = config.mlp_ratios[stage][i]
                rate = rates[block_index]
                block_index += 1
                if stage >= 2 and i >= depth - config.vit_num:
                    # Stage 3 (stride 16) attends at stride 32; stage 4 at its own stride 32.
                    stride = 2 if stage == 2 else 1
                    blocks.append(
                        AttnFFNBlock(
                            dim,
                            ratio,
                            grid=resolution // 32,
                            imagenet_grid=IMAGENET_RESOLUTION // 32,
                            stride=stride,
                            drop_path_rate=rate,
                            layer_scale=layer_scale_init,
                        )
                    )
                else:
                    blocks.append(FFNBlock(dim, ratio, drop_path_rate=rate, layer_scale=layer_scale_init))
            layers.append(nn.Sequential(*blocks))
            if stage == 2:
                layers.append(AttnDownsample(dim, widths[3], resolution // 16, IMAGENET_RESOLUTION // 16))
            elif stage < 2:
                layers.append(Downsample(dim, widths[stage + 1]))
        self.network = nn.ModuleList(layers)
        self.out_indices = (0, 2, 4, 6)

    def train(self, mode: bool = True) -> EfficientFormerV2:
        """Switch mode; with ``freeze_bn_stats`` every BatchNorm stays in eval mode."""
        super().train(mode)
        if mode and self.freeze_bn_stats:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """Images (B, 3, H, W), H and W multiples of 32 -> [(B, C_i, H/s, W/s) for s in 4, 8, 16, 32]."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputError(f"EfficientFormerV2 expects images of shape (B, 3, H, W), got {tuple(x.shape)}.")
        h, w = x.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise InputError(
                f"EfficientFormerV2 needs height and width that are multiples of {self.size_divisor}, got "
                f"{h}x{w}; pad the images (the Segmentor does this for you)."
            )
        # Inference runs the convolution-only part (stem, stages 1-2 and their downsamplings) in
        # channels-last layout, where the depthwise 3×3 and 1×1 convs are faster on CPU (≈ 13 % of
        # the backbone at 512², one thread); attention stages and the returned maps are contiguous.
        conv_only = self._first_attention_layer() if _folding(self.patch_embed[1]) else 0
        if conv_only:
            x = x.contiguous(memory_format=torch.channels_last)
        stem = self.patch_embed
        x = F.gelu(conv_then_bn(F.gelu(conv_then_bn(x, stem[0], stem[1])), stem[3], stem[4]))
        outputs = []
        for i, layer in enumerate(self.network):
            if i == conv_only:
                x = x.contiguous()  # a no-op when the layout is already the standard one
            x = layer(x)
            if i in self.out_indices:
                outputs.append(x.contiguous())
        return outputs

    def _first_attention_layer(self) -> int:
        """Index in ``network`` of the first layer holding an attention block (stage 3)."""
        for i, layer in enumerate(self.network):
            if any(isinstance(m, (Attention4D, Attention4DDownsample)) for m in layer.modules()):
                return i
        return len(self.network)


def efficientformer_v2(variant: str = "s1", **kwargs) -> EfficientFormerV2:
    """Build EfficientFormerV2 "s1", "s2" or "l" (OffSeg-T/B/L backbones); kwargs go to the class."""
    key = variant.lower()
    if key not in VARIANTS:
        raise ConfigError(f"Unknown EfficientFormerV2 variant {variant!r}; choose one of {sorted(VARIANTS)}.")
    return EfficientFormerV2(VARIANTS[key], **kwargs)


# --------------------------------------------------------------------------------------------------
# Snap's ImageNet checkpoint
# --------------------------------------------------------------------------------------------------

# Classifier-only keys of Snap's ImageNet model (final norm, head, distillation head).
IMAGENET_IGNORED_PREFIXES = ("norm.", "head.", "dist_head.")
# Keys of ours that the ImageNet checkpoint cannot provide: the segmentation bias tables.
SEG_ONLY_SUFFIXES = ("attention_biases_seg", "attention_bias_idxs_seg")


@dataclass
class ImageNetLoadReport:
    """What :func:`load_imagenet_weights` did.

    Attributes:
        loaded: model keys copied from the checkpoint.
        ignored: checkpoint keys that belong to the ImageNet classifier only.
        kept: model keys left at their initial value (the segmentation bias tables).
    """

    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _read_checkpoint(source: str | os.PathLike | Mapping) -> Mapping[str, Tensor]:
    if isinstance(source, Mapping):
        state = source
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(
                f"EfficientFormerV2 ImageNet checkpoint {path} does not exist; download Snap's "
                "eformer_{s1,s2,l}_450.pth and pass its path."
            )
        # weights-only first; extra Python objects are read by the restricted unpickler (no code runs)
        state = safe_load(path)
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    elif isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(
            "The EfficientFormerV2 ImageNet checkpoint must be a state dict or hold one under 'model'; "
            "this one does not."
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from a DDP wrapper
    return state


def load_imagenet_weights(model: EfficientFormerV2, source: str | os.PathLike | Mapping) -> ImageNetLoadReport:
    """Load Snap's ImageNet checkpoint (``eformer_{s1,s2,l}_450.pth``) into the backbone.

    Mapping (reference README): the checkpoint's ``model`` entry holds keys named exactly like ours;
    ``norm.*``, ``head.*`` and ``dist_head.*`` (classifier only) are ignored; every other key is
    copied by name (the ImageNet attention-bias tables land in the unused placeholder buffers);
    ``attention_biases_seg`` / ``attention_bias_idxs_seg`` keep their initial values. Accounting
    is strict: an unknown key, a shape mismatch or a missing key raises CheckpointError.

    Args:
        model: an :class:`EfficientFormerV2` of the checkpoint's variant.
        source: path of the ``.pth`` file, or an already loaded state dict (or {"model": ...}).

    Returns:
        an :class:`ImageNetLoadReport`.
    """
    state = _read_checkpoint(source)
    own = model.state_dict()
    report = ImageNetLoadReport()
    to_load = {}
    for key, value in state.items():
        if key.startswith(IMAGENET_IGNORED_PREFIXES):
            report.ignored.append(key)
        else:
            to_load[key] = value
    parts = misfit_parts(to_load, own, may_be_missing=lambda key: key.endswith(SEG_ONLY_SUFFIXES))
    if parts:
        widths = "x".join(str(c) for c in model.out_channels)
        raise CheckpointError(
            f"The checkpoint does not fit this EfficientFormerV2 (widths {widths}): {'; '.join(parts)}. "
            "Use the ImageNet checkpoint of the same variant (s1, s2 or l)."
        )
    with torch.no_grad():
        for key, value in to_load.items():
            own[key].copy_(value.to(own[key].dtype))
    report.loaded = sorted(to_load)
    report.kept = [k for k in own if k not in to_load]
    return report
