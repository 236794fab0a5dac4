"""Dataclass configs of Mask2Former(-OL): backbone, head, losses, and the named variants.

``swin-t`` is the paper's model (spec §1.5, §3.2): Swin-T, a 6-layer deformable pixel decoder,
a 9-layer masked-attention decoder with 100 queries of width 256. ``tiny`` keeps every mechanism
but shrinks every size so CPU tests can train it in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from offseg_vis.errors import ConfigError


@dataclass
class SwinConfig:
    """Swin Transformer backbone (mmseg ``SwinTransformer`` semantics)."""

    embed_dims: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.3


@dataclass
class HeadConfig:
    """Mask2Former head: pixel decoder, transformer decoder and prediction MLPs."""

    feat_channels: int = 256  # width of the pixel decoder, the queries and the mask embeddings
    num_queries: int = 100
    num_feature_levels: int = 3  # strides 32, 16, 8 feed the deformable encoder and the decoder
    gn_groups: int = 32
    encoder_layers: int = 6
    encoder_heads: int = 8
    encoder_points: int = 4
    encoder_ffn_channels: int = 1024
    decoder_layers: int = 9
    decoder_heads: int = 8
    decoder_ffn_channels: int = 2048
    pos_temperature: float = 10000.0


@dataclass
class CriterionConfig:
    """Matching costs and loss weights (mmseg's Mask2Former ADE20K config)."""

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544  # 112 x 112
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75


@dataclass
class Mask2FormerConfig:
    """Everything needed to build one Mask2Former(-OL) model."""

    backbone: SwinConfig = field(default_factory=SwinConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    size_divisor: int = 32  # images are zero-padded to a multiple of this (mmseg test_cfg)


def swin_t_config() -> Mask2FormerConfig:
    """The paper's Mask2Former-Tiny (Swin-T) configuration."""
    return Mask2FormerConfig()


def tiny_config() -> Mask2FormerConfig:
    """A very small configuration with every mechanism of the full one, for CPU tests and demos."""
    return Mask2FormerConfig(
        backbone=SwinConfig(
            embed_dims=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=7, drop_path_rate=0.0
        ),
        head=HeadConfig(
            feat_channels=64,
            num_queries=16,
            gn_groups=8,
            encoder_layers=1,
            encoder_heads=4,
            encoder_points=2,
            encoder_ffn_channels=128,
            decoder_layers=2,
            decoder_heads=4,
            decoder_ffn_channels=128,
        ),
        criterion=CriterionConfig(num_points=256),
    )


VARIANTS = {"swin-t": swin_t_config, "tiny": tiny_config}


def variant_config(variant: str) -> Mask2FormerConfig:
    """The config of a named variant ("swin-t" or "tiny")."""
    if variant not in VARIANTS:
        raise ConfigError(f"Unknown Mask2Former variant {variant!r}; choose one of {sorted(VARIANTS)}.")
    return VARIANTS[variant]()
