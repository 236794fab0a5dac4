"""One factory for every named model: ``build_model(name, num_classes, classifier=...)``.

The table :data:`MODELS` holds each model's recipe (backbone, head and their arguments) and the
paper's reference numbers, so the README table and the tests read from one place.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from offseg_vis.errors import ConfigError
from offseg_vis.models.offset_learning import CLASSIFIERS


@dataclass(frozen=True)
class ModelSpec:
    """How to build one named model.

    Attributes:
        backbone: "module:function" returning the backbone; called with ``backbone_args``.
        head: "module:Class" of the decode head; called with in_channels, num_classes, classifier,
            classifier_options and ``head_args``.
        paper_params_m: parameters in millions printed by the paper, by classifier (ADE20K, K=150).
        paper_gmacs: GFLOPs printed by the paper at 512×512 (the paper's "FLOPs" are MACs).
        test_mode: the paper's inference mode on ADE20K ("whole" or "slide").
    """

    backbone: str
    head: str
    backbone_args: dict = field(default_factory=dict)
    head_args: dict = field(default_factory=dict)
    paper_params_m: dict = field(default_factory=dict)
    paper_gmacs: dict = field(default_factory=dict)
    test_mode: str = "whole"
    description: str = ""


_EFF = "offseg_vis.models.backbones.efficientformer_v2:efficientformer_v2"
_OFFSEG_HEAD = "offseg_vis.models.heads.offseg_head:OffSegHead"
_MIT = "offseg_vis.models.backbones.mit:mit"
_SEGFORMER_HEAD = "offseg_vis.models.heads.segformer_head:SegFormerHead"
_MSCAN = "offseg_vis.models.backbones.mscan:mscan"
_HAM_HEAD = "offseg_vis.models.heads.lightham_head:LightHamHead"

MODELS: dict[str, ModelSpec] = {
    "offseg-mbv2": ModelSpec(
        backbone="offseg_vis.models.backbones.mobilenet_v2:mobilenet_v2",
        head="offseg_vis.models.heads.fpn_head:SimpleFPNHead",
        head_args={"channels": 128},
        description="ImageNet MobileNetV2 + light FPN decoder; our CPU model (not in the paper)",
    ),
    "offseg-t": ModelSpec(
        _EFF,
        _OFFSEG_HEAD,
        {"variant": "s1"},
        {"new_channels": [32, 32, 64, 128], "channels": 256},
        paper_params_m={"offset": 6.2},
        paper_gmacs={"offset": 5.3},
        test_mode="slide",
        description="EfficientFormerV2-S1 + FreqFusion decoder + Offset Learning",
    ),
    "offseg-b": ModelSpec(
        _EFF,
        _OFFSEG_HEAD,
        {"variant": "s2"},
        {"new_channels": [32, 64, 128, 256], "channels": 256},
        paper_params_m={"offset": 13.0},
        paper_gmacs={"offset": 10.3},
        test_mode="slide",
        description="EfficientFormerV2-S2 + FreqFusion decoder + Offset Learning",
    ),
    "offseg-l": ModelSpec(
        _EFF,
        _OFFSEG_HEAD,
        {"variant": "l"},
        {"new_channels": [32, 64, 128, 256], "channels": 256},
        paper_params_m={"offset": 26.4},
        paper_gmacs={"offset": 17.1},
        test_mode="slide",
        description="EfficientFormerV2-L + FreqFusion decoder + Offset Learning",
    ),
}

_SEGFORMER_PAPER = {  # Table 4 (ADE20K): params (M) and GFLOPs, linear -> offset
    "b0": ((3.8, 3.9), (8.4, 8.8)),
    "b1": ((13.7, 13.9), (15.9, 16.3)),
    "b2": ((24.8, 24.9), (25.9, 26.1)),
    "b3": ((44.6, 44.8), (42.5, 42.8)),
    "b4": ((61.4, 61.6), (59.2, 59.5)),
    "b5": ((82.0, 82.2), (75.2, 75.5)),
}
for _v, ((_pl, _po), (_gl, _go)) in _SEGFORMER_PAPER.items():
    MODELS[f"segformer-{_v}"] = ModelSpec(
        _MIT,
        _SEGFORMER_HEAD,
        {"variant": _v},
        {"channels": 256},
        paper_params_m={"linear": _pl, "offset": _po},
        paper_gmacs={"linear": _gl, "offset": _go},
        test_mode="slide",
        description=f"MiT-{_v.upper()} + all-MLP head (SegFormer)",
    )

_SEGNEXT_PAPER = {  # Table 3 (ADE20K)
    "t": ((4.3, 4.4), (6.6, 7.2), 256),
    "s": ((13.9, 14.1), (15.9, 16.5), 256),
    "b": ((27.6, 28.2), (34.9, 34.8), 512),
}
for _v, ((_pl, _po), (_gl, _go), _ch) in _SEGNEXT_PAPER.items():
    MODELS[f"segnext-{_v}"] = ModelSpec(
        _MSCAN,
        _HAM_HEAD,
        {"variant": _v},
        {"ham_channels": _ch, "channels": _ch},
        paper_params_m={"linear": _pl, "offset": _po},
        paper_gmacs={"linear": _gl, "offset": _go},
        description=f"MSCAN-{_v.upper()} + LightHam head (SegNeXt)",
    )


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted([*MODELS, *_EXTRA_MODELS])


def _import(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _build_mask2former(name: str, num_classes: int, classifier: str, **options) -> nn.Module:
    build = _import("offseg_vis.models.mask2former:build_mask2former")
    variant = name.removeprefix("mask2former-")
    return build(num_classes=num_classes, classifier=classifier, variant=variant, **options)


# Models with their own segmentor class (not backbone + per-pixel head).
_EXTRA_MODELS = {"mask2former-swin-t": _build_mask2former}


def check_model_name(name: str) -> None:
    """Raise ConfigError with the nearest valid names when ``name`` is not in the zoo."""
    if name not in MODELS and name not in _EXTRA_MODELS:
        close = difflib.get_close_matches(name, list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"Unknown model {name!r}.{hint} Known models: {', '.join(list_models())}.")


def build_model(
    name: str,
    num_classes: int,
    classifier: str = "offset",
    pretrained: str | Path | None = None,
    backbone_pretrained: bool | str | Path = False,
    classifier_options: dict | None = None,
) -> nn.Module:
    """Build a named model.

    Args:
        name: one of :func:`list_models` (e.g. "offseg-t", "segformer-b0", "segnext-t", "offseg-mbv2").
        num_classes: K.
        classifier: "offset" (Offset Learning) or "linear" (per-pixel 1×1 conv baseline).
        pretrained: a checkpoint for the whole model: our ``.safetensors`` (with its JSON card) or an
            official mmseg ``.pth``; it is converted and loaded with strict key accounting.
        backbone_pretrained: ImageNet weights for the backbone (True = the bundled file where one
            exists, i.e. MobileNetV2; or a path to the official ImageNet checkpoint).
        classifier_options: options of OffsetLearning (class_offsets, feature_offsets, logit_norm).

    Returns:
        a :class:`~offseg_vis.models.segmentor.Segmentor` (or the Mask2Former segmentor).
    """
    check_model_name(name)
    if classifier not in CLASSIFIERS:
        raise ConfigError(f"Unknown classifier {classifier!r}; choose one of {CLASSIFIERS}.")
    if name in _EXTRA_MODELS:
        extra = {"classifier_options": classifier_options} if classifier_options else {}
        model = _EXTRA_MODELS[name](name, num_classes, classifier, **extra)
    else:
        from offseg_vis.models.segmentor import Segmentor

        spec = MODELS[name]
        backbone = _import(spec.backbone)(**spec.backbone_args)
        if backbone_pretrained:
            _load_backbone_weights(name, backbone, backbone_pretrained)
        head = _import(spec.head)(
            in_channels=list(backbone.out_channels),
            num_classes=num_classes,
            classifier=classifier,
            classifier_options=classifier_options,
            **spec.head_args,
        )
        model = Segmentor(backbone, head)
    model.model_name = name
    model.classifier_name = classifier
    if pretrained is not None:
        from offseg_vis.models.convert import load_pretrained

        load_pretrained(model, pretrained, model_name=name)
    return model


def _load_backbone_weights(name: str, backbone: nn.Module, source: bool | str | Path) -> None:
    if name == "offseg-mbv2":
        from offseg_vis.models.backbones.mobilenet_v2 import load_imagenet_weights

        load_imagenet_weights(backbone, None if source is True else source)
        return
    if source is True:
        raise ConfigError(
            f"No ImageNet weights for {name}'s backbone ship with this package (no offline source exists): "
            "download the official ImageNet checkpoint yourself and pass its path as backbone_pretrained."
        )
    if name in ("offseg-t", "offseg-b", "offseg-l"):
        from offseg_vis.models.backbones.efficientformer_v2 import load_imagenet_weights as load_eff

        load_eff(backbone, source)
        return
    from offseg_vis.models.convert import load_backbone_checkpoint

    load_backbone_checkpoint(name, backbone, source)
