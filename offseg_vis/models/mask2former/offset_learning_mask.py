"""Offset Learning for mask classification (spec §1.5: ``Offset_Learning_Mask``) and its plain twin.

Mask2Former predicts query masks as M = W·Eᵀ with W (B, Q, C) the queries' mask embeddings and
E (B, N, C) the stride-4 mask features. Offset Learning exchanges offsets between the two first:

    A  = E·Wᵀ                              (B, N, Q)   coupled logits, no scaling
    ΔW = P_cls( softmax_N(A)ᵀ · E )        (B, Q, C)   W' = W + ΔW
    ΔE = P_feat( softmax_Q(A) · W )        (B, N, C)   E' = E + ΔE
    M  = W'·E'ᵀ                            (B, Q, N)   no LayerNorm

Unlike the per-pixel module there is no learned class representation (W comes from the queries) and no
LayerNorm on the output; the parameters are the two bias-free C×C projections (2C²). One instance is
shared by all predictions of the decoder, and every call starts again from the original E.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from offseg_vis.models.offset_learning import (
    ClassifierOutput,
    _autocast_device,
    offset_classifier_output,
    plain_classifier_output,
)


def _check_inputs(mask_embed: Tensor, mask_features: Tensor) -> None:
    if mask_embed.dim() != 3 or mask_features.dim() != 4 or mask_embed.shape[-1] != mask_features.shape[1]:
        raise ValueError(
            "Mask prediction expects query embeddings (B, Q, C) and mask features (B, C, H, W) with the same C, "
            f"got {tuple(mask_embed.shape)} and {tuple(mask_features.shape)}."
        )


class OffsetLearningMask(nn.Module):
    """Offset Learning between query mask embeddings and mask features.

    Keys ``cls_offset_proj.weight`` and ``feat_offset_proj.weight`` (C, C), as in the per-pixel module.

    Args:
        embed_dims: C.
        class_offsets: learn ΔW (False: ΔW = 0, the "FO only" ablation).
        feature_offsets: learn ΔE (False: ΔE = 0, "CO only").
        init_std: trunc-normal std of both projections.
    """

    def __init__(
        self, embed_dims: int, class_offsets: bool = True, feature_offsets: bool = True, init_std: float = 0.02
    ) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.cls_offset_proj = nn.Linear(embed_dims, embed_dims, bias=False) if class_offsets else None
        self.feat_offset_proj = nn.Linear(embed_dims, embed_dims, bias=False) if feature_offsets else None
        for proj in (self.cls_offset_proj, self.feat_offset_proj):
            if proj is not None:
                nn.init.trunc_normal_(proj.weight, std=init_std)

    def forward(
        self, mask_embed: Tensor, mask_features: Tensor, return_intermediates: bool = False
    ) -> Tensor | ClassifierOutput:
        """mask_embed W (B, Q, C), mask_features (B, C, H, W) -> aligned mask logits (B, Q, H, W).

        With ``return_intermediates`` a :class:`ClassifierOutput` whose class axis is the Q queries:
        logits (B, Q, H, W); features E, feature_offset, refined_features (B, N, C); class_embed W,
        class_prototypes, class_offset, refined_class_embed (B, Q, C); coupled_logits A =
        logits_without_offsets (B, N, Q); class_attention, position_attention (B, N, Q);
        logits_before_norm = W'·E'ᵀ transposed (B, N, Q) (there is no norm).
        """
        _check_inputs(mask_embed, mask_features)
        device = _autocast_device(mask_features)
        if device is not None:  # float32 under autocast, as OffsetLearning (attention ~1/N underflows fp16)
            with torch.autocast(device, enabled=False):
                return self.forward(mask_embed.float(), mask_features.float(), return_intermediates)
        if return_intermediates:
            return self.full_forward(mask_embed, mask_features)
        b, c, h, w = mask_features.shape
        return self.fused_masks(mask_embed, mask_features.flatten(2)).view(b, -1, h, w)

    def fused_masks(self, w: Tensor, f: Tensor) -> Tensor:
        """Aligned masks without forming ΔE (B, N, C): w (B, Q, C), f = Eᵀ (B, C, N) -> (B, Q, N).

        W'·(E + ΔE)ᵀ = W'·Eᵀ + [W'·(W·P_featᵀ)ᵀ] · softmax_Q(A)ᵀ, where the bracket is only (B, Q, Q).
        """
        a = w @ f  # (B, Q, N) = Aᵀ
        if self.cls_offset_proj is not None:
            prototypes = a.softmax(dim=2) @ f.transpose(1, 2)  # (B, Q, C): softmax over pixels
            w_ref = w + self.cls_offset_proj(prototypes)
        else:
            w_ref = w
        masks = w_ref @ f  # (B, Q, N)
        if self.feat_offset_proj is not None:
            query_mix = w_ref @ self.feat_offset_proj(w).transpose(1, 2)  # (B, Q, Q)
            masks = torch.baddbmm(masks, query_mix, a.softmax(dim=1))  # softmax over queries
        return masks

    def full_forward(self, mask_embed: Tensor, mask_features: Tensor) -> ClassifierOutput:
        """The explicit path with every intermediate (see :meth:`forward`)."""
        h, w_ = mask_features.shape[-2:]
        e = mask_features.flatten(2).transpose(1, 2)  # (B, N, C)
        w = mask_embed  # (B, Q, C)
        a = e @ w.transpose(1, 2)  # (B, N, Q)
        class_attn = a.softmax(dim=1)  # over pixels
        pos_attn = a.softmax(dim=2)  # over queries
        return offset_classifier_output(
            e,
            w,
            a,
            class_attn.transpose(1, 2),  # (B, Q, N)
            pos_attn,
            self.cls_offset_proj,
            self.feat_offset_proj,
            (h, w_),
            products=lambda w_ref, e_ref: e_ref @ w_ref.transpose(1, 2),  # (B, N, Q), no norm
        )


class DotProductMask(nn.Module):
    """Plain Mask2Former mask prediction M = W·Eᵀ (no parameters); same call signature as
    :class:`OffsetLearningMask`, the offset fields of its intermediates stay None."""

    def forward(
        self, mask_embed: Tensor, mask_features: Tensor, return_intermediates: bool = False
    ) -> Tensor | ClassifierOutput:
        """mask_embed (B, Q, C), mask_features (B, C, H, W) -> mask logits (B, Q, H, W)."""
        _check_inputs(mask_embed, mask_features)
        masks = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        if not return_intermediates:
            return masks
        e = mask_features.flatten(2).transpose(1, 2)  # (B, N, C)
        a = masks.flatten(2).transpose(1, 2)  # (B, N, Q)
        return plain_classifier_output(e, mask_embed, a, a, tuple(mask_features.shape[-2:]))
