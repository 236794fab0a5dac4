"""EfficientFormerV2: official keys, numerics against the official vectors, BN freezing, ImageNet loading."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import VENDORED_REFERENCE, assert_close_scaled, assert_fails_scaled, full_reference_dir, missing
from safetensors.torch import load_file
from torch import nn

from offseg_vis.errors import CheckpointError, ConfigError, InputError
from offseg_vis.models.backbones.efficientformer_v2 import (
    VARIANTS,
    drop_path,
    efficientformer_v2,
    load_imagenet_weights,
    relative_bias_index,
)

ATTENTION_MODULES = ("network.4.7.token_mixer", "network.5.attn", "network.6.4.token_mixer")
REDUCED_S1 = VENDORED_REFERENCE / "vectors" / "efficientformerv2_s1_backbone_reduced.safetensors"
FULL_DIR = full_reference_dir()
FULL_S1 = FULL_DIR / "vectors" / "efficientformerv2_s1_backbone.safetensors" if FULL_DIR else None
# The vendored reduced vector always runs; the full 20 MB one too when its folder is present
# (it is not vendored: collecting it only where it exists keeps a fresh clone free of skips).
S1_SOURCES = ["reduced"] + (["full"] if FULL_S1 is not None and FULL_S1.is_file() else [])
# Longest reductions behind a compared value: the 1x1 convs out of the 1024-channel attention values
# (and the 3x3 conv over 120 channels, 1080 taps) -- 1024 bounds every layer well enough.
REDUCTION = 1024
# One module: one or two chained reductions (factor 8, the default). Whole stages: up to 40 blocks
# whose errors carry forward; the official run recomputed in float64 differs from its own float32
# output by 1.2 units of eps32 * sqrt(1024) * max|ref| on feat3 (reference README), other MKL code
# paths by up to 0.34 units here, so 16 units leave room without admitting a real error.
STACK_FACTOR = 16.0


def _keys(path) -> list[tuple[str, list[int], str]]:
    return [(k, list(s), d) for k, s, d in json.loads(path.read_text())["keys"]]


def _float_state(vectors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state.*`` of a vector file: float16 weights cast to float32 (lossless, see README), int16
    index buffers of the reduced vector widened back to int64."""
    return {
        k.removeprefix("state."): (v.float() if v.is_floating_point() else v.long())
        for k, v in vectors.items()
        if k.startswith("state.")
    }


@pytest.fixture(scope="module", params=S1_SOURCES)
def s1_vectors(request):
    """The vendored reduced S1 vector (224x288 only, stages 1-2 end to end plus the three attention
    modules; see tests/reference/README.md) and, where present, the full official one."""
    path = REDUCED_S1 if request.param == "reduced" else FULL_S1
    if not path.is_file():
        missing(f"{path.name} not found in {path.parent}")
    return load_file(str(path))


@pytest.mark.parametrize("variant", ["s1", "s2", "l"])
def test_state_dict_matches_official_keys(reference_dir, variant):
    official = json.loads(
        (reference_dir / "official_keys" / f"efficientformerv2_{variant}_offseg_backbone.json").read_text()
    )
    model = efficientformer_v2(variant)
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert ours == [(k, list(s), d) for k, s, d in official["keys"]]  # same keys, order, shapes, dtypes
    assert sum(p.numel() for p in model.parameters()) == official["total_params"]
    assert model.out_channels == list(VARIANTS[variant].widths)


@pytest.mark.numeric
def test_bias_index_buffers_match_official(s1_vectors):
    """The index tables we build equal the ones the official constructor built (stored in the vector)."""
    model = efficientformer_v2("s1")
    own = model.state_dict()
    checked = set()
    for key, ref in s1_vectors.items():
        name = key.removeprefix("state.")
        if key.startswith("state.") and ("attention_bias_idxs" in name or name.endswith("attention_biases")):
            assert torch.equal(own[name], ref.to(own[name].dtype)), name
            checked.add(name.rsplit(".", 1)[0])
    # Every attention module the file holds (3 in the reduced vector, 5 in the full one) x
    # (idxs_seg, placeholder idxs, placeholder table); the reduced one has one of each kind.
    modules = {k.removeprefix("state.").rsplit(".", 1)[0] for k in s1_vectors if k.endswith("attention_bias_idxs_seg")}
    assert len(modules) in (3, 5) and checked == modules
    assert sum(
        k.endswith(("attention_bias_idxs", "attention_biases", "attention_bias_idxs_seg")) for k in s1_vectors
    ) == 3 * len(modules)


def test_relative_bias_index_properties():
    same = relative_bias_index(4, 4)
    assert same.shape == (16, 16) and int(same.max()) == 15
    assert torch.equal(same, same.t())  # |Δ| is symmetric
    assert torch.equal(same.diagonal(), torch.zeros(16, dtype=torch.long))
    down = relative_bias_index(2, 4)  # query (a_r, a_c) sits at (2a_r, 2a_c) of the 4x4 key grid
    assert down.shape == (4, 16)
    assert torch.equal(down[0], torch.arange(16))  # first query sees every offset in raster order
    # Query 3 = (1, 1) sits at key (2, 2) = key 10; key 15 = (3, 3) is offset (1, 1), like key 5 for query 0.
    assert int(down[3, 10]) == 0 and int(down[3, 15]) == int(down[0, 5]) == 5


@pytest.mark.numeric
@pytest.mark.parametrize("eval_first", [False, True])
def test_s1_matches_official_vectors(s1_vectors, eval_first):
    """Stage outputs of the whole backbone from the image, and each recorded attention module (and
    the stage-3 -> 4 transition) from its recorded input. The reduced vector holds the weights these
    need and nothing else: the model's other weights stay random, which no compared tensor reads."""
    model = efficientformer_v2("s1")
    if eval_first:  # we keep no eval-mode bias cache, so switching mode before loading is harmless
        model.eval()
    state = _float_state(s1_vectors)
    result = model.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    if len(state) < len(model.state_dict()):  # reduced: exactly the cut blocks are missing
        kept = ("patch_embed.", "network.0.", "network.1.", "network.2.", "network.3.", "network.4.7.token_mixer.",
                "network.5.", "network.6.4.token_mixer.")  # fmt: skip
        # (BatchNorm never reports a missing num_batches_tracked, which the forward does not read.)
        cut = [k for k in model.state_dict() if not k.startswith(kept) and not k.endswith("num_batches_tracked")]
        assert result.missing_keys == cut
        assert "network.6.4.token_mixer.attention_biases_seg" not in result.missing_keys
    else:
        assert result.missing_keys == []
    model.eval()  # after loading, as the vectors were made
    captured: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, inputs, output):
            captured[f"{name}.in"] = inputs[0]
            captured[f"{name}.out"] = output

        return hook

    for name in ATTENTION_MODULES:
        model.get_submodule(name).register_forward_hook(keep(name))
    model.network[5].register_forward_hook(lambda _m, _i, out: captured.__setitem__("network.5.out", out))
    tags = sorted({k.split(".")[1] for k in s1_vectors if k.startswith("output.")})
    assert tags == (["224x288"] if len(tags) == 1 else ["224x288", "256x256"])
    for tag in tags:
        with torch.no_grad():
            feats = model(s1_vectors[f"input.x_{tag}"])
        assert len(feats) == 4
        compared = 0
        for i, feat in enumerate(feats):
            key = f"output.{tag}.feat{i}"
            if key in s1_vectors:  # the reduced vector keeps feat0 and feat1
                assert_close_scaled(feat, s1_vectors[key], REDUCTION, STACK_FACTOR, name=key)
                compared += 1
        assert compared == (2 if len(tags) == 1 else 4)
        if compared == 4:  # full vector: inside the whole forward, what reaches each module is as recorded
            assert len(captured) == 7
            for name, got in captured.items():
                key = f"intermediate.{tag}.{name}"
                assert_close_scaled(got, s1_vectors[key], REDUCTION, STACK_FACTOR, name=key)
        with torch.no_grad():
            for name in ATTENTION_MODULES:
                got = model.get_submodule(name)(s1_vectors[f"intermediate.{tag}.{name}.in"])
                assert_close_scaled(got, s1_vectors[f"intermediate.{tag}.{name}.out"], REDUCTION, name=f"{tag} {name}")
            transition = model.network[5](s1_vectors[f"intermediate.{tag}.network.5.attn.in"])
            assert_close_scaled(
                transition, s1_vectors[f"intermediate.{tag}.network.5.out"], REDUCTION, name="network.5"
            )


@pytest.mark.numeric
def test_relative_bias_identity_at_512_and_resized_otherwise():
    model = efficientformer_v2("s1")
    attn = model.network[4][7].token_mixer
    with torch.no_grad():
        attn.attention_biases_seg.normal_()
    table = attn.attention_biases_seg[:, attn.attention_bias_idxs_seg]
    assert torch.equal(attn.relative_bias(256, 256), table)  # 512x512 input: untouched
    resized = attn.relative_bias(64, 64)
    expected = nn.functional.interpolate(table[None], size=(64, 64), mode="bicubic", align_corners=False)[0]
    assert torch.equal(resized, expected)
    down = model.network[5].attn
    assert down.relative_bias(63, 252).shape == (8, 63, 252)


def test_any_multiple_of_32_and_clear_error_otherwise():
    model = efficientformer_v2("s1").eval()
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 96, 160))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 24, 40), (2, 48, 12, 20), (2, 120, 6, 10), (2, 224, 3, 5)]
    with pytest.raises(InputError, match="multiples of 32"):
        model(torch.randn(1, 3, 100, 96))
    with pytest.raises(InputError):
        model(torch.randn(1, 1, 64, 64))


def test_unknown_variant_is_a_config_error():
    with pytest.raises(ConfigError, match="s1"):
        efficientformer_v2("xl")


def test_batchnorm_statistics_frozen_but_affine_learns():
    model = efficientformer_v2("s1")
    model.train()
    assert model.training
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    feats = model(torch.randn(2, 3, 64, 64))
    sum(f.mean() for f in feats).backward()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.patch_embed[1].weight.grad is not None and model.patch_embed[1].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())  # every parameter takes part


def test_batchnorm_statistics_update_when_not_frozen():
    model = efficientformer_v2("s1", freeze_bn_stats=False).train()
    mean_before = model.patch_embed[1].running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert model.patch_embed[1].training
    assert not torch.equal(mean_before, model.patch_embed[1].running_mean)


def test_drop_path():
    x = torch.ones(1000, 3)
    assert torch.equal(drop_path(x, 0.5, training=False), x)
    y = drop_path(x, 0.5, training=True)
    kept = y[:, 0] != 0
    assert torch.all(y[kept] == 2.0) and 300 < int(kept.sum()) < 700  # survivors rescaled by 1/keep


# -------------------------------------------------------------------------------------------------
# Snap ImageNet checkpoint
# -------------------------------------------------------------------------------------------------


def _synthetic_snap_state(reference_dir, variant: str) -> dict[str, torch.Tensor]:
    """A random state dict with exactly Snap's ImageNet key names, shapes and dtypes."""
    gen = torch.Generator().manual_seed(7)
    state = {}
    for key, shape, dtype in _keys(reference_dir / "official_keys" / f"efficientformerv2_{variant}_imagenet_snap.json"):
        if dtype == "int64":
            state[key] = torch.randint(0, 5, shape, generator=gen)
        else:
            state[key] = torch.randn(shape, generator=gen)
    return state


def test_load_imagenet_weights_from_snap_keys(reference_dir, tmp_path):
    snap = _synthetic_snap_state(reference_dir, "s1")
    path = tmp_path / "eformer_s1_450.pth"
    torch.save({"model": snap, "epoch": 449}, path)
    model = efficientformer_v2("s1")
    report = load_imagenet_weights(model, path)
    own = model.state_dict()
    assert len(report.loaded) == 718
    assert sorted(report.ignored) == sorted(k for k in snap if k.split(".")[0] in ("norm", "head", "dist_head"))
    assert len(report.ignored) == 9
    assert len(report.kept) == 10 and all(k.endswith(("_seg",)) for k in report.kept)
    for key in report.loaded:
        assert torch.equal(own[key], snap[key].to(own[key].dtype)), key
    # The segmentation bias tables are not taken from ImageNet: they stay zero.
    assert all(own[k].abs().sum() == 0 for k in report.kept if k.endswith("attention_biases_seg"))


def test_load_imagenet_weights_errors(reference_dir, tmp_path):
    snap = _synthetic_snap_state(reference_dir, "s1")
    with pytest.raises(CheckpointError, match="same variant"):
        load_imagenet_weights(efficientformer_v2("s2"), snap)  # wrong variant
    model = efficientformer_v2("s1")
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    broken = dict(snap)
    broken.pop("network.0.0.mlp.fc1.weight")
    with pytest.raises(CheckpointError, match="missing"):
        load_imagenet_weights(model, broken)
    with pytest.raises(CheckpointError, match="unknown"):
        load_imagenet_weights(model, {**snap, "extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="does not exist"):
        load_imagenet_weights(model, tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="Could not read"):
        load_imagenet_weights(model, bad)
    # Failed loads leave the model untouched (everything is checked before anything is copied).
    assert all(torch.equal(initial[k], v) for k, v in model.state_dict().items())


# -------------------------------------------------------------------------------------------------
# The folded inference path (conv + BN + layer scale as one conv) against the plain modules
# -------------------------------------------------------------------------------------------------


def _random_bn(channels: int) -> nn.BatchNorm2d:
    """An eval BatchNorm with non-trivial statistics and affine parameters."""
    bn = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0.0, 0.5)
        bn.running_var.uniform_(0.2, 3.0)
        bn.weight.normal_(1.0, 0.3)
        bn.bias.normal_(0.0, 0.3)
    return bn


@pytest.mark.numeric
@pytest.mark.parametrize("groups, kernel, bias", [(1, 1, True), (1, 3, False), (12, 3, True)])
def test_fold_conv_bn_equals_conv_then_bn_in_float64(groups, kernel, bias):
    """W·s, (b − μ)·s + β (times a per-channel scale) is the eval conv → BN pair: float64, 1e-12."""
    from offseg_vis.models.backbones.efficientformer_v2 import fold_conv_bn

    torch.manual_seed(0)
    conv = nn.Conv2d(12, 24, kernel, padding=kernel // 2, groups=groups, bias=bias).double()
    bn = _random_bn(24).double()
    out_scale = torch.rand(24, dtype=torch.float64) + 0.5
    x = torch.randn(2, 12, 9, 7, dtype=torch.float64)
    with torch.no_grad():
        expected = out_scale.view(1, -1, 1, 1) * ((conv(x) - bn.running_mean.view(1, -1, 1, 1))
                   / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps) * bn.weight.view(1, -1, 1, 1)
                   + bn.bias.view(1, -1, 1, 1))  # fmt: skip
        weight, b = fold_conv_bn(conv, bn, out_scale)
        got = torch.nn.functional.conv2d(x, weight, b, padding=kernel // 2, groups=groups)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12 * float(expected.abs().max()))
    with torch.no_grad():  # negative: the fold without the output scale is visibly different
        weight, b = fold_conv_bn(conv, bn)
        wrong = torch.nn.functional.conv2d(x, weight, b, padding=kernel // 2, groups=groups)
    assert float((wrong - expected).abs().max()) > 1e-3


@pytest.mark.numeric
def test_folded_path_equals_plain_modules_and_reads_current_statistics():
    """The inference path (folded BN + layer scale, in-place GELU) of a whole S1 backbone equals the
    plain conv → BN modules (run with autograd on, which keeps the plain path) within fp32 rounding;
    changing one BN's statistics afterwards changes the folded result (nothing is cached)."""
    torch.manual_seed(0)
    model = efficientformer_v2("s1").eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.load_state_dict(_random_bn(m.num_features).state_dict())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_scale" in name:  # default 1e-5 would hide every residual branch
                p.fill_(0.5)
    x = torch.randn(1, 3, 64, 96)
    with torch.enable_grad():
        plain = model(x)
    with torch.inference_mode():
        folded = model(x)
    for i, (f, p) in enumerate(zip(folded, plain)):
        assert_close_scaled(f, p, reduction_len=REDUCTION, factor=STACK_FACTOR, name=f"feature {i}")
    with torch.no_grad():
        model.network[0][0].mlp.norm1.running_mean += 1.0  # the statistics of one BN of the first block
    with torch.inference_mode():
        changed = model(x)[0]
    assert_fails_scaled(changed, plain[0], reduction_len=REDUCTION, factor=STACK_FACTOR, name="edited BN stat")


@pytest.mark.numeric
@pytest.mark.parametrize("size", [(1, 1), (2, 5), (16, 16), (7, 12)])
def test_upsample_bilinear_2x_equals_interpolate_in_float64(size):
    """The matrix-product ×2 upsampling equals F.interpolate (bilinear, align_corners=False) in
    float64 within 1e-12, edges included; align_corners=True (a different grid) is far off."""
    from offseg_vis.models.layers import upsample_bilinear_2x

    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    expected = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    got = upsample_bilinear_2x(x)
    assert got.is_contiguous()
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    if min(size) > 1:
        other = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        assert float((got - other).abs().max()) > 1e-2
