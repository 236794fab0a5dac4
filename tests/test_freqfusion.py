"""FreqFusion parts against the official vectors; pure-PyTorch CARAFE against a naive loop."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from offseg_vis.errors import InputError
from offseg_vis.models.freqfusion import (
    FreqFusion,
    LocalSimGuidedSampler,
    carafe,
    compute_similarity,
    kernel_normalizer,
)

TOL = 1e-4  # per tensor: max|got - ref| <= TOL * max|ref| (reference README)


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def parts(reference_dir):
    return load_file(str(reference_dir / "vectors" / "freqfusion_parts_no_carafe.safetensors"))


@pytest.fixture(scope="module")
def fusion(parts):
    """FreqFusion(16, 48, compressed 16) carrying the vector's weights, in eval mode."""
    module = FreqFusion(16, 48, compressed_channels=16)
    state = {k.removeprefix("state."): v for k, v in parts.items() if k.startswith("state.")}
    assert set(module.state_dict()) == set(state)  # official key names
    assert torch.equal(module.state_dict()["dysampler.init_pos"], state["dysampler.init_pos"])
    module.load_state_dict(state)
    return module.eval()


def test_kernel_normalizer_matches_official(parts, fusion):
    got5 = kernel_normalizer(parts["input.mask_k5"], 5, fusion.hamming_lowpass)
    got3 = kernel_normalizer(parts["input.mask_k3"], 3, fusion.hamming_highpass)
    assert _rel_err(got5, parts["output.kernel_normalizer_k5"]) <= TOL
    assert _rel_err(got3, parts["output.kernel_normalizer_k3"]) <= TOL
    assert torch.allclose(got5.sum(1), torch.ones(()), atol=1e-5)  # one group: taps sum to 1


def test_compute_similarity_matches_official(parts):
    got = compute_similarity(parts["input.sim_x"], 3, dilation=2)
    ref = parts["output.compute_similarity_k3_d2"]
    assert got.shape == ref.shape == (2, 8, 8, 10)
    assert _rel_err(got, ref) <= TOL
    assert torch.all(got[:, 0, :2, :2] == 0)  # top-left neighbour (-2, -2) is padding there


def test_local_sim_guided_sampler_matches_official(parts, fusion):
    captured = {}
    names = ["norm_hr", "norm_lr", "offset", "hr_offset", "direct_scale", "hr_direct_scale"]
    handles = [
        fusion.dysampler.get_submodule(n).register_forward_hook(lambda _m, _i, o, n=n: captured.__setitem__(n, o))
        for n in names
    ]
    try:
        with torch.no_grad():
            out = fusion.dysampler(
                hr_x=parts["input.dysampler_hr_x"],
                lr_x=parts["input.dysampler_lr_x"],
                feat2sample=parts["input.dysampler_feat2sample"],
            )
    finally:
        for h in handles:
            h.remove()
    assert _rel_err(out, parts["output.dysampler"]) <= TOL
    for n in names:
        assert _rel_err(captured[n], parts[f"intermediate.dysampler.{n}.out"]) <= TOL, n


def naive_carafe(f: torch.Tensor, m: torch.Tensor, k: int, group: int, scale: int) -> torch.Tensor:
    """The CARAFE definition written as explicit loops (slow; tiny inputs only)."""
    n, c, h, w = f.shape
    out = torch.zeros(n, c, h * scale, w * scale, dtype=f.dtype)
    r = (k - 1) // 2
    per_group = c // group
    for b, ch, y, x in itertools.product(range(n), range(c), range(h * scale), range(w * scale)):
        g = ch // per_group
        total = 0.0
        for i in range(k):
            for j in range(k):
                sy, sx = y // scale + i - r, x // scale + j - r
                if 0 <= sy < h and 0 <= sx < w:
                    total += float(f[b, ch, sy, sx]) * float(m[b, g * k * k + i * k + j, y, x])
        out[b, ch, y, x] = total
    return out


@pytest.mark.parametrize(
    "channels,group,kernel,scale,size",
    [(3, 1, 3, 1, (4, 5)), (4, 2, 3, 2, (3, 4)), (6, 3, 5, 2, (3, 3)), (2, 1, 5, 1, (5, 4)), (4, 4, 1, 3, (2, 2))],
)
def test_carafe_matches_naive_loop(channels, group, kernel, scale, size):
    h, w = size
    f = torch.randn(2, channels, h, w, dtype=torch.float64)
    m = torch.randn(2, group * kernel * kernel, scale * h, scale * w, dtype=torch.float64)
    got = carafe(f, m, kernel, group, scale)
    assert got.shape == (2, channels, scale * h, scale * w)
    assert torch.allclose(got, naive_carafe(f, m, kernel, group, scale), rtol=1e-12, atol=1e-12)


def test_carafe_with_uniform_kernels_is_a_box_filter():
    f = torch.randn(1, 3, 6, 7, dtype=torch.float64)
    k, s = 5, 2
    m = torch.full((1, k * k, s * 6, s * 7), 1.0 / (k * k), dtype=torch.float64)
    box = F.avg_pool2d(f, k, stride=1, padding=k // 2, count_include_pad=True)  # zero padding, / k²
    expected = box.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
    assert torch.allclose(carafe(f, m, k, 1, s), expected)


def test_carafe_gradients():
    f = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    m = torch.randn(1, 9, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: carafe(a, b, 3, 1, 2), (f, m))


def test_carafe_rejects_bad_kernels():
    with pytest.raises(InputError, match="kernels must have shape"):
        carafe(torch.randn(1, 2, 4, 4), torch.randn(1, 9, 4, 4), 3, 1, 2)
    with pytest.raises(ValueError, match="odd"):
        carafe(torch.randn(1, 2, 4, 4), torch.randn(1, 16, 4, 4), 4, 1, 1)


def test_sampler_initial_positions_layout():
    pos = LocalSimGuidedSampler(16).init_pos.view(2, 4, 2, 2)  # (comp, group, i, j)
    assert torch.equal(pos[0], torch.tensor([-0.25, 0.25]).expand(4, 2, 2))  # x follows the sub-column j
    assert torch.equal(pos[1], torch.tensor([[-0.25], [0.25]]).expand(4, 2, 2))  # y follows the sub-row i


def test_sampler_at_init_is_nearly_identity_resampling():
    """Fresh sampler: tiny offsets, gate 0.5 -> samples sit at the hr pixel centres."""
    sampler = LocalSimGuidedSampler(16)
    feat = torch.randn(1, 8, 10, 12)
    out = sampler(torch.randn(1, 16, 10, 12), torch.randn(1, 16, 5, 6), feat)
    assert out.shape == feat.shape
    assert (out - feat).abs().max() < 0.05


def test_freqfusion_forward_shapes_and_size_check():
    module = FreqFusion(hr_channels=8, lr_channels=24, compressed_channels=8)
    out = module(torch.randn(2, 8, 12, 10), torch.randn(2, 24, 6, 5))
    assert out.hr.shape == (2, 8, 12, 10)
    assert out.lr.shape == (2, 24, 12, 10)
    assert out.lowpass_mask.shape == (2, 25, 12, 10)
    with pytest.raises(InputError, match="twice"):
        module(torch.randn(1, 8, 11, 10), torch.randn(1, 24, 6, 5))


def test_freqfusion_buffers_and_parameter_count():
    module = FreqFusion(64, 128, compressed_channels=48)  # OffSeg-T's first fusion
    state = module.state_dict()
    assert torch.equal(state["hamming_lowpass"], torch.ones(1))
    assert state["dysampler.init_pos"].shape == (1, 32, 1, 1)
    assert sum(p.numel() for p in module.parameters()) == 44466
