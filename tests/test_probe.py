"""probe(): one forward pass, per-image numpy arrays of everything the classifier computed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from offseg_vis.analysis.probe import IGNORE_INDEX, label_at_features, probe
from offseg_vis.errors import InputError
from offseg_vis.models import build_model

K = 5


pytestmark = pytest.mark.usefixtures("one_thread")  # small models on shared cores


@pytest.fixture(scope="module")
def offset_model():
    torch.manual_seed(0)
    return build_model("offseg-mbv2", K, "offset")


@pytest.fixture(scope="module")
def linear_model():
    torch.manual_seed(0)
    return build_model("offseg-mbv2", K, "linear")


def _images(n=2, size=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def test_offset_probe_fields_shapes_and_identities(offset_model):
    images = _images(2) + _images(1, (64, 96), seed=1)  # two sizes -> two forward passes
    labels = [np.random.default_rng(i).integers(0, K, im.shape[:2]) for i, im in enumerate(images)]
    probes = probe(offset_model, images, labels)
    assert len(probes) == 3
    c = offset_model.decode_head.channels
    for p, im, lab in zip(probes, images, labels):
        h, w = im.shape[0] // 4, im.shape[1] // 4
        assert p.is_offset_model and p.num_classes == K and p.embed_dims == c
        assert p.image is im and p.label.shape == im.shape[:2]
        np.testing.assert_array_equal(p.label, lab)
        assert p.prediction.shape == im.shape[:2] and p.prediction.dtype == np.int64
        assert p.prediction_before_offsets.shape == im.shape[:2]
        assert p.features.shape == (h, w, c) and p.feature_size == (h, w)
        assert p.class_embed.shape == (K, c)
        assert p.logits.shape == (K, h, w) and p.logits_without_offsets.shape == (K, h, w)
        np.testing.assert_allclose(p.refined_features, p.features + p.feature_offset, atol=1e-5)
        np.testing.assert_allclose(p.refined_class_embed, p.class_embed + p.class_offset, atol=1e-6)
        assert p.class_attention.shape == (K, h, w)
        np.testing.assert_allclose(p.class_attention.reshape(K, -1).sum(1), 1.0, atol=1e-4)
        assert p.position_attention.shape == (h, w, K)
        np.testing.assert_allclose(p.position_attention.sum(-1), 1.0, atol=1e-4)
        # W is the module's parameter.
        w_param = offset_model.classifier.class_embed.detach().numpy()
        np.testing.assert_allclose(p.class_embed, w_param, atol=1e-7)
    # The logits are the model's own forward; the ablation logits are LN_K(E·Wᵀ) recomputed in float64
    # from the probe's E and W with the module's LayerNorm parameters.
    ln = offset_model.classifier.mask_norm
    gamma, beta = ln.weight.detach().double().numpy(), ln.bias.detach().double().numpy()
    offset_model.eval()  # probe() runs in eval mode (BatchNorm running statistics); so must the reference
    for group in ([0, 1], [2]):  # the two sizes of images
        x = torch.from_numpy(np.stack([images[i] for i in group])).permute(0, 3, 1, 2)
        with torch.no_grad():
            direct = offset_model(offset_model.normalize(x)).numpy()  # (B, K, h, w), fused path
        for j, i in enumerate(group):
            p = probes[i]
            # fused vs full path in fp32: logits are LayerNorm outputs of size ~1, sums over C = 128 terms
            np.testing.assert_allclose(p.logits, direct[j], rtol=0, atol=2e-4)
            a = p.features.astype(np.float64) @ p.class_embed.astype(np.float64).T  # (h, w, K)
            z = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + ln.eps)
            expected = (z * gamma + beta).transpose(2, 0, 1)  # (K, h, w)
            np.testing.assert_allclose(p.logits_without_offsets, expected, rtol=0, atol=2e-4)


def test_probe_prediction_matches_segmentor_predict(offset_model):
    images = _images(2, seed=3)
    probes = probe(offset_model, images)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    offset_model.eval()
    with torch.no_grad():
        expected = offset_model.predict(offset_model.normalize(x)).argmax(1).numpy()
        out = offset_model(offset_model.normalize(x), return_intermediates=True)
    for p, e in zip(probes, expected):
        np.testing.assert_array_equal(p.prediction, e)
        assert p.label is None
    before = out.classifier.logits_without_offsets.transpose(1, 2).reshape(2, K, 16, 16)
    up = F.interpolate(before, size=(64, 64), mode="bilinear", align_corners=False).argmax(1).numpy()
    np.testing.assert_array_equal(probes[0].prediction_before_offsets, up[0])


def test_tensor_and_list_inputs_agree_and_training_mode_is_restored(offset_model):
    images = _images(2, seed=4)
    offset_model.train()
    from_list = probe(offset_model, images)
    assert offset_model.training
    chw = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # (B, 3, H, W)
    from_tensor = probe(offset_model, chw)
    hwc = np.stack(images)  # (B, H, W, 3)
    from_array = probe(offset_model, hwc, batch_size=1)
    offset_model.eval()
    for a, b, c in zip(from_list, from_tensor, from_array):
        np.testing.assert_array_equal(a.prediction, b.prediction)
        np.testing.assert_allclose(a.features, c.features, atol=1e-5)


def test_zero_offset_projections_give_identical_before_and_after():
    torch.manual_seed(1)
    model = build_model("offseg-mbv2", K, "offset")
    with torch.no_grad():
        model.classifier.cls_offset_proj.weight.zero_()
        model.classifier.feat_offset_proj.weight.zero_()
    (p,) = probe(model, _images(1, seed=5))
    np.testing.assert_array_equal(p.prediction, p.prediction_before_offsets)
    np.testing.assert_array_equal(p.refined_features, p.features)
    np.testing.assert_array_equal(p.refined_class_embed, p.class_embed)
    np.testing.assert_allclose(p.logits, p.logits_without_offsets, atol=1e-5)


def test_linear_probe_has_no_offset_fields(linear_model):
    (p,) = probe(linear_model, _images(1, seed=6))
    assert not p.is_offset_model
    for name in (
        "feature_offset",
        "refined_features",
        "class_offset",
        "refined_class_embed",
        "class_attention",
        "position_attention",
    ):
        assert getattr(p, name) is None
    np.testing.assert_array_equal(p.prediction, p.prediction_before_offsets)
    np.testing.assert_allclose(p.class_embed, linear_model.classifier.weight.detach().numpy())


def test_input_errors(offset_model):
    with pytest.raises(InputError, match="uint8"):
        probe(offset_model, [np.zeros((32, 32, 3), dtype=np.float32)])
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        probe(offset_model, [np.zeros((32, 32), dtype=np.uint8)])
    with pytest.raises(InputError, match="labels"):
        probe(offset_model, _images(2), labels=[np.zeros((64, 64))])
    with pytest.raises(InputError, match="must match"):
        probe(offset_model, _images(1), labels=[np.zeros((8, 8))])
    with pytest.raises(InputError, match="no images"):
        probe(offset_model, [])


def test_label_at_features_majority_vote_and_padding():
    lab = np.zeros((8, 8), dtype=np.int64)
    lab[:4, :4] = 2  # top-left cell
    lab[4:, :3] = IGNORE_INDEX  # 12/16 ignore -> ignored
    lab[4:, 4:] = 1
    lab[4, 4] = 3  # minority inside the bottom-right cell
    grid = label_at_features(lab, (2, 2), num_classes=4)
    np.testing.assert_array_equal(grid, [[2, 0], [IGNORE_INDEX, 1]])
    # padded canvas (8 -> 16): the padding is ignore
    padded = label_at_features(lab, (4, 4), padded_size=(16, 16), num_classes=4)
    assert (padded[2:, :] == IGNORE_INDEX).all() and padded[0, 0] == 2
    with pytest.raises(InputError, match="classes"):
        label_at_features(lab, (2, 2), num_classes=2)


def test_need_computes_only_what_is_asked_and_values_match(offset_model):
    images = _images(2, seed=7)
    full = probe(offset_model, images)
    fast = probe(offset_model, images, need={"prediction"})
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    offset_model.eval()
    with torch.no_grad():
        direct = offset_model.predict(offset_model.normalize(x)).argmax(1).numpy()  # (B, H, W)
    for f, q, d in zip(full, fast, direct):
        np.testing.assert_array_equal(q.prediction, d)
        np.testing.assert_array_equal(q.prediction, f.prediction)
        assert q.computed == {"prediction"} and q.num_classes == K and q.feature_size == (16, 16)
        assert q.is_offset_model
        for name in ("logits", "features", "class_attention", "position_attention", "feature_offset"):
            assert getattr(q, name) is None
        with pytest.raises(InputError, match="without class_attention"):
            q.require("class_attention")
    some = probe(offset_model, images, need={"features", "class_embed"})
    for f, q in zip(full, some):
        np.testing.assert_array_equal(q.features, f.features)
        np.testing.assert_array_equal(q.class_embed, f.class_embed)
        np.testing.assert_array_equal(q.prediction, f.prediction)
        assert q.class_attention is None and q.refined_features is None and q.logits is None
    with pytest.raises(InputError, match="cannot compute"):
        probe(offset_model, images, need={"attention"})


def test_need_takes_the_fused_path_without_attention(offset_model, monkeypatch):
    """With need ⊆ {prediction, logits} the classifier's full path (which forms the attentions) never runs."""
    calls = []
    original = type(offset_model.classifier).full_forward
    monkeypatch.setattr(
        type(offset_model.classifier), "full_forward", lambda self, x: calls.append(1) or original(self, x)
    )
    (q,) = probe(offset_model, _images(1, seed=8), need={"prediction", "logits"})
    assert calls == [] and q.logits.shape == (K, 16, 16)
    probe(offset_model, _images(1, seed=8))
    assert calls == [1]


@pytest.mark.parametrize("which", ["offset_model", "linear_model"])
def test_complete_probe_from_the_kept_classifier_input_equals_a_full_probe(which, request, monkeypatch):
    """The app segments with the fast path, then adds the intermediates by running only the classifier."""
    from offseg_vis.analysis.probe import OUTPUTS, complete_probe

    model = request.getfixturevalue(which)
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)  # padded to the backbone's divisor
    label = rng.integers(0, model.num_classes, (70, 90))
    full = probe(model, [image], [label])[0]
    fast = probe(model, [image], [label], need={"prediction"}, keep_classifier_input=True)[0]
    assert fast.classifier_input is not None and fast.features is None
    fast_unlabelled = probe(model, [image], need={"prediction"}, keep_classifier_input=True)[0]
    calls = []
    monkeypatch.setattr(model.backbone, "forward", lambda *a, **k: calls.append(1))  # must not run again
    completed = complete_probe(model, fast)
    assert not calls
    assert completed.computed == full.computed
    for name in OUTPUTS:
        ours, ref = getattr(completed, name), getattr(full, name)
        assert (ours is None) == (ref is None), name
        if ref is not None:
            np.testing.assert_array_equal(ours, ref, err_msg=name)
    # an upload has no ground truth: the same without a label
    unlabelled = complete_probe(model, fast_unlabelled)
    assert unlabelled.label is None
    np.testing.assert_array_equal(unlabelled.features, full.features)
    # without a kept input the whole model runs again (and gives the same)
    monkeypatch.undo()
    again = complete_probe(model, probe(model, [image], [label], need={"prediction"})[0], need={"features"})
    np.testing.assert_array_equal(again.features, full.features)
