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
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from offseg_vis.errors import CheckpointError
from offseg_vis.models.key_accounting import misfit_parts

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

    def summary(self) -> str:
        return f"{len(self.used)} keys loaded ({len(self.renamed)} renamed), {len(self.dropped)} dropped"


def read_official_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read an mmseg/mmengine ``.pth`` (``{"state_dict": ..., "meta": ...}``) or a bare state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist; check the path.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - mmengine puts non-tensor objects into "meta"
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(
                f"Could not read {path} as a PyTorch checkpoint ({type(err).__name__}: {err}). "
                "Is the download complete?"
            ) from err
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors.")
    return dict(obj)


def map_official_segmentor_keys(
    source: dict[str, Tensor], target: dict[str, Tensor]
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Rename an official segmentor state dict to ours and check it against ``target``'s keys/shapes."""
    report = ConversionReport()
    linear_model = (
        "decode_head.classifier.weight" in target and "decode_head.classifier.cls_repr" not in target
    )
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


def load_official_checkpoint(model: nn.Module, path: str | Path) -> ConversionReport:
    """Load an official mmseg segmentor checkpoint into ``model`` (strict, see module docstring)."""
    source = read_official_state_dict(path)
    target = model.state_dict()
    if getattr(model, "model_name", "").startswith("mask2former"):
        from offseg_vis.models.mask2former import convert_official_mask2former

        mapped = convert_official_mask2former(source)  # strict: raises CheckpointError on misfits
        model.load_state_dict(mapped, strict=True)
        return ConversionReport(used=sorted(mapped))
    mapped, report = map_official_segmentor_keys(source, target)
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in mapped.items()}, strict=True)
    return report


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


def load_pretrained(model: nn.Module, path: str | Path, model_name: str | None = None) -> object:
    """Load whole-model weights: our ``.safetensors`` checkpoint, or an official ``.pth``."""
    from offseg_vis.models.weights import load_weights, weights_path

    path = Path(path)
    if path.suffix in (".pth", ".pt", ".bin"):
        return load_official_checkpoint(model, path)
    if not weights_path(path).is_file():
        raise CheckpointError(
            f"Checkpoint {path} not found (looked for {weights_path(path)}). Pass our .safetensors file "
            "or an official .pth checkpoint."
        )
    return load_weights(model, path)


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    model_name: str,
    classifier: str = "offset",
    num_classes: int | None = None,
) -> ConversionReport:
    """Convert an official checkpoint to our safetensors format (+ JSON card) at ``dst``.

    ``num_classes`` is read from the checkpoint (``cls_repr`` or ``conv_seg``) when not given.
    """
    from offseg_vis.models.weights import save_weights
    from offseg_vis.models.zoo import build_model

    source = read_official_state_dict(src)
    if num_classes is None:
        num_classes = infer_num_classes(source)
    model = build_model(model_name, num_classes=num_classes, classifier=classifier)
    mapped, report = map_official_segmentor_keys(source, model.state_dict())
    model.load_state_dict(mapped, strict=True)
    save_weights(
        model,
        dst,
        metadata={
            "source": Path(src).name,
            "converted_from": "official mmseg checkpoint",
            "report": report.summary(),
        },
    )
    return report


def infer_num_classes(state: dict[str, Tensor]) -> int:
    """K from ``cls_repr`` (1, K, C) or ``conv_seg.weight`` (K, C, 1, 1) of an official state dict."""
    for key, value in state.items():
        if key.endswith("offset_learning.cls_repr"):
            return int(value.shape[1])
    for key, value in state.items():
        if key.endswith("conv_seg.weight"):
            return int(value.shape[0])
    raise CheckpointError("Cannot tell the number of classes from this checkpoint; pass --num-classes.")
