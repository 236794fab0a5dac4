"""OffSegHead: official keys and parameter counts of OffSeg-T/B/L, shapes, gradients, any input size."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_close_scaled, expected_whole_predict

from offseg_vis.errors import ConfigError, InputError
from offseg_vis.models.backbones.efficientformer_v2 import efficientformer_v2
from offseg_vis.models.heads.offseg_head import OffSegHead, group_interleave
from offseg_vis.models.offset_learning import ClassifierOutput, LinearClassifier, OffsetLearning
from offseg_vis.models.segmentor import Segmentor

DEAD_CONV_SEG_PARAMS = 38_550  # official decode_head.conv_seg (150x256 + 150), never used, not built here
VARIANTS = {
    "t": ("s1", [32, 32, 64, 128]),
    "b": ("s2", [32, 64, 128, 256]),
    "l": ("l", [32, 64, 128, 256]),
}
# Measured with this implementation (backbone + head, 150 classes, Offset Learning).
EXPECTED_PARAMS = {"t": 6_183_626, "b": 12_916_850, "l": 26_375_458}


def _official_to_ours(key: str) -> str | None:
    """Official segmentor key -> our key (None for the dead conv_seg)."""
    if key.startswith("decode_head.conv_seg."):
        return None
    return key.replace("decode_head.offset_learning.", "decode_head.classifier.")


@pytest.mark.parametrize("name", ["t", "b", "l"])
def test_offseg_keys_and_parameter_counts_match_official(reference_dir, name):
    official = json.loads((reference_dir / "official_keys" / f"offseg_{name}_ade20k.json").read_text())
    variant, new_channels = VARIANTS[name]
    backbone = efficientformer_v2(variant)
    head = OffSegHead(backbone.out_channels, new_channels, num_classes=150)
    model = Segmentor(backbone, head)

    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {}
    for key, shape, _dtype in official["keys"]:
        mapped = _official_to_ours(key)
        if mapped is not None:
            theirs[mapped] = list(shape)
    assert ours == theirs
    assert list(ours) == list(theirs)  # even the order is the official one

    total = sum(p.numel() for p in model.parameters())
    assert total == official["total_params"] - DEAD_CONV_SEG_PARAMS == EXPECTED_PARAMS[name]
    by_part = official["params_by_submodule"]
    for part in ("pre", "freqfusions", "align"):
        assert sum(p.numel() for p in getattr(head, part).parameters()) == by_part[f"decode_head.{part}"]
    assert sum(p.numel() for p in head.classifier.parameters()) == by_part["decode_head.offset_learning"]


def _tiny_head(classifier: str = "offset") -> OffSegHead:
    return OffSegHead([8, 16, 24, 32], [32, 32, 32, 32], num_classes=5, channels=32, classifier=classifier)


def _features(batch: int, height: int, width: int, channels=(8, 16, 24, 32)) -> list[torch.Tensor]:
    """Random backbone maps for an image of (height, width) padded to a multiple of 32."""
    ph, pw = -(-height // 32) * 32, -(-width // 32) * 32
    return [torch.randn(batch, c, ph // s, pw // s) for c, s in zip(channels, (4, 8, 16, 32))]


@pytest.mark.parametrize("classifier,cls_type", [("offset", OffsetLearning), ("linear", LinearClassifier)])
def test_forward_shapes_for_both_classifiers(classifier, cls_type):
    head = _tiny_head(classifier)
    assert isinstance(head.classifier, cls_type)
    assert head.num_classes == 5 and head.output_stride == 4
    feats = _features(2, 64, 96)
    logits = head(feats)
    assert logits.shape == (2, 5, 16, 24)
    out = head(feats, return_intermediates=True)
    assert isinstance(out, ClassifierOutput)
    assert out.logits.shape == (2, 5, 16, 24)
    assert out.features.shape == (2, 16 * 24, 32)
    head.eval()
    with torch.no_grad():
        # Fused and plain Offset Learning paths: products over 32 channels and 384 pixels.
        assert_close_scaled(head(feats), head(feats, return_intermediates=True).logits, 16 * 24)


def test_classifier_options_are_passed_on():
    head = OffSegHead([8, 16, 24, 32], [32, 32, 32, 32], 5, channels=32, classifier_options={"feature_offsets": False})
    assert head.classifier.feat_offset_proj is None


@pytest.mark.parametrize("classifier", ["offset", "linear"])
def test_gradients_reach_every_parameter(classifier):
    head = _tiny_head(classifier).train()
    # 128 px: the stride-32 map is 4x4. (At 2x2 every dilation-2 neighbour of the sampler's similarity
    # is padding, so its offset conv weights would rightly get no gradient.)
    logits = head(_features(2, 128, 128))
    (logits * torch.randn_like(logits)).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("size", [(97, 61), (250, 333)])
def test_any_input_size_padded_to_32(size):
    head = _tiny_head().eval()
    feats = _features(1, *size)
    with torch.no_grad():
        logits = head(feats)
    assert logits.shape == (1, 5, *feats[0].shape[-2:])
    assert torch.isfinite(logits).all()


@pytest.mark.numeric
def test_segmentor_with_efficientformer_predicts_at_input_size():
    backbone = efficientformer_v2("s1")
    model = Segmentor(backbone, OffSegHead(backbone.out_channels, [32, 32, 64, 128], num_classes=7)).eval()
    x = torch.randn(1, 3, 97, 61)
    logits = model.predict(x)
    expected = expected_whole_predict(model, x)  # padded to 128 x 64, resized, cropped
    assert logits.shape == expected.shape == (1, 7, 97, 61)
    assert_close_scaled(logits, expected, 4)


def test_group_interleave_order():
    a = torch.arange(8.0).view(1, 8, 1, 1)  # 4 groups of 2
    b = 100 + torch.arange(4.0).view(1, 4, 1, 1)  # 4 groups of 1
    got = group_interleave(a, b).flatten().tolist()
    assert got == [0, 1, 100, 2, 3, 101, 4, 5, 102, 6, 7, 103]


def test_running_channels_and_compression_follow_the_spec():
    head = OffSegHead([32, 48, 120, 224], [32, 32, 64, 128], num_classes=150)
    compressed = [f.hr_channel_compressor.out_channels for f in head.freqfusions]
    assert compressed == [48, 56, 64]
    assert head.align.conv.in_channels == 256
    head_b = OffSegHead([32, 64, 144, 288], [32, 64, 128, 256], num_classes=150)
    assert [f.hr_channel_compressor.out_channels for f in head_b.freqfusions] == [96, 112, 120]
    assert head_b.align.conv.in_channels == 480


def test_bad_inputs_raise_clear_errors():
    head = _tiny_head()
    with pytest.raises(InputError, match="4 feature maps"):
        head(_features(1, 64, 64)[:3])
    feats = _features(1, 64, 64)
    feats[2] = torch.randn(1, 25, 4, 4)
    with pytest.raises(InputError, match="input 2"):
        head(feats)
    with pytest.raises(ConfigError):
        OffSegHead([8, 16, 24, 32], [32, 32, 32], num_classes=5)
    with pytest.raises(ConfigError, match="GroupNorm with 32 groups needs a channel count divisible by 32"):
        OffSegHead([8, 16, 24, 32], [16, 32, 32, 32], num_classes=5)
