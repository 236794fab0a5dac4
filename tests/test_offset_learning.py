"""OffsetLearning: exactness to the spec, the fused path, ablations, and the official vectors."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_scaled, assert_fails_scaled
from safetensors.torch import load_file

from offseg_vis.models.offset_learning import (
    ClassifierOutput,
    LinearClassifier,
    OffsetLearning,
    _pixel_products,
    build_classifier,
)

pytestmark = pytest.mark.numeric


def naive_reference(module: OffsetLearning, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel Python loops over the spec's formulas (float64), (B, K, H, W)."""
    x = x.double()
    b, c, h, w = x.shape
    W = module.cls_repr[0].double()
    k = W.shape[0]
    out = torch.empty(b, k, h, w, dtype=torch.float64)
    for i in range(b):
        E = x[i].reshape(c, h * w).t()  # (N, C)
        A = torch.stack([torch.stack([E[n] @ W[j] for j in range(k)]) for n in range(h * w)])  # (N, K)
        dW = torch.zeros(k, c, dtype=torch.float64)
        if module.cls_offset_proj is not None:
            for j in range(k):
                attn = torch.softmax(A[:, j], dim=0)
                proto = (attn[:, None] * E).sum(0)
                dW[j] = module.cls_offset_proj.weight.double() @ proto
        dE = torch.zeros(h * w, c, dtype=torch.float64)
        if module.feat_offset_proj is not None:
            for n in range(h * w):
                attn = torch.softmax(A[n], dim=0)
                ctx = (attn[:, None] * W).sum(0)
                dE[n] = module.feat_offset_proj.weight.double() @ ctx
        for n in range(h * w):
            scores = torch.stack([(E[n] + dE[n]) @ (W[j] + dW[j]) for j in range(k)])
            mu, var = scores.mean(), scores.var(unbiased=False)
            normed = (scores - mu) / torch.sqrt(var + 1e-5)
            normed = normed * module.mask_norm.weight.double() + module.mask_norm.bias.double()
            out[i, :, n // w, n % w] = normed
    return out


def _randomise(module: OffsetLearning, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_shapes_and_parameter_count():
    ol = OffsetLearning(150, 256)
    assert sum(p.numel() for p in ol.parameters()) == 150 * 256 + 2 * 256 * 256 + 2 * 150 == 169_772
    out = ol(torch.randn(2, 256, 5, 7), return_intermediates=True)
    assert isinstance(out, ClassifierOutput)
    assert out.logits.shape == (2, 150, 5, 7)
    assert out.features.shape == out.refined_features.shape == out.feature_offset.shape == (2, 35, 256)
    assert out.class_offset.shape == out.refined_class_embed.shape == (2, 150, 256)
    assert out.class_attention.shape == out.position_attention.shape == (2, 35, 150)
    assert out.spatial_size == (5, 7)
    assert_close_scaled(out.class_attention.sum(1), torch.ones(2, 150), 35)  # sums over the 35 pixels
    assert_close_scaled(out.position_attention.sum(2), torch.ones(2, 35), 150)  # sums over the 150 classes


def test_state_dict_names_match_official():
    keys = {k: tuple(v.shape) for k, v in OffsetLearning(150, 256).state_dict().items()}
    assert keys == {
        "cls_repr": (1, 150, 256),
        "cls_offset_proj.weight": (256, 256),
        "feat_offset_proj.weight": (256, 256),
        "mask_norm.weight": (150,),
        "mask_norm.bias": (150,),
    }


def test_matches_naive_loop_reference():
    ol = OffsetLearning(5, 6)
    _randomise(ol)
    x = torch.randn(2, 6, 3, 4)
    ref = naive_reference(ol, x)
    with torch.no_grad():
        got = ol.full_forward(x).logits.double()
    assert_close_scaled(got, ref, 3 * 4)  # longest reduction: the 12 pixels


@pytest.mark.parametrize("class_offsets,feature_offsets", [(True, True), (True, False), (False, True)])
def test_fused_equals_plain(class_offsets, feature_offsets):
    torch.manual_seed(1)
    ol = OffsetLearning(150, 256, class_offsets=class_offsets, feature_offsets=feature_offsets)
    _randomise(ol, 3)
    with torch.no_grad():
        for p in ol.parameters():
            p.mul_(0.1)
    x = torch.randn(2, 256, 16, 12)
    with torch.no_grad():
        plain = ol.full_forward(x).logits
        fused = ol(x)  # no intermediates + no grad -> fused path
    assert_close_scaled(fused, plain, 16 * 12)  # longest reduction: the 192 pixels (C = 256 is close)


def test_fused_path_is_used_only_without_grad(monkeypatch):
    ol = OffsetLearning(4, 8)
    calls = []
    original = OffsetLearning.fused_scores
    monkeypatch.setattr(OffsetLearning, "fused_scores", lambda self, x: calls.append(1) or original(self, x))
    x = torch.randn(1, 8, 3, 3)
    ol(x)  # grad enabled, parameters require grad -> plain path
    assert calls == []
    with torch.no_grad():
        ol(x)
    assert calls == [1]


def test_every_parameter_gets_gradient():
    ol = OffsetLearning(7, 16)
    ol(torch.randn(2, 16, 4, 5)).square().mean().backward()
    for name, p in ol.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "class_offsets,feature_offsets,present,absent",
    [
        (False, True, {"cls_repr", "feat_offset_proj.weight"}, "cls_offset_proj"),
        (True, False, {"cls_repr", "cls_offset_proj.weight"}, "feat_offset_proj"),
    ],
)
def test_ablations_train_exactly_their_parameters(class_offsets, feature_offsets, present, absent):
    ol = OffsetLearning(7, 16, class_offsets=class_offsets, feature_offsets=feature_offsets)
    names = {n for n, _ in ol.named_parameters()}
    assert not any(n.startswith(absent) for n in names)
    out = ol(torch.randn(2, 16, 4, 5), return_intermediates=True)
    out.logits.square().mean().backward()
    for name, p in ol.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert present <= names
    zero = out.class_offset if not class_offsets else out.feature_offset
    assert zero.abs().max() == 0


def test_gradcheck_float64():
    ol = OffsetLearning(3, 4).double()
    _randomise(ol, 5)
    ol.double()
    x = torch.randn(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ol(t), (x,), eps=1e-6, atol=1e-4)


def test_batch_independence():
    ol = OffsetLearning(11, 32)
    _randomise(ol, 7)
    x = torch.randn(3, 32, 6, 6)
    with torch.no_grad():
        together = ol(x)
        alone = ol(x[1:2])
        other = ol(torch.cat([x[1:2], torch.randn(2, 32, 6, 6)]))
    assert_close_scaled(together[1:2], alone, 36)  # 36 pixels, 32 channels
    assert_close_scaled(other[:1], alone, 36)


def test_zero_projections_leave_features_unchanged():
    ol = OffsetLearning(5, 8)
    with torch.no_grad():
        ol.cls_offset_proj.weight.zero_()
        ol.feat_offset_proj.weight.zero_()
    out = ol(torch.randn(2, 8, 3, 3), return_intermediates=True)
    # Adding an exact zero changes nothing: bit-for-bit equal. The two logits come from separate
    # 8-channel products (different memory layouts), so they agree to rounding only.
    assert torch.equal(out.refined_features, out.features)
    assert torch.equal(out.refined_class_embed, out.class_embed.expand(2, -1, -1))
    assert_close_scaled(out.logits_without_offsets, out.logits.flatten(2).transpose(1, 2), 8)


def test_logit_norm_variants():
    x = torch.randn(1, 8, 3, 3)
    scaled = OffsetLearning(5, 8, logit_norm="scaled_layernorm")
    assert scaled.logit_scale is not None and scaled.logit_scale.item() == 1.0
    raw = OffsetLearning(5, 8, logit_norm="none")
    assert raw.mask_norm is None
    out = raw(x, return_intermediates=True)
    assert torch.equal(out.logits.flatten(2).transpose(1, 2), out.logits_before_norm)  # a reshape only
    with pytest.raises(ValueError, match="logit_norm"):
        OffsetLearning(5, 8, logit_norm="batchnorm")


def test_linear_classifier_shares_the_interface():
    lin = build_classifier("linear", 6, 10)
    assert isinstance(lin, LinearClassifier)
    x = torch.randn(2, 10, 4, 3)
    plain = lin(x)
    out = lin(x, return_intermediates=True)
    assert plain.shape == out.logits.shape == (2, 6, 4, 3)
    assert_close_scaled(plain, out.logits, 10)  # a 10-channel 1x1 conv either way
    assert out.feature_offset is None and out.class_offset is None
    with pytest.raises(ValueError, match="choose one of"):
        build_classifier("mlp", 6, 10)
    with pytest.raises(ValueError, match="expects features"):
        lin(torch.randn(2, 9, 4, 3))


def official_reference64(
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    class_softmax_over: str = "pixels",
    class_offsets: bool = True,
    feature_offsets: bool = True,
) -> dict[str, torch.Tensor]:
    """The spec's Offset Learning, vectorised, in float64: x (B, C, H, W) -> logits (B, K, H, W) and
    the intermediates the vectors store. The keyword arguments build deliberately wrong variants for
    the negative checks (softmax of the class side over K instead of HW; an offset term left out)."""
    b, c, h, w = x.shape
    e = x.double().flatten(2).transpose(1, 2)  # (B, N, C)
    cls = state["cls_repr"][0].double()  # (K, C)
    a = e @ cls.t()  # (B, N, K), no scaling
    class_attn = a.softmax(dim=1 if class_softmax_over == "pixels" else 2)  # one distribution per class
    prototypes = class_attn.transpose(1, 2) @ e  # (B, K, C)
    d_cls = prototypes @ state["cls_offset_proj.weight"].double().t() if class_offsets else 0 * prototypes
    context = a.softmax(dim=2) @ cls  # (B, N, C), one distribution per pixel
    d_feat = context @ state["feat_offset_proj.weight"].double().t() if feature_offsets else 0 * context
    scores = (e + d_feat) @ (cls + d_cls).transpose(1, 2)  # (B, N, K)
    normed = torch.nn.functional.layer_norm(
        scores, (scores.shape[-1],), state["mask_norm.weight"].double(), state["mask_norm.bias"].double(), 1e-5
    )
    return {
        "logits": normed.transpose(1, 2).reshape(b, -1, h, w),
        "class_prototypes": prototypes,
        "cls_offset": d_cls,
        "pixel_class_context": context,
        "feat_offset": d_feat,
        "logits_before_norm": scores,
    }


@pytest.mark.parametrize("name", ["offset_learning_k11_c64", "offset_learning_k150_c256"])
def test_official_vectors(reference_dir, name):
    """Both paths equal the official output within the float32 rounding bound, and so does our own
    float64 reading of the spec; a wrong softmax axis or a missing offset term misses the same bound."""
    tensors = load_file(str(reference_dir / "vectors" / f"{name}.safetensors"))
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    k, c = state["cls_repr"].shape[1:]
    ol = OffsetLearning(k, c)
    ol.load_state_dict(state, strict=True)
    x = tensors["input.x"]
    ref = tensors["output.logits"]
    # Longest reduction: the softmax-weighted sums over the H*W pixels (C <= H*W in both vectors).
    n = max(x.shape[2] * x.shape[3], c)
    with torch.no_grad():
        out = ol(x, return_intermediates=True)
        fused = ol(x)
    assert_close_scaled(out.logits, ref, n, name="logits")
    assert_close_scaled(fused, ref, n, name="fused logits")
    ours = {
        "class_prototypes": out.class_prototypes,
        "cls_offset": out.class_offset,
        "pixel_class_context": out.position_attention @ out.class_embed,  # softmax_K(A)·W is not a field
        "feat_offset": out.feature_offset,
        "logits_before_norm": out.logits_before_norm,
    }
    truth = official_reference64(state, x)
    assert_close_scaled(truth["logits"], ref, n, name="float64 reference")
    checked = 0
    for key, got in ours.items():
        if f"intermediate.{key}" not in tensors:
            continue
        expected = tensors[f"intermediate.{key}"]
        assert_close_scaled(got, expected, n, name=key)
        assert_close_scaled(truth[key], expected, n, name=f"float64 {key}")
        checked += 1
    assert checked >= 3
    # Negative checks: each mistake, computed exactly, must fail the tolerance used above.
    wrong_axis = official_reference64(state, x, class_softmax_over="classes")
    no_feature_offset = official_reference64(state, x, feature_offsets=False)
    no_class_offset = official_reference64(state, x, class_offsets=False)
    assert_fails_scaled(wrong_axis["logits"], ref, n, name="class-side softmax over K")
    assert_fails_scaled(no_feature_offset["logits"], ref, n, name="logits without the feature offset")
    assert_fails_scaled(no_class_offset["logits"], ref, n, name="logits without the class offset")


@pytest.mark.parametrize("num_classes", [11, 31, 32, 150])
@pytest.mark.parametrize("batched_mat", [False, True])
def test_pixel_products_equal_plain_matmul_on_both_layouts(num_classes, batched_mat):
    # Both branches (K < 32 via the (B, K, N) layout, K >= 32 direct) and both strides of E:
    # the transposed view of (B, C, H, W) features and a contiguous (B, N, C) tensor.
    torch.manual_seed(0)
    x = torch.randn(2, 24, 5, 7)
    e_view = x.flatten(2).transpose(1, 2)  # (B, N, C), channels-first storage
    e_contig = e_view.contiguous()
    mat = torch.randn(2, num_classes, 24) if batched_mat else torch.randn(num_classes, 24)
    spec = "bnc,bkc->bnk" if batched_mat else "bnc,kc->bnk"
    expected = torch.einsum(spec, e_contig.double(), mat.double()).float()
    for e in (e_view, e_contig):
        got = _pixel_products(mat, e)
        assert got.shape == (2, 35, num_classes)
        assert got.is_contiguous()
        assert_close_scaled(got, expected, 24)  # a 24-channel dot product


@pytest.mark.parametrize(
    "name, edited",
    [("offseg-t", "backbone.network.0.0.mlp.norm1.running_mean"), ("offseg-mbv2", "decode_head.classifier.cls_repr")],
)
def test_model_inference_path_equals_plain_path(name, edited):
    """The optimised inference path (fused Offset Learning; for offseg-t also the folded conv + BN
    backbone) gives the plain path's logits (eval mode with autograd on: unfused, unfolded modules).

    Tolerance: fp32 rounding scaled by the logits' magnitude; the two paths differ only in
    summation order, over a deep network (factor 64, as for the decoder's previous-implementation
    check). Editing one parameter or statistic afterwards must miss it by 10x: the check can fail.
    """
    from offseg_vis.models import build_model

    torch.manual_seed(0)
    model = build_model(name, num_classes=19, classifier="offset").eval()
    with torch.no_grad():
        for p in model.parameters():  # default init leaves layer scales at 1e-5: make every path count
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(1, 3, 96, 128)
    with torch.enable_grad():
        plain = model(x)
    with torch.inference_mode():
        fast = model(x)
    assert_close_scaled(fast, plain, reduction_len=256, factor=64.0, name=f"{name} logits")
    with torch.no_grad():
        dict(model.named_parameters(), **dict(model.named_buffers()))[edited].add_(0.5)
    with torch.inference_mode():
        edited_out = model(x)
    assert_fails_scaled(edited_out, plain, reduction_len=256, factor=64.0, name=f"{name} with {edited} edited")
