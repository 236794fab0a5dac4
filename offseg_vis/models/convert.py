"""Official checkpoints (mmseg format) -> our models, with strict key accounting.

Our modules are named so that the official state-dict keys carry over unchanged, except:

* ``decode_head.offset_learning.*`` is our head's ``decode_head.classifier.*`` (the classifier
  slot takes either OffsetLearning or the per-pixel LinearClassifier);
* ``decode_head.conv_seg.*`` of the official Offset-Learning heads is dead (never called) and is
  dropped, as are the ImageNet classifier keys of backbone checkpoints;
* for a per-pixel (``linear``) model, the official ``conv_seg.weight`` (K, C, 1, 1) and
  ``conv_seg.bias`` become ``classifier.weight`` (K, C) and ``classifier.bias``.

Every source key is used or reported as dropped, every target key is filled, every shape matches;
anything else is a :class:`CheckpointError` listing the offending keys.

Files are read with :func:`offseg_vis.models.safe_pickle.safe_load`: nothing in a checkpoint can run
code; objects of classes we do not have (mmengine's ``HistoryBuffer`` in ``message_hub``, ...) come
back as inert placeholders.

:func:`map_official_segmentor_keys` is the converter of the backbone + head models; the registry
(:mod:`~offseg_vis.models.registry`) calls the converter registered for a model's name when it loads
or converts an official checkpoint (``load_official_checkpoint``, ``convert_checkpoint``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from offseg_vis.errors import CheckpointError
from offseg_vis.models.key_accounting import misfit_parts
from offseg_vis.models.safe_pickle import Placeholder, placeholder_names, safe_load

# Keys that exist in official checkpoints and that our models deliberately do not build.
DROPPED_SEGMENTOR_KEYS = (r"^decode_head\.conv_seg\.",)
# ImageNet classifier parts of backbone checkpoints (EfficientFormerV2: norm/head/dist_head;
# MiT / MSCAN pretrain files: head).
DROPPED_BACKBONE_KEYS = (r"^norm\.", r"^head\.", r"^dist_head\.", r"^fc\.", r"^classifier\.")


@dataclass
class ConversionReport:
    """What a conversion did with every key."""

    used: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    # Set by convert_checkpoint: where the card's class names came from, and the globals of the
    # file that were kept as inert placeholders (their modules are not imported).
    classes_source: str | None = None
    placeholders: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.used)} keys loaded ({len(self.renamed)} renamed), {len(self.dropped)} dropped"


@dataclass
class OfficialCheckpoint:
    """What an official ``.pth`` holds that we use.

    Attributes:
        state_dict: name -> tensor.
        meta: the file's ``meta`` dict (mmengine: ``dataset_meta``, ``seed``, ...; may hold numpy
            values and placeholders), ``{}`` when there is none.
        placeholders: ``module.name`` of every object of the file kept as an inert placeholder.
    """

    state_dict: dict[str, Tensor]
    meta: dict[str, Any]
    placeholders: list[str]


def read_official_checkpoint(path: str | Path) -> OfficialCheckpoint:
    """Read an mmseg/mmengine ``.pth`` (``{"state_dict": ..., "meta": ...}``) or a bare state dict.

    Raises:
        CheckpointError: missing or unreadable file; a global that can run code (nothing ran; the
            sentence names it); no state dict of tensors inside.
    """
    path = Path(path)
    obj = safe_load(path)
    found = placeholder_names(obj)
    meta = obj.get("meta") if isinstance(obj, dict) and isinstance(obj.get("meta"), dict) else {}
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        odd = ""
        if isinstance(obj, dict):
            bad = next(k for k, v in obj.items() if not isinstance(v, Tensor))
            kind = repr(obj[bad]) if isinstance(obj[bad], Placeholder) else type(obj[bad]).__name__
            odd = f" (e.g. {bad!r} is {kind})"
        raise CheckpointError(f"{path} does not hold a state dict of tensors{odd}.")
    return OfficialCheckpoint(state_dict=dict(obj), meta=dict(meta), placeholders=found)


def read_official_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict of an official ``.pth`` (see :func:`read_official_checkpoint`)."""
    return read_official_checkpoint(path).state_dict


def map_official_segmentor_keys(
    source: dict[str, Tensor], target: dict[str, Tensor]
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Rename an official segmentor state dict to ours and check it against ``target``'s keys/shapes."""
    report = ConversionReport()
    linear_model = "decode_head.classifier.weight" in target and "decode_head.classifier.cls_repr" not in target
    out: dict[str, Tensor] = {}
    for key, value in source.items():
        new = key
        if key.startswith("decode_head.offset_learning."):
            new = "decode_head.classifier." + key.removeprefix("decode_head.offset_learning.")
        elif linear_model and key in ("decode_head.conv_seg.weight", "decode_head.conv_seg.bias"):
            new = key.replace("conv_seg", "classifier")
            if value.dim() == 4:
                value = value[:, :, 0, 0]  # (K, C, 1, 1) -> (K, C)
        elif any(re.match(p, key) for p in DROPPED_SEGMENTOR_KEYS):
            report.dropped.append(key)
            continue
        if new != key:
            report.renamed[key] = new
        out[new] = value
    _check_against(out, target, report, what="segmentor")
    return out, report


def _check_against(out: dict[str, Tensor], target: dict[str, Tensor], report: ConversionReport, what: str) -> None:
    parts = misfit_parts(out, target)
    if parts:
        raise CheckpointError(
            f"The checkpoint does not fit this {what}: " + "; ".join(parts) + ". "
            "Check that the model name, variant and number of classes match the checkpoint."
        )
    report.used = sorted(out)


def load_backbone_checkpoint(model_name: str, backbone: nn.Module, path: str | Path) -> ConversionReport:
    """Load ImageNet weights (mmseg's MiT / MSCAN pretrain files) into a backbone.

    EfficientFormerV2 has its own loader (``backbones.efficientformer_v2.load_imagenet_weights``)
    because its segmentation-only attention biases are not in the ImageNet file.

    Keys may carry a ``backbone.`` prefix; ImageNet classifier keys are dropped and reported.
    """
    source = read_official_state_dict(path)
    report = ConversionReport()
    target = backbone.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in source.items():
        new = key.removeprefix("backbone.")
        if new not in target and any(re.match(p, new) for p in DROPPED_BACKBONE_KEYS):
            report.dropped.append(key)
            continue
        if new != key:
            report.renamed[key] = new
        out[new] = value
    _check_against(out, target, report, what=f"{model_name} backbone")
    backbone.load_state_dict({k: v.to(target[k].dtype) for k, v in out.items()}, strict=True)
    return report


# Written into the card of every converted checkpoint (``converted_from``).
CONVERTED_FROM = "official mmseg checkpoint"


def infer_num_classes(state: dict[str, Tensor]) -> int:
    """K from ``cls_repr`` (1, K, C), Mask2Former's ``cls_embed.weight`` (K + 1, C) or
    ``conv_seg.weight`` (K, C, 1, 1) of an official state dict."""
    for key, value in state.items():
        if key.endswith("offset_learning.cls_repr"):
            return int(value.shape[1])
        if key == "decode_head.cls_embed.weight":  # K classes + "no object"
            return int(value.shape[0]) - 1
    for key, value in state.items():
        if key.endswith("conv_seg.weight"):
            return int(value.shape[0])
    raise CheckpointError("Cannot tell the number of classes from this checkpoint; pass --num-classes.")
