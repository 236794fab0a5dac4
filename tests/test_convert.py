"""Official checkpoint conversion: every official key is mapped for every released model."""

from __future__ import annotations

import json

import pytest
import torch

from offseg_vis import build_model
from offseg_vis.errors import CheckpointError
from offseg_vis.models.convert import (
    infer_num_classes,
    load_official_checkpoint,
    map_official_segmentor_keys,
)

OFFICIAL = {
    "offseg_t_ade20k": "offseg-t",
    "offseg_b_ade20k": "offseg-b",
    "offseg_l_ade20k": "offseg-l",
    "segformer_b0_offset_learning_ade20k": "segformer-b0",
    "segnext_t_offset_learning_ade20k": "segnext-t",
}
DTYPES = {"float32": torch.float32, "int64": torch.int64}


def synthetic_official_state(reference_dir, name: str) -> dict[str, torch.Tensor]:
    """A state dict with exactly the official keys, shapes and dtypes (values are random)."""
    spec = json.loads((reference_dir / "official_keys" / f"{name}.json").read_text())
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape, dtype in spec["keys"]:
        if DTYPES[dtype].is_floating_point:
            state[key] = torch.randn(shape, generator=g)
        else:
            state[key] = torch.zeros(shape, dtype=DTYPES[dtype])
    return state


@pytest.mark.parametrize("official,name", list(OFFICIAL.items()))
def test_every_official_key_is_mapped(reference_dir, official, name):
    state = synthetic_official_state(reference_dir, official)
    assert infer_num_classes(state) == 150
    model = build_model(name, num_classes=150)
    mapped, report = map_official_segmentor_keys(state, model.state_dict())
    assert set(report.dropped) == {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias"}
    assert len(report.used) + len(report.dropped) == len(state)
    assert set(mapped) == set(model.state_dict())
    model.load_state_dict(mapped, strict=True)
    torch.testing.assert_close(
        model.decode_head.classifier.cls_repr, state["decode_head.offset_learning.cls_repr"]
    )


def test_load_official_checkpoint_file_and_errors(reference_dir, tmp_path):
    state = synthetic_official_state(reference_dir, "segformer_b0_offset_learning_ade20k")
    path = tmp_path / "segformer_ol.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": state}, path)
    model = build_model("segformer-b0", num_classes=150)
    report = load_official_checkpoint(model, path)
    assert len(report.dropped) == 2
    torch.testing.assert_close(
        model.backbone.state_dict()["layers.0.0.projection.weight"],
        state["backbone.layers.0.0.projection.weight"],
    )

    wrong_classes = build_model("segformer-b0", num_classes=19)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_official_checkpoint(wrong_classes, path)
    with pytest.raises(CheckpointError, match="unknown keys|missing"):
        load_official_checkpoint(build_model("segnext-t", num_classes=150), path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_official_checkpoint(model, tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="Could not read"):
        load_official_checkpoint(model, garbage)
