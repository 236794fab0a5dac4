"""Offset Learning under autocast: its attention and logits stay float32 (issue 17, item 7)."""

from __future__ import annotations

import pytest
import torch

import offseg_vis.models.offset_learning as ol_module
from offseg_vis.models.offset_learning import OffsetLearning

pytestmark = pytest.mark.numeric

K, C, SIDE = 150, 64, 48  # N = 2,304 pixels: class-attention weights ~ 1/N = 4e-4


def _module() -> OffsetLearning:
    torch.manual_seed(0)
    module = OffsetLearning(K, C).eval()
    with torch.no_grad():  # non-trivial weights so both offsets and the norm matter
        module.cls_repr.normal_(0, 0.5)
        module.cls_offset_proj.weight.normal_(0, 0.2)
        module.feat_offset_proj.weight.normal_(0, 0.2)
        module.mask_norm.weight.uniform_(0.5, 1.5)
        module.mask_norm.bias.normal_(0, 0.1)
    return module


def _input() -> torch.Tensor:
    """Features as a bf16 decoder would hand them over: bf16 values."""
    torch.manual_seed(1)
    return torch.randn(1, C, SIDE, SIDE).to(torch.bfloat16)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


# float32 rounding only: the longest reductions are over N = 2,304 pixels and C = 64 channels,
# sqrt(N)·eps32 ~ 6e-6 relative; a bf16 step anywhere (8-bit mantissa, eps 7.8e-3) gives ~1e-2.
BOUND = 1e-4


@pytest.mark.parametrize("path", ["fused", "plain"])
def test_logits_under_bf16_autocast_match_float32(path):
    module, x = _module(), _input()
    with torch.no_grad():
        ref = module.full_forward(x.float()).logits if path == "plain" else module(x.float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = module.full_forward(x).logits if path == "plain" else module(x)
    assert got.dtype == torch.float32
    assert _rel(got, ref) <= BOUND


def test_without_the_float32_region_the_bound_fails(monkeypatch):
    """The same check with the module's float32 region switched off misses the bound by far."""
    module, x = _module(), _input()
    with torch.no_grad():
        ref = module(x.float())
        monkeypatch.setattr(ol_module, "_autocast_device", lambda x: None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = module(x)
    assert _rel(got, ref) > 10 * BOUND


def test_attention_and_logit_tensors_are_float32_inside_autocast():
    module, x = _module(), _input()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x, return_intermediates=True)
    for name in (
        "coupled_logits",
        "class_attention",
        "position_attention",
        "class_prototypes",
        "refined_class_embed",
        "refined_features",
        "logits_before_norm",
        "logits",
    ):
        assert getattr(out, name).dtype == torch.float32, name
    with torch.no_grad():
        ref = module.full_forward(x.float())
    assert _rel(out.class_attention, ref.class_attention) <= BOUND


def test_training_step_under_autocast_has_float32_gradients():
    module, x = _module().train(), _input().float().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = module(x)
    assert logits.dtype == torch.float32
    logits.square().mean().backward()
    assert module.cls_repr.grad.dtype == torch.float32
    assert torch.isfinite(x.grad).all()


def test_mask2former_offset_learning_runs_in_float32_under_autocast():
    from offseg_vis.models.mask2former.offset_learning_mask import OffsetLearningMask

    torch.manual_seed(0)
    module = OffsetLearningMask(32).eval()
    w, f = torch.randn(2, 10, 32), torch.randn(2, 32, 12, 16)
    with torch.no_grad():
        ref = module(w, f)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = module(w.bfloat16(), f.bfloat16())
            inter = module(w.bfloat16(), f.bfloat16(), return_intermediates=True)
    assert got.dtype == torch.float32 and inter.class_attention.dtype == torch.float32
    # the only difference left is the bf16 rounding of the inputs (8 significant bits): relative 2^-8
    rel = (got - ref).norm() / ref.norm()
    assert rel < 2**-8 * 4, rel
