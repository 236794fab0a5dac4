"""EfficientFormerV2: official keys, numerics against the official vectors, BN freezing, ImageNet loading."""

from __future__ import annotations

import json

import pytest
import torch
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

TOL = 1e-4  # per tensor: max|got - ref| <= TOL * max|ref| (reference README)
ATTENTION_MODULES = ("network.4.7.token_mixer", "network.5.attn", "network.6.4.token_mixer")


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max())


def _keys(path) -> list[tuple[str, list[int], str]]:
    return [(k, list(s), d) for k, s, d in json.loads(path.read_text())["keys"]]


def _float_state(vectors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state.*`` of a vector file, float16 weights cast to float32 (lossless, see README)."""
    return {
        k.removeprefix("state."): (v.float() if v.is_floating_point() else v)
        for k, v in vectors.items()
        if k.startswith("state.")
    }


@pytest.fixture(scope="module")
def s1_vectors(reference_dir):
    path = reference_dir / "vectors" / "efficientformerv2_s1_backbone.safetensors"
    if not path.is_file():  # 20 MB, not vendored in tests/reference (see conftest)
        pytest.skip(f"{path.name} not found; set OFFSEG_REFERENCE to the full reference folder")
    return load_file(str(path))


@pytest.mark.parametrize("variant", ["s1", "s2", "l"])
def test_state_dict_matches_official_keys(reference_dir, variant):
    official = json.loads((reference_dir / "official_keys" / f"efficientformerv2_{variant}_offseg_backbone.json")
                          .read_text())
    model = efficientformer_v2(variant)
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert ours == [(k, list(s), d) for k, s, d in official["keys"]]  # same keys, order, shapes, dtypes
    assert sum(p.numel() for p in model.parameters()) == official["total_params"]
    assert model.out_channels == list(VARIANTS[variant].widths)


def test_bias_index_buffers_match_official(s1_vectors):
    """The index tables we build equal the ones the official constructor built (stored in the vector)."""
    model = efficientformer_v2("s1")
    own = model.state_dict()
    checked = 0
    for key, ref in s1_vectors.items():
        name = key.removeprefix("state.")
        if key.startswith("state.") and ("attention_bias_idxs" in name or name.endswith("attention_biases")):
            assert torch.equal(own[name], ref.to(own[name].dtype)), name
            checked += 1
    assert checked == 15  # 5 attention modules x (idxs_seg, placeholder idxs, placeholder table)


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


@pytest.mark.parametrize("tag,eval_first", [("256x256", False), ("224x288", True)])
def test_s1_matches_official_vectors(s1_vectors, tag, eval_first):
    model = efficientformer_v2("s1")
    if eval_first:  # we keep no eval-mode bias cache, so switching mode before loading is harmless
        model.eval()
    model.load_state_dict(_float_state(s1_vectors))
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
    with torch.no_grad():
        feats = model(s1_vectors[f"input.x_{tag}"])
    assert len(feats) == 4
    for i, feat in enumerate(feats):
        ref = s1_vectors[f"output.{tag}.feat{i}"]
        assert feat.shape == ref.shape
        assert _rel_err(feat, ref) <= TOL, f"feat{i}"
    assert len(captured) == 7
    for name, got in captured.items():
        ref = s1_vectors[f"intermediate.{tag}.{name}"]
        assert _rel_err(got, ref) <= TOL, name


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
