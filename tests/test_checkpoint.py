"""Weights files and training checkpoints: round trips, atomicity, clear errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from offseg_vis.engine.checkpoint import (
    load_model,
    load_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from offseg_vis.errors import CheckpointError
from offseg_vis.models import build_model
from offseg_vis.models.weights import load_weights, read_metadata, save_weights, sidecar_path


@pytest.fixture(scope="module")
def mbv2():
    torch.manual_seed(0)
    return build_model("offseg-mbv2", num_classes=11, classifier="offset")


def test_round_trip_and_sidecar(tmp_path, mbv2):
    path = save_weights(mbv2, tmp_path / "w", {"step": 7, "class_names": ["c"] * 11})
    assert path.name == "w.safetensors" and path.is_file()
    card = json.loads(sidecar_path(path).read_text())
    assert card["model"] == "offseg-mbv2" and card["num_classes"] == 11 and card["classifier"] == "offset"
    assert card["step"] == 7
    assert read_metadata(path)["step"] == 7
    torch.manual_seed(1)
    other = build_model("offseg-mbv2", num_classes=11, classifier="offset")
    meta = load_weights(other, path)
    assert meta["model"] == "offseg-mbv2"
    for (k, a), b in zip(mbv2.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
    # no temp files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.json", "w.safetensors"]


def test_half_precision(tmp_path, mbv2):
    path = save_weights(mbv2, tmp_path / "h.safetensors", {}, half=True)
    full = save_weights(mbv2, tmp_path / "f.safetensors", {})
    assert path.stat().st_size < 0.6 * full.stat().st_size
    other = build_model("offseg-mbv2", num_classes=11, classifier="offset")
    load_weights(other, path)
    w = mbv2.decode_head.classifier.cls_repr
    assert other.decode_head.classifier.cls_repr.dtype == torch.float32
    # float16 rounds each value to the nearest of 11 significant bits: relative error <= 2**-11, or
    # half the subnormal spacing (2**-25) below 2**-14.
    got = other.decode_head.classifier.cls_repr.detach()
    assert torch.all((got - w.detach()).abs() <= torch.clamp(w.detach().abs() * 2**-11, min=2**-25))
    assert not torch.equal(got, w.detach())  # and it did round


def test_mismatch_names_both_models(tmp_path, mbv2):
    path = save_weights(mbv2, tmp_path / "w", {})
    five = build_model("offseg-mbv2", num_classes=5, classifier="offset")
    with pytest.raises(CheckpointError) as err:
        load_weights(five, path)
    text = str(err.value)
    assert "11 classes" in text and "5 classes" in text and "offseg-mbv2" in text
    linear = build_model("offseg-mbv2", num_classes=11, classifier="linear")
    with pytest.raises(CheckpointError, match="offset classifier.*linear classifier"):
        load_weights(linear, path)


def test_corrupt_and_truncated_files(tmp_path, mbv2):
    path = save_weights(mbv2, tmp_path / "w", {})
    data = path.read_bytes()
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_weights(mbv2, truncated)
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\x00\x01not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_weights(mbv2, garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(mbv2, tmp_path / "missing")


def test_load_model_from_metadata(tmp_path, mbv2):
    path = save_weights(mbv2, tmp_path / "w", {"config": {"model": {"classifier_options": {}}}})
    model, meta = load_model(path)
    assert meta["num_classes"] == 11 and not model.training
    x = torch.randn(1, 3, 64, 64)
    mbv2.eval()
    assert torch.equal(model(x), mbv2(x))  # the same weights through the same kernels


def test_training_state_round_trip(tmp_path, mbv2):
    opt = torch.optim.AdamW(mbv2.parameters(), lr=1e-3)
    mbv2.train()
    mbv2.loss(torch.randn(2, 3, 32, 32), torch.randint(0, 11, (2, 32, 32))).backward()
    opt.step()
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    rng = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    save_checkpoint(tmp_path, "last", mbv2, {"step": 5}, {"optimizer": opt.state_dict(), "rng": rng})
    state = load_training_state(tmp_path, "last")
    assert state["step"] == 5
    set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    opt2 = torch.optim.AdamW(mbv2.parameters(), lr=1e-3)
    opt2.load_state_dict(state["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_training_state_errors(tmp_path, mbv2):
    with pytest.raises(CheckpointError, match="Cannot resume"):
        load_training_state(tmp_path, "last")
    save_checkpoint(tmp_path, "last", mbv2, {"step": 5}, {"x": 1})
    # weights of a later step without their state: a crash between the two renames
    save_weights(mbv2, tmp_path / "last", {"step": 6})
    with pytest.raises(CheckpointError, match="do not belong together"):
        load_training_state(tmp_path, "last")
    (tmp_path / "last.state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_training_state(tmp_path, "last")


def test_predict_command_writes_masks_and_overlays(tmp_path):
    from PIL import Image

    from offseg_vis.cli import main

    torch.manual_seed(0)  # a fresh model: the shared one took an optimiser step above and predicts one class
    mbv2 = build_model("offseg-mbv2", num_classes=11, classifier="offset").eval()
    palette = [[0, 0, 0]] + [[20 * i, 255 - 20 * i, 7 * i] for i in range(1, 11)]
    ckpt = save_weights(mbv2, tmp_path / "w", {"palette": palette})
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image)
    assert main(["predict", str(ckpt), str(image), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    mask = np.asarray(Image.open(tmp_path / "out" / "photo_mask.png"))
    overlay = np.asarray(Image.open(tmp_path / "out" / "photo_overlay.png"))
    # The same model in the test: argmax of the whole-image logits, coloured with the card's palette.
    pixels = np.asarray(Image.open(image).convert("RGB"))
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None]  # (1, 3, H, W) uint8
    with torch.no_grad():
        labels = mbv2.eval().predict(mbv2.normalize(x))[0].argmax(0).numpy()  # (H, W)
    expected = np.asarray(palette, dtype=np.uint8)[labels]
    assert len(np.unique(labels)) > 1  # a uniform mask would make the comparison weak
    assert mask.shape == (40, 56, 3)
    assert np.array_equal(mask, expected)
    assert np.array_equal(overlay, (pixels * 0.5 + expected * 0.5).round().astype(np.uint8))  # default --alpha 0.5
    assert main(["predict", str(ckpt), str(tmp_path / "nope.png"), "--out", str(tmp_path / "out")]) == 2
