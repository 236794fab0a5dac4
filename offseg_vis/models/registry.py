"""The model registry: one way to name, build, load and convert every model.

A model registers its builder with :func:`register_model` (the paper's numbers and the default
config ride along) and, where official checkpoints exist, a key converter with
:func:`register_converter` beside it::

    @register_model("segformer-b0", config=SegmentorConfig(...), paper_params_m={"offset": 3.9})
    def build(num_classes, classifier, classifier_options, config, **options) -> nn.Module: ...

    register_converter("segformer-b0")(map_official_segmentor_keys)

:func:`build_model` looks the name up, builds, stamps the model with ``model_name`` and
``classifier_name`` (the builder sets ``model.config``) and loads ``pretrained`` weights: our
``.safetensors`` through :mod:`~offseg_vis.models.weights`, an official ``.pth`` through the
converter registered for the name. Registration happens when :mod:`offseg_vis.models` is imported
(it imports every registering module), so nothing here names a concrete model.
"""

from __future__ import annotations

import copy
import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from offseg_vis.errors import CheckpointError, ConfigError
from offseg_vis.models.convert import CONVERTED_FROM, ConversionReport, infer_num_classes, read_official_checkpoint
from offseg_vis.models.offset_learning import CLASSIFIERS
from offseg_vis.models.weights import load_weights, save_weights, weights_path

# converter(official state dict, our model's state dict) -> (our state dict, key accounting);
# raises CheckpointError when the checkpoint does not fit.
Converter = Callable[[dict[str, Tensor], dict[str, Tensor]], tuple[dict[str, Tensor], ConversionReport]]

OFFICIAL_SUFFIXES = (".pth", ".pt", ".bin")


@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Attributes:
        name: the registry name ("offseg-t", "segformer-b0", "mask2former-swin-t", ...).
        builder: ``builder(num_classes, classifier, classifier_options, config, **options)`` -> model
            that sets its own ``config`` attribute.
        config: the default config passed to the builder (a dataclass).
        description: one line for tables and ``offseg info``.
        paper_params_m: parameters (millions) printed by the paper, by classifier (ADE20K, K=150).
        paper_gmacs: GFLOPs printed by the paper at 512×512 (the paper's "FLOPs" are MACs).
        test_mode: the paper's inference mode on ADE20K ("whole" or "slide").
        cost_table: listed in the parameter/GMACs table (``offseg zoo``, docs/zoo.json).
        converter: maps an official checkpoint's keys onto the model (None: no official checkpoints).
    """

    name: str
    builder: Callable[..., nn.Module]
    config: Any = None
    description: str = ""
    paper_params_m: Mapping[str, float] = field(default_factory=dict)
    paper_gmacs: Mapping[str, float] = field(default_factory=dict)
    test_mode: str = "whole"
    cost_table: bool = True
    converter: Converter | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    config: Any = None,
    description: str = "",
    paper_params_m: Mapping[str, float] | None = None,
    paper_gmacs: Mapping[str, float] | None = None,
    test_mode: str = "whole",
    cost_table: bool = True,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``builder`` under ``name`` (see :class:`ModelEntry` for the fields).

    Usable as a call too: ``register_model("x", config=cfg)(build)``. Returns the builder unchanged.

    Raises:
        ConfigError: ``name`` is taken (two modules would silently fight over it otherwise).
    """

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ConfigError(f"Model name {name!r} is registered twice ({_REGISTRY[name].builder.__module__}).")
        _REGISTRY[name] = ModelEntry(
            name=name,
            builder=builder,
            config=config,
            description=description,
            paper_params_m=dict(paper_params_m or {}),
            paper_gmacs=dict(paper_gmacs or {}),
            test_mode=test_mode,
            cost_table=cost_table,
        )
        return builder

    return add


def register_converter(*names: str) -> Callable[[Converter], Converter]:
    """Decorator: ``converter`` reads official checkpoints of the registered models ``names``."""

    def add(converter: Converter) -> Converter:
        for name in names:
            entry = model_entry(name)
            if entry.converter is not None:
                raise ConfigError(f"Model {name!r} already has an official-checkpoint converter.")
            _REGISTRY[name] = replace(entry, converter=converter)
        return converter

    return add


def list_models(cost_table: bool = False) -> list[str]:
    """Names accepted by :func:`build_model`, sorted; with ``cost_table`` only the ones in the cost table."""
    return sorted(n for n, e in _REGISTRY.items() if e.cost_table or not cost_table)


def check_model_name(name: str) -> None:
    """Raise ConfigError with the nearest valid names when ``name`` is not registered."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"Unknown model {name!r}.{hint} Known models: {', '.join(list_models())}.")


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name`` (ConfigError with suggestions when unknown)."""
    check_model_name(name)
    return _REGISTRY[name]


def _check_options(entry: ModelEntry, options: dict[str, Any]) -> None:
    """A sentence instead of a TypeError from deep inside the builder for an unknown option."""
    params = inspect.signature(entry.builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    fixed = {"num_classes", "classifier", "classifier_options", "config"}
    known = sorted(k for k in params if k not in fixed)
    unknown = sorted(k for k in options if k not in known)
    if unknown:
        raise ConfigError(
            f"Model {entry.name!r} takes no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(known) or 'none'}."
        )


def build_model(
    name: str,
    num_classes: int,
    classifier: str = "offset",
    pretrained: str | Path | None = None,
    classifier_options: dict | None = None,
    config: Any = None,
    **options: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: one of :func:`list_models` (e.g. "offseg-t", "segformer-b0", "segnext-t", "offseg-mbv2",
            "mask2former-swin-t").
        num_classes: K.
        classifier: "offset" (Offset Learning) or "linear" (per-pixel 1×1 conv baseline).
        pretrained: a checkpoint for the whole model: our ``.safetensors`` (with its JSON card) or an
            official ``.pth``; it is converted and loaded with strict key accounting.
        classifier_options: options of OffsetLearning (class_offsets, feature_offsets, logit_norm).
        config: replaces the entry's default config (same type).
        options: further keyword arguments of the model's builder, e.g. ``backbone_pretrained`` of the
            backbone + head models, ``variant`` of Mask2Former.

    Returns:
        The model, with ``model_name``, ``classifier_name`` and ``config`` set.
    """
    entry = model_entry(name)
    if classifier not in CLASSIFIERS:
        raise ConfigError(f"Unknown classifier {classifier!r}; choose one of {CLASSIFIERS}.")
    _check_options(entry, options)
    model = entry.builder(
        num_classes=num_classes,
        classifier=classifier,
        classifier_options=classifier_options,
        config=copy.deepcopy(entry.config) if config is None else config,  # builds never share a config
        **options,
    )
    model.model_name = name
    model.classifier_name = classifier
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


def _converter_of(model: nn.Module) -> Converter:
    name = getattr(model, "model_name", None)
    if not isinstance(name, str):
        raise CheckpointError(
            "This model was not built by build_model (it has no model_name), so which official checkpoint "
            "layout it takes is unknown; build it with offseg_vis.build_model(name, ...)."
        )
    entry = model_entry(name)
    if entry.converter is None:
        raise CheckpointError(f"No official checkpoints exist for {name}; load one of our .safetensors files.")
    return entry.converter


def load_official_checkpoint(model: nn.Module, path: str | Path) -> ConversionReport:
    """Load an official checkpoint into ``model`` with the converter registered for its name (strict)."""
    source = read_official_checkpoint(path).state_dict
    target = model.state_dict()
    mapped, report = _converter_of(model)(source, target)
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in mapped.items()}, strict=True)
    return report


def load_pretrained(model: nn.Module, path: str | Path) -> object:
    """Load whole-model weights: our ``.safetensors`` checkpoint, or an official ``.pth``."""
    path = Path(path)
    if path.suffix in OFFICIAL_SUFFIXES:
        return load_official_checkpoint(model, path)
    if not weights_path(path).is_file():
        raise CheckpointError(
            f"Checkpoint {path} not found (looked for {weights_path(path)}). Pass our .safetensors file "
            "or an official .pth checkpoint."
        )
    return load_weights(model, path)


# (K, the checkpoint's meta) -> (class names (K,), palette (K, 3), sentence saying where they came
# from). The CLI passes ``offseg_vis.data.class_names.classes_for`` (models/ may not import data/).
ClassResolver = Callable[[int, Mapping[str, Any]], tuple[Any, Any, str]]


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    model_name: str,
    classifier: str = "offset",
    num_classes: int | None = None,
    classes: ClassResolver | None = None,
) -> ConversionReport:
    """Convert an official checkpoint to our safetensors format (+ JSON card) at ``dst``.

    Args:
        src: the official ``.pth``.
        dst: output path (``.safetensors``; the card ``.json`` is written beside it).
        model_name: registry name (offseg-t, segformer-b0, ...).
        classifier: "offset" or "linear".
        num_classes: K; read from the checkpoint (``cls_repr`` or ``conv_seg``) when None.
        classes: decides the card's ``class_names`` and ``palette`` from (K, the file's meta), e.g.
            ``lambda k, meta: classes_for(dataset, k, meta)``. Without it the card carries no class
            names and ``report.classes_source`` says so.

    Returns:
        The key accounting, plus ``classes_source`` and the file's ``placeholders``.
    """
    checkpoint = read_official_checkpoint(src)
    source = checkpoint.state_dict
    if num_classes is None:
        num_classes = infer_num_classes(source)
    model = build_model(model_name, num_classes=num_classes, classifier=classifier)
    mapped, report = _converter_of(model)(source, model.state_dict())
    model.load_state_dict(mapped, strict=True)
    report.placeholders = checkpoint.placeholders
    metadata: dict[str, Any] = {"source": Path(src).name, "converted_from": CONVERTED_FROM, "report": report.summary()}
    if classes is None:
        report.classes_source = "no class names written (no class resolver given)."
    else:
        names, palette, report.classes_source = classes(num_classes, checkpoint.meta)
        if len(names) != num_classes or len(palette) != num_classes:
            raise CheckpointError(
                f"The class resolver gave {len(names)} names and {len(palette)} colours for a model with "
                f"{num_classes} classes."
            )
        metadata["class_names"] = [str(n) for n in names]
        metadata["palette"] = [[int(c) for c in rgb] for rgb in palette]
        metadata["classes_source"] = report.classes_source
    save_weights(model, dst, metadata=metadata)
    return report


__all__ = [
    "ClassResolver",
    "Converter",
    "ModelEntry",
    "build_model",
    "check_model_name",
    "convert_checkpoint",
    "list_models",
    "load_official_checkpoint",
    "load_pretrained",
    "model_entry",
    "register_converter",
    "register_model",
]
