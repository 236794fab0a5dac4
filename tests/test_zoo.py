"""The zoo: every named model builds, predicts at any size, and unknown names are explained."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_close_scaled, expected_whole_predict, scaled_error

from offseg_vis import build_model, list_models
from offseg_vis.errors import ConfigError
from offseg_vis.models.zoo import MODELS

SMALL_MODELS = ["offseg-t", "segformer-b0", "segnext-t", "offseg-mbv2"]


@pytest.mark.parametrize("name", SMALL_MODELS)
@pytest.mark.parametrize("classifier", ["offset", "linear"])
def test_any_size_predict(name, classifier):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, classifier=classifier).eval()
    for size in [(97, 61), (250, 333)]:
        x = torch.randn(1, 3, *size)
        torch.manual_seed(1)  # SegNeXt's NMF draws its initial bases from the global generator per forward
        logits = model.predict(x)
        torch.manual_seed(1)
        expected = expected_whole_predict(model, x)  # pad to the divisor, run, resize, crop
        assert logits.shape == expected.shape == (1, 7, *size)
        # Same operations in the same order: equal up to the 4-tap bilinear resize's rounding.
        assert_close_scaled(logits, expected, 4)
        if getattr(model.backbone, "size_divisor", 1) > 1:  # resizing the padded logits without the crop is wrong
            with torch.no_grad():
                padded_logits = model(x)
            stretched = torch.nn.functional.interpolate(padded_logits, size=size, mode="bilinear", align_corners=False)
            assert scaled_error(stretched, expected, 4) > 10


def test_list_models_covers_the_paper():
    names = set(list_models())
    assert {"offseg-t", "offseg-b", "offseg-l", "segnext-t", "segnext-s", "segnext-b", "offseg-mbv2"} <= names
    assert {f"segformer-b{i}" for i in range(6)} <= names


def test_unknown_model_and_classifier_are_explained():
    with pytest.raises(ConfigError, match="Did you mean offseg-t"):
        build_model("offseg-tt", num_classes=3)
    with pytest.raises(ConfigError, match="classifier"):
        build_model("offseg-mbv2", num_classes=3, classifier="mlp")


OFFICIAL_KEY_LISTS = {
    "offseg-t": "offseg_t_ade20k",
    "offseg-b": "offseg_b_ade20k",
    "offseg-l": "offseg_l_ade20k",
    "segformer-b0": "segformer_b0_offset_learning_ade20k",
    "segnext-t": "segnext_t_offset_learning_ade20k",
}
DEAD_CONV_SEG = 256 * 150 + 150  # official decode_head.conv_seg: never called by an OL head, not built here


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if s.paper_params_m])
def test_parameter_counts(reference_dir, name):
    """Exact counts from the official key lists where one exists (ADE20K, 150 classes):
    with Offset Learning = official total - the dead conv_seg; per-pixel baseline = official total -
    Offset Learning (its conv_seg is then the classifier). Every model: the two classifiers differ by
    exactly Offset Learning's K*C + 2C^2 + 2K minus the 1x1 conv's K*C + K, and the totals round to
    the paper's (within 3 %, the paper's one decimal in M)."""
    spec = MODELS[name]
    # Meta tensors skip the allocation, except for EfficientFormerV2, whose bias-index tables call
    # torch.unique (no meta kernel).
    device = "cpu" if name.startswith("offseg-") else "meta"
    with torch.device(device):
        models = {c: build_model(name, num_classes=150, classifier=c) for c in ("offset", "linear")}
    counts = {c: _count(m) for c, m in models.items()}
    width = models["offset"].decode_head.classifier.cls_repr.shape[-1]
    k = 150
    assert counts["offset"] - counts["linear"] == (k * width + 2 * width * width + 2 * k) - (k * width + k)
    if name in OFFICIAL_KEY_LISTS:
        official = json.loads((reference_dir / "official_keys" / f"{OFFICIAL_KEY_LISTS[name]}.json").read_text())
        ol = official["params_by_submodule"]["decode_head.offset_learning"]
        assert ol == 169_772
        assert counts["offset"] == official["total_params"] - DEAD_CONV_SEG, name
        assert counts["linear"] == official["total_params"] - ol, name
    for classifier, paper in spec.paper_params_m.items():
        assert abs(counts[classifier] / 1e6 - paper) / paper <= 0.03, f"{name}/{classifier}: {counts[classifier]}"


@pytest.mark.numeric
def test_offseg_t_export_matches_eager():
    torch.manual_seed(0)
    model = build_model("offseg-t", num_classes=7).eval()
    x = torch.randn(1, 3, 128, 128)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        # The exported graph runs the same kernels; 3x3 convs over up to 224 channels (~2016 taps).
        assert_close_scaled(exported.module()(x), model(x), 2048)
