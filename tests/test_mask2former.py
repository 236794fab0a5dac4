"""Mask2Former(-OL): shapes, parameter counts, matching, deformable attention, Offset Learning on
query masks, checkpoint conversion, and a tiny model overfitting 4 FashionScenes images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from offseg_vis.errors import CheckpointError, ConfigError, InputError
from offseg_vis.models.mask2former import (
    CriterionConfig,
    Mask2FormerOutput,
    OffsetLearningMask,
    build_mask2former,
    convert_official_mask2former,
    semantic_logits,
    tiny_config,
)
from offseg_vis.models.mask2former.criterion import (
    Mask2FormerCriterion,
    hungarian_match,
    point_sample,
    semantic_to_targets,
)
from offseg_vis.models.mask2former.deformable_attention import (
    multi_scale_deformable_attention,
    multi_scale_deformable_attention_reference,
)
from offseg_vis.models.mask2former.layers import sine_position_encoding
from offseg_vis.models.mask2former.offset_learning_mask import DotProductMask
from offseg_vis.models.mask2former.swin import PatchMerging, SwinTransformer, shifted_window_mask

K = 5


# These models are small: one thread (tests/conftest.py) is about as fast and does not stall on a shared CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["offset", "linear"])
def tiny_model(request):
    torch.manual_seed(0)
    return build_mask2former(K, request.param, "tiny").eval()


# ----------------------------------------------------------------------------- shapes and API


def test_forward_predict_and_intermediate_shapes(tiny_model):
    q = tiny_model.config.head.num_queries
    c = tiny_model.config.head.feat_channels
    images = torch.randn(2, 3, 70, 45)  # padded to 96 x 64 for the backbone
    with torch.no_grad():
        logits = tiny_model(images)
        out = tiny_model(images, return_intermediates=True)
    assert logits.shape == (2, K, 24, 16)
    assert isinstance(out, Mask2FormerOutput)
    torch.testing.assert_close(out.logits, logits)
    n = 24 * 16
    view = out.classifier
    assert view.features.shape == (2, n, c) and view.class_embed.shape == (2, q, c)
    assert view.coupled_logits.shape == (2, n, q) and view.logits_without_offsets.shape == (2, n, K)
    assert out.class_logits.shape == (2, q, K + 1) and out.mask_logits.shape == (2, q, 24, 16)
    assert out.query_class_probs.shape == (2, q, K) and out.query_labels.shape == (2, q)
    assert len(out.predictions.mask_logits) == tiny_model.config.head.decoder_layers + 1
    # The semantic logits are the last prediction's class-weighted masks.
    torch.testing.assert_close(logits, semantic_logits(out.class_logits, out.mask_logits))
    if tiny_model.decode_head.offset_learning is not None:
        assert view.refined_features.shape == (2, n, c) and view.class_offset.shape == (2, q, c)
        aligned = view.refined_features @ view.refined_class_embed.transpose(1, 2)  # (B, N, Q)
        torch.testing.assert_close(aligned.transpose(1, 2).reshape(2, q, 24, 16), out.mask_logits, rtol=1e-4, atol=1e-4)
    else:
        assert view.feature_offset is None
        torch.testing.assert_close(view.logits_without_offsets, logits.flatten(2).transpose(1, 2))
    for mode in ("whole", "slide"):
        pred = tiny_model.predict(torch.randn(1, 3, 97, 61), mode=mode, crop=64, stride=48)
        assert pred.shape == (1, K, 97, 61) and torch.isfinite(pred).all()


def test_loss_reaches_every_parameter_and_bridges_the_training_loop(tiny_model):
    model = tiny_model.train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, K, (2, 64, 64))
    labels[:, :8] = 255
    try:
        terms = model.loss_terms(images, labels)
        assert set(terms) >= {"loss_cls", "loss_mask", "loss_dice", "d0.loss_cls", "d1.loss_dice"}
        loss = model.loss(images, labels)
        model.zero_grad()
        loss.backward()
        missing = [name for name, p in model.named_parameters() if p.grad is None]
        assert not missing, missing
        # The engine's loop: logits = model(images); loss_from_logits(logits, labels).
        bridged = model.loss_from_logits(model(images), labels)
        assert bridged.ndim == 0 and torch.isfinite(bridged)
        with pytest.raises(InputError):
            model.loss_from_logits(torch.zeros(2, K, 16, 16), labels)
    finally:
        model.eval()


def test_bad_arguments_raise_our_errors():
    with pytest.raises(ConfigError):
        build_mask2former(K, "offset", "huge")
    with pytest.raises(ConfigError):
        build_mask2former(K, "linear", "tiny", classifier_options={"class_offsets": False})
    with pytest.raises(InputError):
        semantic_to_targets(torch.tensor([[0, 7]]), num_classes=5)


# ----------------------------------------------------------------------------- full size


@pytest.mark.parametrize(("classifier", "paper_m"), [("offset", 47.6), ("linear", 47.4)])
def test_full_swin_t_parameter_count_and_official_names(classifier, paper_m):
    from offseg_vis import build_model

    torch.manual_seed(0)
    model = build_model("mask2former-swin-t", 150, classifier=classifier)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / 1e6 - paper_m) / paper_m < 0.03, params
    keys = model.state_dict()
    for key in (
        "backbone.patch_embed.projection.weight",
        "backbone.stages.2.blocks.5.attn.w_msa.relative_position_bias_table",
        "backbone.stages.0.downsample.reduction.weight",
        "backbone.norm3.weight",
        "decode_head.pixel_decoder.input_convs.0.gn.weight",
        "decode_head.pixel_decoder.encoder.layers.5.self_attn.sampling_offsets.weight",
        "decode_head.pixel_decoder.encoder.layers.0.ffn.layers.0.0.weight",
        "decode_head.pixel_decoder.level_encoding.weight",
        "decode_head.pixel_decoder.mask_feature.weight",
        "decode_head.transformer_decoder.layers.8.cross_attn.attn.in_proj_weight",
        "decode_head.transformer_decoder.post_norm.weight",
        "decode_head.query_embed.weight",
        "decode_head.mask_embed.4.weight",
    ):
        assert key in keys, key
    assert keys["decode_head.cls_embed.weight"].shape == (151, 256)
    ol = [k for k in keys if "offset_learning" in k]
    if classifier == "offset":
        assert sorted(ol) == [
            "decode_head.offset_learning.cls_offset_proj.weight",
            "decode_head.offset_learning.feat_offset_proj.weight",
        ]
        with torch.no_grad():  # one small forward of the real configuration
            assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 150, 16, 16)
    else:
        assert not ol

    # Conversion: an mmseg-style checkpoint (wrapped, OL under another attribute name) maps back exactly.
    official = {k.replace("offset_learning", "ol_mask"): v for k, v in keys.items()}
    converted = convert_official_mask2former({"state_dict": official, "meta": {}})
    assert list(converted) == list(keys)
    with pytest.raises(CheckpointError, match="unknown key.*decode_head.conv_extra"):
        convert_official_mask2former({**official, "decode_head.conv_extra.weight": torch.zeros(1)})
    broken = dict(official)
    del broken["decode_head.query_feat.weight"]
    broken["decode_head.level_embed.weight"] = torch.zeros(4, 256)
    with pytest.raises(CheckpointError, match="keys missing.*query_feat.*shape mismatches.*level_embed"):
        convert_official_mask2former(broken)


# ----------------------------------------------------------------------------- matching and losses


def _perfect_predictions(gt_classes, gt_masks, perm, num_queries, num_classes):
    """Query perm[g] predicts target g exactly; the others predict "no object" with random masks."""
    cls = torch.full((num_queries, num_classes + 1), -5.0)
    cls[:, -1] = 5.0
    masks = torch.randn(num_queries, *gt_masks.shape[-2:])
    for g, q in enumerate(perm):
        cls[q] = -5.0
        cls[q, gt_classes[g]] = 5.0
        masks[q] = 12.0 * (2 * gt_masks[g].float() - 1)
    return cls, masks


def test_hungarian_matching_recovers_permuted_targets():
    torch.manual_seed(1)
    label = torch.zeros(32, 32, dtype=torch.long)
    label[2:12, 3:15], label[16:30, 1:9], label[14:28, 18:31], label[0:6, 24:32] = 1, 3, 4, 255
    classes, masks = semantic_to_targets(label, num_classes=5)
    assert classes.tolist() == [0, 1, 3, 4] and masks.shape == (4, 32, 32) and not masks[:, 0, 24:].any()
    cfg = CriterionConfig(num_points=512)
    for trial in range(5):
        perm = torch.randperm(8)[:4].tolist()
        cls, mask_logits = _perfect_predictions(classes, masks, perm, 8, 5)
        rows, cols = hungarian_match(cls, F.avg_pool2d(mask_logits[None], 2)[0], classes, masks, cfg)
        assert dict(zip(cols.tolist(), rows.tolist())) == dict(enumerate(perm)), trial

    # Equal masks: the class cost decides.  Equal class scores: the mask costs decide.
    two = torch.stack([masks[1], masks[1]])
    cls = torch.tensor([[0.0, 0.0, 0.0, 6.0, 0.0, 0.0], [0.0, 6.0, 0.0, 0.0, 0.0, 0.0]])
    rows, cols = hungarian_match(cls, 12.0 * (2 * two.float() - 1), torch.tensor([1, 3]), two, cfg)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}
    flat = torch.zeros(2, 6)
    rows, cols = hungarian_match(flat, 12.0 * (2 * masks[[2, 1]].float() - 1), classes[[1, 2]], masks[[1, 2]], cfg)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}


def test_matched_losses_are_small_only_for_right_classes_and_masks():
    torch.manual_seed(2)
    label = torch.zeros(2, 32, 32, dtype=torch.long)
    label[0, 4:20, 4:20], label[1, 10:30, 2:12], label[1, :, 20:] = 2, 1, 4
    criterion = Mask2FormerCriterion(5, CriterionConfig(num_points=400))
    targets = criterion.targets(label)
    good_cls, good_masks, bad_cls, bad_masks = [], [], [], []
    for classes, masks in targets:
        perm = torch.randperm(6)[: len(classes)].tolist()  # targets sit on arbitrary queries
        c, m = _perfect_predictions(classes, masks, perm, 6, 5)
        good_cls.append(c)
        good_masks.append(m)
        wrong = c.clone()
        wrong[perm] = wrong[perm].roll(1, dims=-1)  # right masks, wrong classes
        bad_cls.append(wrong)
        shifted = m.clone()
        shifted[perm] = m[perm].roll(9, dims=-1)  # right classes, displaced masks
        bad_masks.append(shifted)
    stack = torch.stack
    good = criterion.single_prediction_loss(stack(good_cls), stack(good_masks), targets)
    wrong_cls = criterion.single_prediction_loss(stack(bad_cls), stack(good_masks), targets)
    wrong_masks = criterion.single_prediction_loss(stack(good_cls), stack(bad_masks), targets)
    assert good["loss_cls"] < 0.01 and wrong_cls["loss_cls"] > 1.0
    # Points are importance-sampled on the boundaries, where even exact masks are uncertain.
    assert wrong_masks["loss_mask"] > 2 * good["loss_mask"]
    assert wrong_masks["loss_dice"] > 2 * good["loss_dice"]
    # An image without labelled pixels: every query is "no object" and the mask losses are zero.
    empty = criterion.single_prediction_loss(
        stack(good_cls[:1]), stack(good_masks[:1]), criterion.targets(torch.full((1, 32, 32), 255))
    )
    assert empty["loss_mask"] == 0 and empty["loss_dice"] == 0 and torch.isfinite(empty["loss_cls"])


def test_point_sample_hits_pixel_centres():
    grid = torch.arange(12.0).view(1, 1, 3, 4)
    coords = torch.tensor([[[0.125, 1 / 6], [0.875, 5 / 6], [0.25, 1 / 6]]])  # centres (0,0), (2,3); midpoint
    torch.testing.assert_close(point_sample(grid, coords)[0, 0], torch.tensor([0.0, 11.0, 0.5]))


# ----------------------------------------------------------------------------- deformable attention


def test_deformable_attention_matches_naive_loop():
    gen = torch.Generator().manual_seed(3)
    shapes = [(3, 5), (2, 3), (1, 2)]
    b, nq, heads, d, points = 2, 4, 2, 3, 3
    value = torch.randn(b, sum(h * w for h, w in shapes), heads, d, generator=gen, dtype=torch.float64)
    # Locations partly outside the map, where the zero padding is exercised.
    locations = torch.rand(b, nq, heads, len(shapes), points, 2, generator=gen, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(b, nq, heads, len(shapes), points, generator=gen, dtype=torch.float64)
    fast = multi_scale_deformable_attention(value, shapes, locations, weights)
    slow = multi_scale_deformable_attention_reference(value, shapes, locations, weights)
    assert fast.shape == (b, nq, heads * d)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- Offset Learning on masks


def test_offset_learning_mask_fused_path_equals_explicit_path_and_zero_offsets_are_plain():
    gen = torch.Generator().manual_seed(4)
    ol = OffsetLearningMask(16).double()
    for proj in (ol.cls_offset_proj, ol.feat_offset_proj):
        torch.nn.init.normal_(proj.weight, std=0.3, generator=gen)
    embed = torch.randn(2, 7, 16, generator=gen, dtype=torch.float64)
    feats = torch.randn(2, 16, 5, 6, generator=gen, dtype=torch.float64)
    full = ol(embed, feats, return_intermediates=True)
    torch.testing.assert_close(ol(embed, feats), full.logits)
    # By hand: A = E Wᵀ, ΔW from softmax over pixels, ΔE from softmax over queries, masks = W' E'ᵀ.
    e = feats.flatten(2).transpose(1, 2)
    a = e @ embed.transpose(1, 2)
    w_ref = embed + (a.softmax(1).transpose(1, 2) @ e) @ ol.cls_offset_proj.weight.t()
    e_ref = e + (a.softmax(2) @ embed) @ ol.feat_offset_proj.weight.t()
    torch.testing.assert_close(full.logits.flatten(2), w_ref @ e_ref.transpose(1, 2))
    assert sum(p.numel() for p in OffsetLearningMask(256).parameters()) == 2 * 256**2  # 131,072 (spec §1.5)
    for proj in (ol.cls_offset_proj, ol.feat_offset_proj):
        torch.nn.init.zeros_(proj.weight)
    torch.testing.assert_close(ol(embed, feats), DotProductMask()(embed, feats))


def test_one_offset_module_serves_every_prediction_and_drives_the_attention_masks():
    torch.manual_seed(5)
    model = build_mask2former(K, "offset", "tiny").eval()
    head = model.decode_head
    assert sum(isinstance(m, OffsetLearningMask) for m in model.modules()) == 1
    calls = []
    handle = head.offset_learning.register_forward_hook(lambda mod, args, out: calls.append(out.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    handle.remove()
    assert len(calls) == model.config.head.decoder_layers + 1
    # The block mask handed to the next layer comes from the aligned masks, not from W·Eᵀ.
    query = torch.randn(1, head.num_queries, 64)
    feats = torch.randn(1, 64, 16, 16)
    with torch.no_grad():
        torch.nn.init.normal_(head.offset_learning.feat_offset_proj.weight, std=0.5)
        _, masks, blocked, embed, _ = head._predict(query, feats, (4, 4), False)
        plain = DotProductMask()(embed, feats)
    torch.testing.assert_close(masks, head.offset_learning(embed, feats))
    expected = F.interpolate(masks, size=(4, 4), mode="bilinear", align_corners=False).sigmoid() < 0.5
    heads = model.config.head.decoder_heads
    assert torch.equal(blocked, expected.flatten(2).repeat_interleave(heads, dim=0))
    assert not torch.allclose(masks, plain)


# ----------------------------------------------------------------------------- backbone pieces


def test_swin_any_size_and_mmseg_merge_order():
    swin = SwinTransformer(tiny_config().backbone).eval()
    with torch.no_grad():
        outs = swin(torch.randn(1, 3, 70, 45))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 18, 12), (1, 64, 9, 6), (1, 128, 5, 3), (1, 256, 3, 2)]
    # PatchMerging concatenates like mmseg's nn.Unfold(2, stride=2): channel-major, then (dy, dx).
    merge = PatchMerging(3, 6)
    x = torch.randn(1, 3, 4, 6)
    torch.nn.init.eye_(merge.reduction.weight)
    merge.norm = torch.nn.Identity()
    ours, hw = merge(x.flatten(2).transpose(1, 2), (4, 6))
    unfold = F.unfold(x, kernel_size=2, stride=2).transpose(1, 2)[..., :6]
    assert hw == (2, 3)
    torch.testing.assert_close(ours, unfold)
    # Shifted windows: tokens glued together by the roll may not attend to each other.
    mask = shifted_window_mask(14, 14, 7, 3, torch.device("cpu"))
    assert mask.shape == (4, 49, 49) and mask[0].abs().sum() == 0 and (mask[3] < 0).any()


def test_sine_position_encoding_values():
    pos = sine_position_encoding(3, 4, num_feats=4, temperature=100.0)
    y, x = 2 * np.pi * 2 / (3 + 1e-6), 2 * np.pi * 3 / (4 + 1e-6)  # row 1, column 2 (1-based 2, 3)
    expected = [
        np.sin(y),
        np.cos(y),
        np.sin(y / 10),
        np.cos(y / 10),
        np.sin(x),
        np.cos(x),
        np.sin(x / 10),
        np.cos(x / 10),
    ]
    torch.testing.assert_close(pos[0, :, 1, 2], torch.tensor(expected, dtype=torch.float32))


# ----------------------------------------------------------------------------- learning


def _fashion_scenes_batch(n: int = 4, size: int = 64):
    """The first ``n`` FashionScenes val scenes, downsampled from 128 to ``size`` px."""
    from offseg_vis.data.fashion_scenes import FashionScenes

    ds = FashionScenes("val", stream=True, length=n)  # streamed: the same scenes, nothing cached on disk
    images, masks = zip(*[ds[i][:2] for i in range(n)])
    images = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float()  # (n, 3, 128, 128)
    masks = torch.tensor(np.stack(masks))  # (n, 128, 128)
    f = images.shape[-1] // size
    return F.avg_pool2d(images, f), masks[:, f // 2 :: f, f // 2 :: f]


def test_tiny_model_overfits_four_fashion_scenes():
    images, labels = _fashion_scenes_batch()
    torch.manual_seed(0)
    model = build_mask2former(11, "offset", "tiny")
    x = model.normalize(images)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    model.train()
    for _ in range(60):  # mIoU is about 0.92 by now for seeds 0-2 (0.94 after 100 steps)
        loss = model.loss(x, labels)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    pred = model.predict(x).argmax(1)
    conf = torch.bincount((labels * 11 + pred).flatten(), minlength=121).view(11, 11).double()
    present = conf.sum(1) > 0
    iou = conf.diag() / (conf.sum(0) + conf.sum(1) - conf.diag())
    miou = float(iou[present].mean())
    assert np.mean(losses[-5:]) <= 0.5 * np.mean(losses[:5]), (losses[:5], losses[-5:])
    assert miou >= 0.8, miou
