"""OffsetLearning: exactness to the spec, the fused path, ablations, and the official vectors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from offseg_vis.models.offset_learning import (
    ClassifierOutput,
    LinearClassifier,
    OffsetLearning,
    _pixel_products,
    build_classifier,
)


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
    torch.testing.assert_close(out.class_attention.sum(1), torch.ones(2, 150))
    torch.testing.assert_close(out.position_attention.sum(2), torch.ones(2, 35))


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
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


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
    assert (plain - fused).abs().max().item() <= 1e-4


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
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other[:1], alone, atol=1e-5, rtol=1e-5)


def test_zero_projections_leave_features_unchanged():
    ol = OffsetLearning(5, 8)
    with torch.no_grad():
        ol.cls_offset_proj.weight.zero_()
        ol.feat_offset_proj.weight.zero_()
    out = ol(torch.randn(2, 8, 3, 3), return_intermediates=True)
    torch.testing.assert_close(out.refined_features, out.features)
    torch.testing.assert_close(out.refined_class_embed, out.class_embed.expand(2, -1, -1))
    torch.testing.assert_close(out.logits_without_offsets, out.logits.flatten(2).transpose(1, 2))


def test_logit_norm_variants():
    x = torch.randn(1, 8, 3, 3)
    scaled = OffsetLearning(5, 8, logit_norm="scaled_layernorm")
    assert scaled.logit_scale is not None and scaled.logit_scale.item() == 1.0
    raw = OffsetLearning(5, 8, logit_norm="none")
    assert raw.mask_norm is None
    out = raw(x, return_intermediates=True)
    torch.testing.assert_close(out.logits.flatten(2).transpose(1, 2), out.logits_before_norm)
    with pytest.raises(ValueError, match="logit_norm"):
        OffsetLearning(5, 8, logit_norm="batchnorm")


def test_linear_classifier_shares_the_interface():
    lin = build_classifier("linear", 6, 10)
    assert isinstance(lin, LinearClassifier)
    x = torch.randn(2, 10, 4, 3)
    plain = lin(x)
    out = lin(x, return_intermediates=True)
    assert plain.shape == out.logits.shape == (2, 6, 4, 3)
    torch.testing.assert_close(plain, out.logits)
    assert out.feature_offset is None and out.class_offset is None
    with pytest.raises(ValueError, match="choose one of"):
        build_classifier("mlp", 6, 10)
    with pytest.raises(ValueError, match="expects features"):
        lin(torch.randn(2, 9, 4, 3))


VECTOR_FIELDS = {
    "class_prototypes": ("class_prototypes", lambda t: t),
    "cls_offset": ("class_offset", lambda t: t),
    "pixel_class_context": (None, None),
    "feat_offset": ("feature_offset", lambda t: t),
    "logits_before_norm": ("logits_before_norm", lambda t: t),
}


@pytest.mark.parametrize("name", ["offset_learning_k11_c64", "offset_learning_k150_c256"])
def test_official_vectors(reference_dir, name):
    tensors = load_file(str(reference_dir / "vectors" / f"{name}.safetensors"))
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    k, c = state["cls_repr"].shape[1:]
    ol = OffsetLearning(k, c)
    ol.load_state_dict(state, strict=True)
    x = tensors["input.x"]
    ref = tensors["output.logits"]
    with torch.no_grad():
        out = ol(x, return_intermediates=True)
        fused = ol(x)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=0)
    checked = 0
    for key, (field, _) in VECTOR_FIELDS.items():
        if f"intermediate.{key}" not in tensors:
            continue
        expected = tensors[f"intermediate.{key}"]
        if field is None:  # softmax_K(A)·W is not a field; rebuild it from position attention
            got = out.position_attention @ out.class_embed
        else:
            got = getattr(out, field)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        checked += 1
    assert checked >= 3


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
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
