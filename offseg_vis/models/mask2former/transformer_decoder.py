"""Mask2Former's masked-attention query decoder (mmdet ``Mask2FormerTransformerDecoder`` key names).

Each layer, post-norm: masked cross-attention to one feature level, then self-attention among the
queries, then an FFN: ``cross_attn``, ``norms.0``, ``self_attn``, ``norms.1``, ``ffn``, ``norms.2``.
The decoder's ``post_norm`` LayerNorm is applied before every prediction.
"""

from __future__ import annotations

from torch import Tensor, nn

from offseg_vis.models.mask2former.layers import FFN, MultiheadAttention


class MaskedAttentionDecoderLayer(nn.Module):
    """One decoder layer: queries attend to the pixels their current mask allows, then to each other."""

    def __init__(self, embed_dims: int, num_heads: int, ffn_channels: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.cross_attn = MultiheadAttention(embed_dims, num_heads)
        self.self_attn = MultiheadAttention(embed_dims, num_heads)
        self.ffn = FFN(embed_dims, ffn_channels, activation="relu")
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(3))

    def forward(
        self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor, blocked: Tensor | None
    ) -> Tensor:
        """query, query_pos (B, Q, C); memory, memory_pos (B, N, C); blocked (B·heads, Q, N) bool,
        True where a query may not look (its rows are never all True) -> (B, Q, C)."""
        query = self.norms[0](self.cross_attn(query, memory, query_pos, memory_pos, blocked))
        query = self.norms[1](self.self_attn(query, query, query_pos, query_pos))
        return self.norms[2](self.ffn(query))


class Mask2FormerTransformerDecoder(nn.Module):
    """``layers`` (a list of :class:`MaskedAttentionDecoderLayer`) and the shared ``post_norm``."""

    def __init__(self, num_layers: int, embed_dims: int, num_heads: int, ffn_channels: int) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.layers = nn.ModuleList(
            MaskedAttentionDecoderLayer(embed_dims, num_heads, ffn_channels) for _ in range(num_layers)
        )
        self.post_norm = nn.LayerNorm(embed_dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmdet's init: Xavier-normal for every matrix."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
