"""Mask2FormerHead: pixel decoder + masked-attention query decoder + class / mask predictions.

Key names follow mmdet 3.x (as wrapped by mmseg): ``pixel_decoder.*``, ``transformer_decoder.*``,
``query_embed``, ``query_feat``, ``level_embed``, ``cls_embed``, ``mask_embed.{0,2,4}``, and, for
Mask2Former-OL, ``offset_learning.{cls_offset_proj,feat_offset_proj}``. mmdet's
``decoder_input_projs`` are identities at this width (feature width == decoder width) and hold no keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from offseg_vis.errors import ConfigError
from offseg_vis.models.mask2former.config import HeadConfig
from offseg_vis.models.mask2former.layers import sine_position_encoding
from offseg_vis.models.mask2former.offset_learning_mask import DotProductMask, OffsetLearningMask
from offseg_vis.models.mask2former.pixel_decoder import MSDeformAttnPixelDecoder
from offseg_vis.models.mask2former.transformer_decoder import Mask2FormerTransformerDecoder
from offseg_vis.models.offset_learning import CLASSIFIERS, ClassifierOutput


@dataclass
class MaskPredictions:
    """Everything the head predicts, for every prediction of the decoder (deep supervision).

    Attributes:
        class_logits: L+1 tensors (B, Q, K+1) (the last class is "no object"): the query-only
            prediction, then one after each decoder layer.
        mask_logits: L+1 tensors (B, Q, h, w) at the mask-feature stride (4).
        mask_features: E before any offset (B, C, h, w).
        mask_embed: W of the last prediction, the queries' mask embeddings (B, Q, C).
        last_mask_output: the mask module's intermediates for the last prediction (only when asked):
            a :class:`ClassifierOutput` over the Q queries (see ``OffsetLearningMask.forward``).
    """

    class_logits: list[Tensor]
    mask_logits: list[Tensor]
    mask_features: Tensor
    mask_embed: Tensor
    last_mask_output: ClassifierOutput | None = None


class Mask2FormerHead(nn.Module):
    """Mask2Former head with a choice of mask predictor.

    Args:
        in_channels: channels of the 4 backbone maps (strides 4, 8, 16, 32).
        num_classes: K (the class head has K + 1 outputs).
        classifier: "offset" (Mask2Former-OL: one shared :class:`OffsetLearningMask`) or "linear"
            (plain Mask2Former: mask = W·Eᵀ).
        cfg: sizes (:class:`HeadConfig`).
        classifier_options: ``class_offsets`` / ``feature_offsets`` for the offset module.
    """

    output_stride = 4

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        classifier: str = "offset",
        cfg: HeadConfig | None = None,
        classifier_options: dict | None = None,
    ) -> None:
        super().__init__()
        cfg = cfg or HeadConfig()
        if classifier not in CLASSIFIERS:
            raise ConfigError(f"Unknown classifier {classifier!r}; choose one of {CLASSIFIERS}.")
        options = dict(classifier_options or {})
        unknown = set(options) - {"class_offsets", "feature_offsets"}
        if unknown or (options and classifier != "offset"):
            raise ConfigError(
                f"Mask2Former accepts only class_offsets / feature_offsets, and only with classifier='offset'; "
                f"got {sorted(options)} for classifier={classifier!r}."
            )
        c = cfg.feat_channels
        self.cfg = cfg
        self.num_classes = num_classes
        self.num_queries = cfg.num_queries
        self.num_levels = cfg.num_feature_levels
        self.classifier_name = classifier
        self.pixel_decoder = MSDeformAttnPixelDecoder(in_channels, cfg)
        self.transformer_decoder = Mask2FormerTransformerDecoder(
            cfg.decoder_layers, c, cfg.decoder_heads, cfg.decoder_ffn_channels
        )
        self.query_embed = nn.Embedding(cfg.num_queries, c)  # positional part of each query
        self.query_feat = nn.Embedding(cfg.num_queries, c)  # initial content of each query
        self.level_embed = nn.Embedding(self.num_levels, c)
        self.cls_embed = nn.Linear(c, num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, c)
        )
        if classifier == "offset":
            self.offset_learning = OffsetLearningMask(c, **options)
        else:
            self.offset_learning = None
            self.dot_product = DotProductMask()

    @property
    def classifier(self) -> nn.Module:
        """The mask predictor: the shared :class:`OffsetLearningMask`, or :class:`DotProductMask`."""
        return self.offset_learning if self.offset_learning is not None else self.dot_product

    def _predict(
        self, query: Tensor, mask_features: Tensor, attn_size: tuple[int, int] | None, want_intermediates: bool
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor, ClassifierOutput | None]:
        """One prediction from the current queries (B, Q, C).

        Returns class logits (B, Q, K+1), mask logits (B, Q, h, w), the next layer's attention block
        mask (B·heads, Q, h'·w') (True = masked; None when ``attn_size`` is None), the mask embedding
        (B, Q, C) and, when asked, the mask module's intermediates.
        """
        out = self.transformer_decoder.post_norm(query)
        class_logits = self.cls_embed(out)
        mask_embed = self.mask_embed(out)
        result = self.classifier(mask_embed, mask_features, return_intermediates=want_intermediates)
        masks = result.logits if want_intermediates else result
        blocked = None
        if attn_size is not None:
            # The (aligned) masks decide where each query may look in the next layer.
            small = F.interpolate(masks, size=attn_size, mode="bilinear", align_corners=False)
            b, q = small.shape[:2]
            heads = self.transformer_decoder.num_heads
            blocked = (small.sigmoid() < 0.5).flatten(2)  # (B, Q, h'*w')
            blocked = blocked.unsqueeze(1).expand(b, heads, q, blocked.shape[-1]).reshape(b * heads, q, -1)
            blocked = blocked.detach()
        return class_logits, masks, blocked, mask_embed, (result if want_intermediates else None)

    def forward(self, feats: list[Tensor], return_intermediates: bool = False) -> MaskPredictions:
        """feats: 4 backbone maps (B, C_i, H/2^(i+2), W/2^(i+2)) -> :class:`MaskPredictions`."""
        mask_features, memories = self.pixel_decoder(feats)
        b = mask_features.shape[0]
        memory_tokens, memory_pos, sizes = [], [], []
        for i, m in enumerate(memories):
            h, w = m.shape[-2:]
            memory_tokens.append(m.flatten(2).transpose(1, 2) + self.level_embed.weight[i])  # (B, h*w, C)
            pos = sine_position_encoding(h, w, m.shape[1] // 2, self.cfg.pos_temperature, m.device, m.dtype)
            memory_pos.append(pos.flatten(2).transpose(1, 2).expand(b, -1, -1))  # (B, h*w, C)
            sizes.append((h, w))
        # Copies, not expanded views: a no-grad view of a parameter confuses autograd-based tools
        # (FlopCounterMode's module tracker).
        query = self.query_feat.weight.unsqueeze(0).repeat(b, 1, 1)  # (B, Q, C)
        query_pos = self.query_embed.weight.unsqueeze(0).repeat(b, 1, 1)  # (B, Q, C)
        layers = self.transformer_decoder.layers
        last = len(layers) == 0
        cls, masks, blocked, embed, inter = self._predict(
            query, mask_features, None if last else sizes[0], return_intermediates and last
        )
        class_logits, mask_logits = [cls], [masks]
        for i, layer in enumerate(layers):
            level = i % self.num_levels
            # A query whose mask is empty at this level would see nothing: let it see everything.
            blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
            query = layer(query, query_pos, memory_tokens[level], memory_pos[level], blocked)
            last = i == len(layers) - 1
            cls, masks, blocked, embed, inter = self._predict(
                query,
                mask_features,
                None if last else sizes[(i + 1) % self.num_levels],
                return_intermediates and last,
            )
            class_logits.append(cls)
            mask_logits.append(masks)
        return MaskPredictions(class_logits, mask_logits, mask_features, embed, inter)
