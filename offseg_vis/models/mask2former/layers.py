"""Small building blocks shared by the Swin backbone, the pixel decoder and the query decoder.

Attribute names follow the mmcv/mmdet modules they stand for (``layers.0.0`` in an FFN,
``attn.in_proj_weight`` in multi-head attention), so official checkpoints map onto these modules
without renaming. Stochastic depth and the conv-GN block are the shared ones of ``models.layers``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offseg_vis.models.layers import drop_path


class FFN(nn.Module):
    """Two-layer MLP with a residual connection: x + drop_path(fc2(act(fc1(x)))).

    Keys ``layers.0.0`` (fc1) and ``layers.1`` (fc2), as in mmcv's FFN.

    Args:
        embed_dims: C, input and output width.
        hidden_channels: width of the hidden layer.
        activation: "relu" or "gelu" (exact).
        drop_path_rate: stochastic-depth probability of the residual branch.
    """

    def __init__(
        self, embed_dims: int, hidden_channels: int, activation: str = "relu", drop_path_rate: float = 0.0
    ) -> None:
        super().__init__()
        act = nn.ReLU(inplace=True) if activation == "relu" else nn.GELU()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, hidden_channels), act), nn.Linear(hidden_channels, embed_dims)
        )
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor, identity: Tensor | None = None) -> Tensor:
        """x (..., C) -> (..., C); the residual is ``identity`` when given, else x."""
        identity = x if identity is None else identity
        return identity + drop_path(self.layers(x), self.drop_path_rate, self.training)


def sine_position_encoding(
    height: int,
    width: int,
    num_feats: int,
    temperature: float = 10000.0,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """DETR's normalised sine encoding of an unpadded (height, width) grid -> (1, 2·num_feats, H, W).

    Row and column indices count from 1 and are scaled to (0, 2π] (divided by the last index + 1e-6).
    Channel 2j of each half is sin(p / T^(2j/F)), channel 2j+1 is cos(p / T^(2j/F)); the first
    half encodes y, the second x.
    """
    eps, scale = 1e-6, 2 * math.pi
    ys = torch.arange(1, height + 1, device=device, dtype=torch.float32) / (height + eps) * scale  # (H,)
    xs = torch.arange(1, width + 1, device=device, dtype=torch.float32) / (width + eps) * scale  # (W,)
    idx = torch.arange(num_feats, device=device)
    freq = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor").float() / num_feats)  # (F,)
    even = idx % 2 == 0

    def encode(p: Tensor) -> Tensor:  # (L,) -> (L, F)
        angles = p[:, None] / freq
        return torch.where(even, angles.sin(), angles.cos())

    pos_y = encode(ys)[:, None, :].expand(height, width, num_feats)  # (H, W, F)
    pos_x = encode(xs)[None, :, :].expand(height, width, num_feats)  # (H, W, F)
    pos = torch.cat([pos_y, pos_x], dim=2).permute(2, 0, 1)  # (2F, H, W)
    return pos.unsqueeze(0).to(dtype)


class _InProjAttention(nn.Module):
    """Parameters of a multi-head attention in torch's packed layout (``in_proj_weight`` (3C, C),
    ``in_proj_bias`` (3C), ``out_proj``), with the arithmetic written out so masks and FLOP
    counters see every product."""

    def __init__(self, embed_dims: int, num_heads: int) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims {embed_dims} is not divisible by num_heads {num_heads}.")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dims, embed_dims))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dims))
        self.out_proj = nn.Linear(embed_dims, embed_dims)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, blocked: Tensor | None = None) -> Tensor:
        """query (B, Nq, C), key/value (B, Nk, C), blocked (B·heads, Nq, Nk) bool (True = may not
        attend) -> (B, Nq, C)."""
        b, nq, c = query.shape
        nk = key.shape[1]
        h, d = self.num_heads, c // self.num_heads
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).view(b, nq, h, d).transpose(1, 2)  # (B, h, Nq, d)
        k = F.linear(key, w_k, b_k).view(b, nk, h, d).transpose(1, 2)  # (B, h, Nk, d)
        v = F.linear(value, w_v, b_v).view(b, nk, h, d).transpose(1, 2)  # (B, h, Nk, d)
        scores = (q * d**-0.5) @ k.transpose(-2, -1)  # (B, h, Nq, Nk)
        if blocked is not None:
            scores = scores.masked_fill(blocked.view(b, h, nq, nk), float("-inf"))
        out = scores.softmax(dim=-1) @ v  # (B, h, Nq, d)
        out = out.transpose(1, 2).reshape(b, nq, c)  # (B, Nq, C)
        return self.out_proj(out)


class MultiheadAttention(nn.Module):
    """Residual multi-head attention with positional embeddings added to queries and keys (not values).

    out = query + Attn(query + query_pos, key + key_pos, value). Keys ``attn.in_proj_weight``,
    ``attn.in_proj_bias``, ``attn.out_proj.{weight,bias}`` as in mmcv's MultiheadAttention.
    """

    def __init__(self, embed_dims: int, num_heads: int) -> None:
        super().__init__()
        self.attn = _InProjAttention(embed_dims, num_heads)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        query_pos: Tensor | None = None,
        key_pos: Tensor | None = None,
        blocked: Tensor | None = None,
    ) -> Tensor:
        """query (B, Nq, C), key (B, Nk, C) (also the value), positions of the same shapes,
        blocked (B·heads, Nq, Nk) bool -> (B, Nq, C)."""
        q = query if query_pos is None else query + query_pos
        k = key if key_pos is None else key + key_pos
        return query + self.attn(q, k, key, blocked)
