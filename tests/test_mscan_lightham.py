"""MSCAN (SegNeXt encoder) and LightHamHead: official keys, parameter counts, the reference vector
with the recorded NMF bases, NMF semantics, shapes, gradients and arbitrary input sizes."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_scaled
from safetensors.torch import load_file

from offseg_vis.errors import ConfigError, InputError
from offseg_vis.models.backbones.mscan import mscan
from offseg_vis.models.heads.lightham_head import NMF2D, LightHamHead
from offseg_vis.models.segmentor import Segmentor

CONV_SEG_PARAMS = 38_550  # the official heads' dead conv_seg (256·150 + 150)
# Paper Table 3 (params in M): (per-pixel baseline, with Offset Learning); head widths per variant.
PAPER_PARAMS_M = {"t": (4.3, 4.4), "s": (13.9, 14.1), "b": (27.6, 28.2)}
HEAD_WIDTH = {"t": 256, "s": 256, "b": 512}


# Tolerances for the head vector (fp32_tolerance in conftest): the longest single reduction is the
# squeeze conv over 480 channels (<= 512); the logits sit behind a chain of it, seven multiplicative
# NMF updates, the align conv and Offset Learning's LayerNorm, so a factor of 16 (other MKL code paths
# reach 0.08 of the resulting bound on the logits).
HEAD_REDUCTION, HEAD_FACTOR = 512, 16.0


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def segnext(variant: str, num_classes: int = 150, classifier: str = "offset", width: int | None = None):
    width = width or HEAD_WIDTH[variant]
    backbone = mscan(variant)
    head = LightHamHead(backbone.out_channels, num_classes, ham_channels=width, channels=width, classifier=classifier)
    return Segmentor(backbone, head)


def test_segnext_t_keys_and_count_match_official(reference_dir):
    data = json.loads((reference_dir / "official_keys" / "segnext_t_offset_learning_ade20k.json").read_text())
    keys = [
        (key.replace("decode_head.offset_learning.", "decode_head.classifier."), shape)
        for key, shape, _ in data["keys"]
        if not key.startswith("decode_head.conv_seg.")
    ]
    with torch.device("meta"):
        model = segnext("t")
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert dict(ours) == dict(keys)
    assert [k for k, _ in ours if ".classifier." not in k] == [k for k, _ in keys if ".classifier." not in k]
    assert num_params(model) == data["total_params"] - CONV_SEG_PARAMS == 4_394_636


@pytest.mark.parametrize("variant", sorted(PAPER_PARAMS_M))
def test_segnext_param_counts_within_3_percent_of_paper(variant):
    with torch.device("meta"):
        counts = [num_params(segnext(variant, classifier=c)) for c in ("linear", "offset")]
    for count, paper_m in zip(counts, PAPER_PARAMS_M[variant]):
        assert abs(count / 1e6 - paper_m) <= 0.03 * paper_m, (variant, count, paper_m)
    c = HEAD_WIDTH[variant]
    assert counts[1] - counts[0] == (150 * c + 2 * c * c + 300) - (150 * c + 150)


@pytest.fixture(scope="module")
def ham_vector(request):
    reference_dir = request.getfixturevalue("reference_dir")
    return load_file(str(reference_dir / "vectors" / "lightham_head_offset_learning.safetensors"))


def official_head(vec: dict[str, torch.Tensor]) -> LightHamHead:
    state = {
        k[len("state.") :].replace("offset_learning.", "classifier."): v
        for k, v in vec.items()
        if k.startswith("state.") and not k.startswith("state.conv_seg.")
    }
    head = LightHamHead([32, 64, 160, 256], 150)
    head.load_state_dict(state, strict=True)
    return head.eval()


@pytest.mark.numeric
def test_lightham_head_matches_official_vector_with_injected_bases(ham_vector):
    vec = ham_vector
    head = official_head(vec)
    inputs = [vec[f"input.x{i}"] for i in range(4)]
    bases = vec["intermediate.nmf_initial_bases"]
    with torch.no_grad():
        squeezed = head.squeeze_inputs(inputs)
        ham_in = F.relu(head.hamburger.ham_in(vec["intermediate.squeeze.out"]))
        ham_out = head.hamburger.ham(vec["intermediate.hamburger.ham.in"], initial_bases=bases)
        burger = head.hamburger(vec["intermediate.squeeze.out"], nmf_bases=bases)
        aligned = head.decode(inputs, nmf_bases=bases)
        logits = head(inputs, nmf_bases=bases)
    assert_close_scaled(squeezed, vec["intermediate.squeeze.out"], HEAD_REDUCTION, HEAD_FACTOR)
    assert_close_scaled(ham_in, vec["intermediate.hamburger.ham.in"], HEAD_REDUCTION, HEAD_FACTOR)
    assert_close_scaled(ham_out, vec["intermediate.hamburger.ham.out"], HEAD_REDUCTION, HEAD_FACTOR)
    assert_close_scaled(burger, vec["intermediate.hamburger.out"], HEAD_REDUCTION, HEAD_FACTOR)
    assert_close_scaled(aligned, vec["intermediate.align.out"], HEAD_REDUCTION, HEAD_FACTOR)
    assert_close_scaled(logits, vec["output.logits"], HEAD_REDUCTION, HEAD_FACTOR)


@pytest.mark.numeric
def test_lightham_head_draws_bases_like_the_official_code(ham_vector):
    """Same global seed before the forward -> same torch.rand draw -> same logits."""
    vec = ham_vector
    head = official_head(vec)
    inputs = [vec[f"input.x{i}"] for i in range(4)]
    torch.manual_seed(703)
    assert torch.equal(head.hamburger.ham.random_bases(2, 256), vec["intermediate.nmf_initial_bases"])
    torch.manual_seed(703)
    with torch.no_grad():
        logits = head(inputs)
    assert_close_scaled(logits, vec["output.logits"], HEAD_REDUCTION, HEAD_FACTOR)


def test_nmf_steps_follow_the_mode():
    """Training runs train_steps updates, eval runs eval_steps; the result is a rank-R product."""
    x = torch.rand(2, 32, 5, 6)
    bases = F.normalize(torch.rand(2, 32, 4), dim=1)
    nmf = NMF2D(rank=4, train_steps=2, eval_steps=3)
    two_steps = NMF2D(rank=4, train_steps=0, eval_steps=2).eval()
    assert torch.allclose(nmf.train()(x, bases), two_steps(x, bases))
    out = nmf.eval()(x, bases)
    assert not torch.allclose(out, two_steps(x, bases))
    assert torch.linalg.matrix_rank(out[0].reshape(32, 30)).item() <= 4
    assert (out >= 0).all()
    with pytest.raises(InputError):
        nmf(x, bases[:, :, :3])


def test_nmf_gradient_flows_through_the_iterations():
    x = torch.rand(1, 8, 3, 4, requires_grad=True)
    bases = F.normalize(torch.rand(1, 8, 2), dim=1).requires_grad_()
    NMF2D(rank=2).train()(x, bases).sum().backward()
    assert x.grad.abs().sum() > 0 and bases.grad.abs().sum() > 0


@pytest.mark.parametrize("classifier", ["offset", "linear"])
def test_lightham_head_shapes_per_classifier(classifier):
    head = LightHamHead([64, 160, 256], 9, ham_channels=32, channels=64, classifier=classifier).eval()
    assert head.output_stride == 8 and head.num_classes == 9
    feats = [torch.randn(2, c, *hw) for c, hw in zip([16, 64, 160, 256], [(14, 18), (7, 9), (4, 5), (2, 3)])]
    with torch.no_grad():
        logits = head(feats)
        out = head(feats, return_intermediates=True)
        from_three = head(feats[1:], nmf_bases=torch.rand(2, 32, 16))
    assert logits.shape == out.logits.shape == from_three.shape == (2, 9, 7, 9)
    assert out.features.shape == (2, 63, 64)
    assert (head.dropout is None) == (classifier == "offset")


def test_lightham_head_rejects_bad_channel_lists():
    with pytest.raises(ConfigError):
        LightHamHead([64, 160], 3)
    with pytest.raises(ConfigError):
        LightHamHead([64, 160, 256], 3, ham_channels=48)  # GroupNorm(32) needs a multiple of 32
    with pytest.raises(ConfigError):
        mscan("xl")
    with pytest.raises(InputError):
        mscan("t")(torch.randn(1, 4, 32, 32))


@pytest.mark.parametrize("classifier", ["offset", "linear"])
def test_gradients_reach_every_parameter(classifier):
    backbone = mscan("t")
    head = LightHamHead(backbone.out_channels, 5, ham_channels=32, channels=32, classifier=classifier)
    model = Segmentor(backbone, head).train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 5, (2, 64, 64))
    model.loss(images, labels).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # The head reads strides 8-32 only, but stage 1's output (after norm1) feeds stage 2.
    assert missing == []


@pytest.mark.parametrize("size", [(97, 61), (250, 333)])
def test_any_input_size(size):
    backbone = mscan("t")
    model = Segmentor(backbone, LightHamHead(backbone.out_channels, 4, ham_channels=32, channels=32)).eval()
    images = torch.randn(1, 3, *size)
    with torch.no_grad():
        feats = model.backbone(images)
        logits = model(images)
        full = model.predict(images)
    side = list(size)
    for feat, channels, step in zip(feats, backbone.out_channels, (4, 2, 2, 2)):
        side = [math.ceil(s / step) for s in side]  # every stride-2 conv rounds up
        assert feat.shape == (1, channels, *side)
    assert logits.shape == (1, 4, *feats[1].shape[-2:])
    assert full.shape == (1, 4, *size)
