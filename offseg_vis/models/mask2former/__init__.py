"""Mask2Former and Mask2Former-OL (spec §1.5) in plain PyTorch: Swin backbone, deformable pixel decoder
(``grid_sample``, no compiled op), masked-attention decoder, Offset Learning on query masks, and the
Hungarian-matched set loss. Build with :func:`build_mask2former` (or ``build_model("mask2former-swin-t")``)."""

from offseg_vis.models.mask2former.config import (
    CriterionConfig,
    HeadConfig,
    Mask2FormerConfig,
    SwinConfig,
    swin_t_config,
    tiny_config,
)
from offseg_vis.models.mask2former.convert import convert_official_mask2former
from offseg_vis.models.mask2former.model import (
    Mask2FormerOutput,
    Mask2FormerSegmentor,
    build_mask2former,
    semantic_logits,
)
from offseg_vis.models.mask2former.offset_learning_mask import DotProductMask, OffsetLearningMask
from offseg_vis.models.mask2former.recipe import PAPER_RECIPE

__all__ = [
    "PAPER_RECIPE",
    "CriterionConfig",
    "DotProductMask",
    "HeadConfig",
    "Mask2FormerConfig",
    "Mask2FormerOutput",
    "Mask2FormerSegmentor",
    "OffsetLearningMask",
    "SwinConfig",
    "build_mask2former",
    "convert_official_mask2former",
    "semantic_logits",
    "swin_t_config",
    "tiny_config",
]
