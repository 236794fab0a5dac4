"""MSDeformAttnPixelDecoder: deformable-attention encoder over strides 32/16/8 + an FPN step to stride 4.

Key names follow mmdet 3.x: ``input_convs.i.{conv,gn}``, ``encoder.layers.i.{self_attn,ffn,norms}``,
``level_encoding``, ``lateral_convs.0``, ``output_convs.0``, ``mask_feature``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offseg_vis.models.layers import ConvNormAct
from offseg_vis.models.mask2former.config import HeadConfig
from offseg_vis.models.mask2former.deformable_attention import MultiScaleDeformableAttention
from offseg_vis.models.mask2former.layers import FFN, sine_position_encoding


def _conv_gn(cin: int, cout: int, kernel: int, bias: bool, groups: int, relu: bool = False) -> ConvNormAct:
    """Conv + GroupNorm (+ ReLU), keys ``conv.*`` / ``gn.*`` like mmcv's ConvModule; torch's default
    init here, the decoder's ``reset_parameters`` sets mmdet's."""
    return ConvNormAct(
        cin, cout, kernel, norm="gn", act="relu" if relu else None, bias=bias, norm_groups=groups, init=False
    )


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: LN(x + MSDeformAttn(x)), then LN(x + FFN(x))."""

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int, ffn_channels: int) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(embed_dims, num_heads, num_levels, num_points)
        self.ffn = FFN(embed_dims, ffn_channels, activation="relu")
        self.norms = nn.ModuleList([nn.LayerNorm(embed_dims), nn.LayerNorm(embed_dims)])

    def forward(
        self, query: Tensor, query_pos: Tensor, reference_points: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """query, query_pos (B, S, C); reference_points (1, S, L, 2) -> (B, S, C)."""
        query = self.norms[0](self.self_attn(query, query_pos, reference_points, spatial_shapes))
        return self.norms[1](self.ffn(query))


class DeformableEncoder(nn.Module):
    """A stack of :class:`DeformableEncoderLayer` (key ``layers.i``)."""

    def __init__(
        self, num_layers: int, embed_dims: int, num_heads: int, num_levels: int, num_points: int, ffn_channels: int
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(embed_dims, num_heads, num_levels, num_points, ffn_channels)
            for _ in range(num_layers)
        )

    def forward(
        self, query: Tensor, query_pos: Tensor, reference_points: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """(B, S, C) -> (B, S, C)."""
        for layer in self.layers:
            query = layer(query, query_pos, reference_points, spatial_shapes)
        return query


def pixel_centre_references(
    spatial_shapes: list[tuple[int, int]], num_levels: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Reference point of every token: its own pixel centre ((j + 0.5) / w, (i + 0.5) / h), repeated for
    each level -> (1, S, L, 2)."""
    refs = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        refs.append(torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1))  # (h*w, 2)
    points = torch.cat(refs, dim=0)  # (S, 2)
    return points[None, :, None, :].expand(1, points.shape[0], num_levels, 2)


class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone maps (strides 4, 8, 16, 32) -> mask features (stride 4) and 3 maps for the query decoder.

    The three coarsest maps are projected to C (1×1 conv + GN), flattened, concatenated and refined by
    a deformable-attention encoder (sine position + learned level embeddings); the stride-4 map is
    fused FPN-style (lateral 1×1 + upsampled stride-8 output, then 3×3 conv-GN-ReLU) and projected
    by ``mask_feature`` (1×1) to the mask features.

    Args:
        in_channels: channels of the 4 backbone maps.
        cfg: the head config (width, encoder sizes, GN groups).
    """

    def __init__(self, in_channels: list[int], cfg: HeadConfig) -> None:
        super().__init__()
        c = cfg.feat_channels
        self.num_levels = cfg.num_feature_levels
        self.num_feats = c // 2
        self.temperature = cfg.pos_temperature
        # Coarsest first: input_convs[0] takes stride 32.
        self.input_convs = nn.ModuleList(
            _conv_gn(in_channels[-1 - i], c, 1, bias=True, groups=cfg.gn_groups) for i in range(self.num_levels)
        )
        self.encoder = DeformableEncoder(
            cfg.encoder_layers, c, cfg.encoder_heads, self.num_levels, cfg.encoder_points, cfg.encoder_ffn_channels
        )
        self.level_encoding = nn.Embedding(self.num_levels, c)
        num_fpn = len(in_channels) - self.num_levels
        self.lateral_convs = nn.ModuleList(
            _conv_gn(in_channels[i], c, 1, bias=False, groups=cfg.gn_groups) for i in range(num_fpn)
        )
        self.output_convs = nn.ModuleList(
            _conv_gn(c, c, 3, bias=False, groups=cfg.gn_groups, relu=True) for _ in range(num_fpn)
        )
        self.mask_feature = nn.Conv2d(c, c, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmdet's init: Xavier-uniform convs, N(0, 1) level encoding, Xavier-normal encoder matrices,
        then the deformable attention's own init."""
        for block in [*self.input_convs, *self.lateral_convs, *self.output_convs]:
            nn.init.xavier_uniform_(block.conv.weight)
            if block.conv.bias is not None:
                nn.init.zeros_(block.conv.bias)
        nn.init.xavier_uniform_(self.mask_feature.weight)
        nn.init.zeros_(self.mask_feature.bias)
        nn.init.normal_(self.level_encoding.weight)
        for p in self.encoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        for layer in self.encoder.layers:
            layer.self_attn.reset_parameters()

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """feats: 4 maps (B, C_i, H_i, W_i), strides 4..32.

        Returns:
            mask_features (B, C, H_0, W_0) and the encoder outputs [(B, C, H_3, W_3), (…H_2…), (…H_1…)],
            coarsest first (the order the query decoder cycles through).
        """
        b = feats[0].shape[0]
        tokens, positions, shapes = [], [], []
        for i in range(self.num_levels):
            x = self.input_convs[i](feats[-1 - i])  # (B, C, h, w)
            h, w = x.shape[-2:]
            pos = sine_position_encoding(h, w, self.num_feats, self.temperature, x.device, x.dtype)  # (1, C, h, w)
            pos = pos + self.level_encoding.weight[i].view(1, -1, 1, 1)
            tokens.append(x.flatten(2).transpose(1, 2))  # (B, h*w, C)
            positions.append(pos.flatten(2).transpose(1, 2).expand(b, -1, -1))  # (B, h*w, C)
            shapes.append((h, w))
        refs = pixel_centre_references(shapes, self.num_levels, feats[0].device, feats[0].dtype)
        memory = self.encoder(torch.cat(tokens, 1), torch.cat(positions, 1), refs, shapes)  # (B, S, C)
        outs = [
            m.transpose(1, 2).reshape(b, -1, h, w)  # (B, C, h, w)
            for m, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        fpn_out = outs[-1]
        for i in range(len(self.lateral_convs) - 1, -1, -1):
            lateral = self.lateral_convs[i](feats[i])
            up = F.interpolate(fpn_out, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            fpn_out = self.output_convs[i](lateral + up)
        return self.mask_feature(fpn_out), outs
