"""Swin Transformer backbone (Liu et al., ICCV 2021) with mmseg's module names and semantics.

Keys: ``patch_embed.{projection,norm}``, ``stages.i.blocks.j.{norm1,attn.w_msa.*,norm2,ffn.*}``,
``stages.i.downsample.{norm,reduction}``, and one output LayerNorm per stage ``norm0..norm3``.
Patch merging concatenates each 2×2 neighbourhood channel-major (index c·4 + 2·dy + dx), the order
of mmseg's unfold-based merging, so mmseg checkpoints load as they are.

Any input size works: the patch embedding, the windows and the merging layers pad on the right and
bottom; outputs cover ceil(H / stride) × ceil(W / stride) cells.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offseg_vis.models.backbones.mit import init_linear_or_layernorm
from offseg_vis.models.layers import drop_path
from offseg_vis.models.mask2former.config import SwinConfig
from offseg_vis.models.mask2former.layers import FFN


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches -> tokens: Conv2d(3, C, p, stride p) + LayerNorm."""

    def __init__(self, embed_dims: int, patch_size: int = 4) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(3, embed_dims, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """x (B, 3, H, W) -> tokens (B, h·w, C) and (h, w) = ceil((H, W) / p)."""
        p = self.patch_size
        x = F.pad(x, (0, (-x.shape[3]) % p, 0, (-x.shape[2]) % p))
        x = self.projection(x)  # (B, C, h, w)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw  # (B, h*w, C)


def relative_position_index(window: int) -> Tensor:
    """(w², w²) index into the ((2w−1)², heads) bias table for every pair of window positions.

    Entry (i, j) = (Δrow + w − 1)·(2w − 1) + (Δcol + w − 1), with Δ = position i − position j.
    """
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # (2, w*w)
    delta = coords[:, :, None] - coords[:, None, :]  # (2, w*w, w*w)
    return (delta[0] + window - 1) * (2 * window - 1) + (delta[1] + window - 1)


class WindowMSA(nn.Module):
    """Multi-head self-attention inside one window, with a learned relative-position bias."""

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (embed_dims // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # Persistent, as in mmseg, so official checkpoints carry the same keys.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B·nW, N, C) with N = w², mask (nW, N, N) additive (0 or −100) -> (B·nW, N, C)."""
        bw, n, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).view(bw, n, 3, h, c // h).permute(2, 0, 3, 1, 4)  # (3, B*nW, h, N, d)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B*nW, h, N, N)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N*N, h)
        attn = attn + bias.view(n, n, h).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, h, n, n) + mask[None, :, None]  # (B, nW, h, N, N)
            attn = attn.view(bw, h, n, n)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c)  # (B*nW, N, C)
        return self.proj(out)


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) with H, W multiples of ``window`` -> (B·nW, window², C), windows row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_merge(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B·nW, window², C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def shifted_window_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> Tensor:
    """Additive mask (nW, w², w²) that keeps attention inside the regions a cyclic shift glued together.

    The padded (height, width) canvas is cut into 3×3 regions by the lines at −window and −shift
    from each far edge; pairs from different regions get −100, as in the Swin paper.
    """
    region = torch.zeros(1, height, width, 1, device=device)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in cuts:
        for cols in cuts:
            region[:, rows, cols, :] = label
            label += 1
    ids = window_partition(region, window).squeeze(-1)  # (nW, w*w)
    differ = ids[:, None, :] != ids[:, :, None]  # (nW, w*w, w*w)
    return differ.float() * -100.0


class ShiftWindowMSA(nn.Module):
    """(Shifted) window attention over a token map of any size (padded to whole windows)."""

    def __init__(
        self, embed_dims: int, num_heads: int, window_size: int, shift_size: int, qkv_bias: bool, drop_path_rate: float
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.drop_path_rate = drop_path_rate
        self.w_msa = WindowMSA(embed_dims, num_heads, window_size, qkv_bias)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """x (B, H·W, C) -> (B, H·W, C)."""
        b, _, c = x.shape
        h, w = hw
        win, shift = self.window_size, self.shift_size
        x = x.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, (-w) % win, 0, (-h) % win))  # (B, Hp, Wp, C)
        hp, wp = x.shape[1], x.shape[2]
        mask = None
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(hp, wp, win, shift, x.device).to(x.dtype)
        out = self.w_msa(window_partition(x, win), mask)  # (B*nW, w*w, C)
        out = window_merge(out, win, hp, wp)  # (B, Hp, Wp, C)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        out = out[:, :h, :w, :].reshape(b, h * w, c)  # (B, H*W, C)
        return drop_path(out, self.drop_path_rate, self.training)


class SwinBlock(nn.Module):
    """x + WindowAttention(LN(x)), then x + FFN(LN(x)) (GELU MLP)."""

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        window_size: int,
        shift: bool,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path_rate: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = ShiftWindowMSA(
            embed_dims, num_heads, window_size, window_size // 2 if shift else 0, qkv_bias, drop_path_rate
        )
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, int(embed_dims * mlp_ratio), activation="gelu", drop_path_rate=drop_path_rate)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """x (B, H·W, C) -> (B, H·W, C)."""
        x = x + self.attn(self.norm1(x), hw)
        return self.ffn(self.norm2(x), identity=x)


class PatchMerging(nn.Module):
    """2×2 neighbourhoods -> one token: concat (4C, channel-major) + LayerNorm + Linear(4C, 2C, no bias)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * in_channels)
        self.reduction = nn.Linear(4 * in_channels, out_channels, bias=False)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """x (B, H·W, C) -> (B, ceil(H/2)·ceil(W/2), 2C) and the new (h, w)."""
        b, _, c = x.shape
        h, w = hw
        x = x.transpose(1, 2).reshape(b, c, h, w)
        x = F.pad(x, (0, w % 2, 0, h % 2))
        h2, w2 = x.shape[2] // 2, x.shape[3] // 2
        x = x.view(b, c, h2, 2, w2, 2).permute(0, 2, 4, 1, 3, 5)  # (B, h2, w2, C, dy, dx)
        x = x.reshape(b, h2 * w2, 4 * c)  # (B, h2*w2, 4C), index c*4 + 2*dy + dx
        return self.reduction(self.norm(x)), (h2, w2)


class SwinStage(nn.Module):
    """``depth`` blocks alternating plain and shifted windows, then optional patch merging."""

    def __init__(
        self,
        embed_dims: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path_rates: list[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dims, num_heads, window_size, i % 2 == 1, mlp_ratio, qkv_bias, drop_path_rates[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(embed_dims, 2 * embed_dims) if downsample else None

    def forward(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, tuple[int, int], Tensor, tuple[int, int]]:
        """x (B, H·W, C) -> (next-stage tokens, their (h, w), this stage's output, its (H, W))."""
        for block in self.blocks:
            x = block(x, hw)
        if self.downsample is None:
            return x, hw, x, hw
        down, down_hw = self.downsample(x, hw)
        return down, down_hw, x, hw


class SwinTransformer(nn.Module):
    """Swin backbone -> 4 feature maps at strides 4, 8, 16, 32 (each LayerNorm-ed, as in mmseg).

    Attributes:
        out_channels: channels of the 4 maps (C, 2C, 4C, 8C).
        size_divisor: 32; the segmentor pads inputs to it so that every level is exact.
    """

    size_divisor = 32

    def __init__(self, config: SwinConfig | None = None) -> None:
        super().__init__()
        cfg = config or SwinConfig()
        self.config = cfg
        num_stages = len(cfg.depths)
        self.out_channels = [cfg.embed_dims * 2**i for i in range(num_stages)]
        self.patch_embed = PatchEmbed(cfg.embed_dims, cfg.patch_size)
        total = sum(cfg.depths)
        # Stochastic depth grows linearly with block index (plain Python: works on the meta device).
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        start = 0
        for i, depth in enumerate(cfg.depths):
            self.stages.append(
                SwinStage(
                    self.out_channels[i],
                    depth,
                    cfg.num_heads[i],
                    cfg.window_size,
                    cfg.mlp_ratio,
                    cfg.qkv_bias,
                    rates[start : start + depth],
                    downsample=i < num_stages - 1,
                )
            )
            start += depth
        for i, channels in enumerate(self.out_channels):
            self.add_module(f"norm{i}", nn.LayerNorm(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random init of mmseg's Swin: trunc-normal(0.02) linears and bias tables, unit LayerNorms."""
        for m in self.modules():
            if init_linear_or_layernorm(m):
                continue
            if isinstance(m, WindowMSA):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

    def forward(self, images: Tensor) -> list[Tensor]:
        """images (B, 3, H, W) -> [(B, C·2^i, ceil(H / 2^(i+2)), ceil(W / 2^(i+2))) for i in 0..3]."""
        x, hw = self.patch_embed(images)
        outs = []
        for i, stage in enumerate(self.stages):
            x, next_hw, out, out_hw = stage(x, hw)
            out = getattr(self, f"norm{i}")(out)
            outs.append(out.transpose(1, 2).reshape(out.shape[0], -1, *out_hw))  # (B, C_i, H_i, W_i)
            hw = next_hw
        return outs
