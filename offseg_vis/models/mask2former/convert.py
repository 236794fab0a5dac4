"""Official Mask2Former(-OL) checkpoints (mmseg 1.x + mmdet 3.x naming) -> our state dict.

Our modules carry the official names, so conversion is mostly bookkeeping: unwrap the checkpoint,
rename the Offset Learning module (its attribute name in the official head is not published; any
``decode_head.<name>.{cls_offset_proj,feat_offset_proj}.weight`` pair is accepted), and account
strictly for every key: unknown keys, missing keys and shape mismatches are all reported at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from offseg_vis.errors import CheckpointError
from offseg_vis.models.convert import ConversionReport
from offseg_vis.models.key_accounting import misfit_parts
from offseg_vis.models.mask2former.model import build_mask2former
from offseg_vis.models.registry import register_converter

_OL_KEY = re.compile(r"^decode_head\.([A-Za-z0-9_]+)\.(cls_offset_proj|feat_offset_proj)\.weight$")
_MAX_LISTED = 25


def _unwrap(checkpoint: Mapping) -> dict[str, Tensor]:
    """The tensor dict inside an mmengine checkpoint ({"state_dict": …, "meta": …}) or a bare one."""
    sd = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(
            "This does not look like a Mask2Former checkpoint: expected a dict of tensors, or a dict with a "
            "'state_dict' entry holding one (an mmseg .pth file)."
        )
    sd = dict(sd)
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DistributedDataParallel wrapper
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def expected_shapes(num_classes: int, classifier: str, variant: str = "swin-t") -> dict[str, tuple[int, ...]]:
    """Our state-dict keys and shapes for a model, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = build_mask2former(num_classes, classifier=classifier, variant=variant)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _rename(state_dict: Mapping) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Unwrapped official state dict with the Offset Learning module under our name, and the renames."""
    sd = _unwrap(state_dict)
    renamed: dict[str, Tensor] = {}
    renames: dict[str, str] = {}
    ol_names = set()
    for key, value in sd.items():
        match = _OL_KEY.match(key)
        if match:
            ol_names.add(match.group(1))
            new = f"decode_head.offset_learning.{match.group(2)}.weight"
            renames[key], key = new, new
        renamed[key] = value
    if len(ol_names) > 1:
        raise CheckpointError(f"The checkpoint holds more than one offset module ({sorted(ol_names)}); expected one.")
    if "decode_head.cls_embed.weight" not in renamed:
        raise CheckpointError(
            "The checkpoint has no 'decode_head.cls_embed.weight', so it is not a Mask2Former segmentor "
            "(is it a backbone-only or a detection checkpoint?)."
        )
    return renamed, renames


def convert_official_mask2former(state_dict: Mapping, variant: str = "swin-t") -> dict[str, Tensor]:
    """Map an official Mask2Former / Mask2Former-OL checkpoint onto our key names.

    Args:
        state_dict: the loaded ``.pth`` (with or without its "state_dict" wrapper, with or without a
            "module." prefix).
        variant: which of our configs the checkpoint belongs to ("swin-t").

    Returns:
        Our state dict (keys in our order). K comes from ``decode_head.cls_embed.weight``; the model is
        Mask2Former-OL when the Offset Learning projections are present.

    Raises:
        CheckpointError: listing every unknown key, missing key and shape mismatch.
    """
    renamed, renames = _rename(state_dict)
    num_classes = renamed["decode_head.cls_embed.weight"].shape[0] - 1
    classifier = "offset" if renames else "linear"
    expected = expected_shapes(num_classes, classifier, variant)
    problems = misfit_parts(renamed, expected)
    if problems:
        raise CheckpointError(
            f"Cannot convert this checkpoint to mask2former-{variant} ({classifier}, {num_classes} classes): "
            + "; ".join(problems)
            + ". Check that it is an mmseg Mask2Former Swin-T checkpoint."
        )
    return {k: renamed[k] for k in expected}


@register_converter("mask2former-swin-t")
def map_official_mask2former_keys(
    source: dict[str, Tensor], target: dict[str, Tensor]
) -> tuple[dict[str, Tensor], ConversionReport]:
    """The registry's converter: an official state dict -> ours, checked against ``target`` (the state
    dict of the model it is loaded into), with the key accounting."""
    renamed, renames = _rename(source)
    problems = misfit_parts(renamed, target)
    if problems:
        raise CheckpointError(
            "The checkpoint does not fit this Mask2Former model: " + "; ".join(problems) + ". "
            "Check that the classifier and the number of classes match the checkpoint."
        )
    report = ConversionReport(used=sorted(renamed), renamed=renames)
    return {k: renamed[k] for k in target}, report
