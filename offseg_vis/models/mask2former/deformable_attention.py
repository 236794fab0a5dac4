"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch: ``grid_sample``, no compiled op.

Each query looks at ``num_points`` learned locations per head and per feature level, around its
reference point; the sampled values (bilinear, zero outside the map, pixel centres at
(i + 0.5) / size) are mixed by weights that are softmax-normalised over levels × points.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def multi_scale_deformable_attention(
    value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """The sampling-and-mixing core.

    Args:
        value: (B, S, heads, d) with S = Σ h_l·w_l, levels concatenated, each flattened row-major.
        spatial_shapes: [(h_l, w_l)] per level.
        sampling_locations: (B, Nq, heads, L, P, 2) as (x, y) in [0, 1] of each level's extent.
        attention_weights: (B, Nq, heads, L, P), already normalised.

    Returns:
        (B, Nq, heads·d).
    """
    b, _, heads, d = value.shape
    _, nq, _, levels, points, _ = sampling_locations.shape
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] with align_corners=False
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        v = per_level[level].permute(0, 2, 3, 1).reshape(b * heads, d, h, w)  # (B*heads, d, h, w)
        g = grids[:, :, :, level].transpose(1, 2).reshape(b * heads, nq, points, 2)  # (B*heads, Nq, P, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=3).flatten(3)  # (B*heads, d, Nq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(b * heads, 1, nq, levels * points)
    out = (stacked * weights).sum(-1)  # (B*heads, d, Nq)
    return out.view(b, heads * d, nq).transpose(1, 2)  # (B, Nq, heads*d)


def multi_scale_deformable_attention_reference(
    value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Slow explicit loop with hand-written bilinear interpolation; same contract as
    :func:`multi_scale_deformable_attention`. For tests on tiny inputs only."""
    b, _, heads, d = value.shape
    _, nq, _, levels, points, _ = sampling_locations.shape
    starts = [0]
    for h, w in spatial_shapes:
        starts.append(starts[-1] + h * w)
    out = value.new_zeros(b, nq, heads, d)
    for n in range(b):
        for q in range(nq):
            for m in range(heads):
                for lv, (h, w) in enumerate(spatial_shapes):
                    grid = value[n, starts[lv] : starts[lv + 1], m].reshape(h, w, d)
                    for p in range(points):
                        # Continuous pixel coordinates whose integer points are pixel centres.
                        x = float(sampling_locations[n, q, m, lv, p, 0]) * w - 0.5
                        y = float(sampling_locations[n, q, m, lv, p, 1]) * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        acc = value.new_zeros(d)
                        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    acc = acc + wy * wx * grid[yy, xx]
                        out[n, q, m] += attention_weights[n, q, m, lv, p] * acc
    return out.reshape(b, nq, heads * d)


class MultiScaleDeformableAttention(nn.Module):
    """Residual multi-scale deformable self-attention (mmcv key names).

    Keys: ``sampling_offsets`` Linear(C, heads·L·P·2), ``attention_weights`` Linear(C, heads·L·P),
    ``value_proj`` and ``output_proj`` Linear(C, C).
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 3, num_points: int = 4) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims {embed_dims} is not divisible by num_heads {num_heads}.")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR init: offsets start on rays at evenly spaced angles (point k at distance k+1),
        attention starts uniform, projections Xavier-uniform."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        rays = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (heads, 2)
        rays = rays / rays.abs().max(dim=-1, keepdim=True).values  # onto the unit square
        scale = torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        bias = rays.view(self.num_heads, 1, 1, 2) * scale  # (heads, 1, P, 2)
        bias = bias.expand(self.num_heads, self.num_levels, self.num_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self, query: Tensor, query_pos: Tensor, reference_points: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """Self-attention over the concatenated levels.

        Args:
            query: (B, S, C) tokens of all levels (they are also the values).
            query_pos: (B, S, C) positional + level embeddings, added to the query only.
            reference_points: (B or 1, S, L, 2) (x, y) in [0, 1] per level.
            spatial_shapes: [(h_l, w_l)].

        Returns:
            query + output (B, S, C).
        """
        b, s, c = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        q = query + query_pos
        value = self.value_proj(query).view(b, s, heads, c // heads)  # (B, S, heads, d)
        offsets = self.sampling_offsets(q).view(b, s, heads, levels, points, 2)
        weights = self.attention_weights(q).view(b, s, heads, levels * points).softmax(-1)
        weights = weights.view(b, s, heads, levels, points)
        # Offsets are in pixels of each level: divide by (w, h) to get fractions of the map.
        sizes = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / sizes[None, None, None, :, None, :]
        out = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)  # (B, S, C)
        return query + self.output_proj(out)
