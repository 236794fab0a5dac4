"""FreqFusion parts against the official vectors; pure-PyTorch CARAFE against a naive loop."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_scaled
from safetensors.torch import load_file

from offseg_vis.errors import InputError
from offseg_vis.models.freqfusion import (
    FreqFusion,
    LocalSimGuidedSampler,
    carafe,
    compute_similarity,
    kernel_normalizer,
)

pytestmark = pytest.mark.numeric

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


# -------------------------------------------------------------------------------------------------
# The fast CARAFE and local similarity against their definitions, and against the implementations
# they replaced (kept here, verbatim in behaviour, as references).
# -------------------------------------------------------------------------------------------------


def naive_similarity(x: torch.Tensor, k: int, d: int, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity with each dilated neighbour, written as explicit loops over pixels and taps."""
    b, c, h, w = x.shape
    r = k // 2
    out = torch.zeros(b, k * k - 1, h, w, dtype=x.dtype)
    for n, y, xx in itertools.product(range(b), range(h), range(w)):
        centre = x[n, :, y, xx]
        slot = 0
        for i in range(k):
            for j in range(k):
                if (i, j) == (r, r):
                    continue
                sy, sx = y + (i - r) * d, xx + (j - r) * d
                other = x[n, :, sy, sx] if 0 <= sy < h and 0 <= sx < w else torch.zeros(c, dtype=x.dtype)
                denom = max(float(centre.norm()), eps) * max(float(other.norm()), eps)
                out[n, slot, y, xx] = float(centre @ other) / denom
                slot += 1
    return out


@pytest.mark.parametrize("size,k,d", [((5, 7), 3, 2), ((6, 4), 3, 1), ((3, 3), 3, 2), ((7, 6), 5, 1), ((2, 9), 3, 3)])
def test_compute_similarity_matches_naive_loop(size, k, d):
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    x[0, :, 1, 1] = 0  # a zero feature vector: similarity 0 with everything
    got = compute_similarity(x, k, dilation=d)
    assert (got - naive_similarity(x, k, d)).abs().max() <= 1e-10


def gather_carafe(f: torch.Tensor, m: torch.Tensor, k: int, group: int, scale: int) -> torch.Tensor:
    """CARAFE as an index gather at output resolution (a third formulation, vectorised, any size)."""
    n, c, h, w = f.shape
    r = (k - 1) // 2
    ys = torch.arange(h * scale) // scale  # source row of each output row
    xs = torch.arange(w * scale) // scale
    out = torch.zeros(n, c, h * scale, w * scale, dtype=f.dtype)
    kernels = m.view(n, group, k * k, h * scale, w * scale).repeat_interleave(c // group, dim=1)  # (N, C, k², ·)
    for i in range(k):
        for j in range(k):
            sy, sx = ys + i - r, xs + j - r
            valid = ((sy >= 0) & (sy < h))[:, None] & ((sx >= 0) & (sx < w))[None, :]  # (sH, sW)
            taken = f[:, :, sy.clamp(0, h - 1)][:, :, :, sx.clamp(0, w - 1)] * valid
            out += taken * kernels[:, :, i * k + j]
    return out


@pytest.mark.parametrize("channels,group,kernel,scale,size", [(3, 1, 3, 1, (4, 5)), (6, 3, 5, 2, (3, 3))])
def test_gather_reference_matches_naive_loop(channels, group, kernel, scale, size):
    f = torch.randn(1, channels, *size, dtype=torch.float64)
    m = torch.randn(1, group * kernel * kernel, scale * size[0], scale * size[1], dtype=torch.float64)
    ref = naive_carafe(f, m, kernel, group, scale)
    assert (gather_carafe(f, m, kernel, group, scale) - ref).abs().max() <= 1e-10


def test_carafe_channel_blocks_match_the_definition(monkeypatch):
    """Force many channel blocks (the path large maps take) on a small input."""
    import offseg_vis.models.freqfusion as ff

    monkeypatch.setattr(ff, "_CARAFE_BLOCK_ELEMENTS", 2 * 4 * 6 * 5)  # 2 channels per block, 5 blocks (last short)
    f = torch.randn(1, 9, 3, 5, dtype=torch.float64)
    m = torch.randn(1, 25, 6, 10, dtype=torch.float64)
    assert (ff.carafe(f, m, 5, 1, 2) - naive_carafe(f, m, 5, 1, 2)).abs().max() <= 1e-10


def old_carafe(features, kernels, kernel_size, group=1, scale=1):
    """The CARAFE this module shipped before the speed-up: k² in-place passes over the whole output."""
    n, c, h, w = features.shape
    k, g, s = kernel_size, group, scale
    r = (k - 1) // 2
    padded = F.pad(features, (r, r, r, r)).view(n, g, c // g, h + 2 * r, w + 2 * r)
    taps = kernels.view(n, g, k * k, h, s, w, s)
    out = features.new_zeros((n, g, c // g, h, s, w, s))
    for i in range(k):
        for j in range(k):
            window = padded[:, :, :, i : i + h, j : j + w]
            out.addcmul_(window[:, :, :, :, None, :, None], taps[:, :, i * k + j][:, :, None])
    return out.view(n, c, s * h, s * w)


def old_compute_similarity(x, kernel_size=3, dilation=1):
    """The local similarity shipped before the speed-up: unfold into k² copies, then cosine_similarity."""
    b, c, h, w = x.shape
    taps = kernel_size * kernel_size
    pad = (kernel_size // 2) * dilation
    windows = F.unfold(x, kernel_size, dilation=dilation, padding=pad).view(b, c, taps, h, w)
    centre = taps // 2
    sim = F.cosine_similarity(windows[:, :, centre : centre + 1], windows, dim=1, eps=1e-8)
    return torch.cat([sim[:, :centre], sim[:, centre + 1 :]], dim=1)


@pytest.mark.parametrize("name", ["offseg-t", "offseg-b", "offseg-l"])
def test_model_logits_equal_the_previous_implementation(monkeypatch, name):
    """Every model built on FreqFusion gives the logits the old CARAFE / similarity gave.

    Tolerance: fp32 rounding scaled by the logits' magnitude; the two paths differ only in
    summation order, and the deepest reduction chain is the backbone (factor 64 for its depth).
    """
    import offseg_vis.models.freqfusion as ff
    from offseg_vis.models import build_model

    torch.manual_seed(0)
    model = build_model(name, num_classes=19, classifier="offset").eval()
    for p in model.parameters():  # default init leaves layer scales at 1e-5: make every path count
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        new = model(x)
        monkeypatch.setattr(ff, "carafe", old_carafe)
        monkeypatch.setattr(ff, "compute_similarity", old_compute_similarity)
        old = model(x)
    assert_close_scaled(new, old, reduction_len=256, factor=64.0, name=f"{name} logits")


# -------------------------------------------------------------------------------------------------
# Float64 references of the whole FreqFusion and OffSegHead forward, assembled from the spec's steps
# (reference offseg_spec.md §2.2-2.3) with the gather CARAFE, the loop-defined similarity and the
# parts already matched to the official vectors (kernel_normalizer, the sampler's bilinear sampling,
# the Offset Learning classifier).
# -------------------------------------------------------------------------------------------------


def _conv(x, conv):
    return F.conv2d(x, conv.weight, conv.bias, padding=conv.padding)


def _softmax_kernels(logits, k):
    n, _, h, w = logits.shape
    return logits.view(n, 1, k * k, h, w).softmax(2).view(n, k * k, h, w)  # Hamming window 1: no-op


def reference_similarity(x, k, d, eps=1e-8):
    """compute_similarity from its definition, vectorised over pixels (zero-vector neighbours outside)."""
    r = k // 2
    p = r * d
    padded = F.pad(x, (p, p, p, p))
    h, w = x.shape[-2:]
    norm = x.norm(dim=1).clamp_min(eps)
    out = []
    for i in range(k):
        for j in range(k):
            if (i, j) == (r, r):
                continue
            other = padded[:, :, i * d : i * d + h, j * d : j * d + w]
            out.append((x * other).sum(1) / (norm * other.norm(dim=1).clamp_min(eps)))
    return torch.stack(out, 1)


def reference_freqfusion(module: FreqFusion, hr, lr):
    """FreqFusion's seven steps (module docstring / spec §2.2 item 3) in float64."""
    kl, kh = module.lowpass_kernel, module.highpass_kernel
    hr0 = _conv(hr, module.hr_channel_compressor)
    lr0 = _conv(lr, module.lr_channel_compressor)
    hp_hr = _conv(hr0, module.content_encoder2)
    hr1 = 2 * hr0 - gather_carafe(hr0, _softmax_kernels(hp_hr, kh), kh, 1, 1)
    lp_hr = _conv(hr1, module.content_encoder)
    lowpass = lp_hr + gather_carafe(_conv(lr0, module.content_encoder), _softmax_kernels(lp_hr, kl), kl, 1, 2)
    lp_kernels = _softmax_kernels(lowpass, kl)
    highpass = hp_hr + gather_carafe(_conv(lr0, module.content_encoder2), lp_kernels, kl, 1, 2)
    lr_up = gather_carafe(lr, lp_kernels, kl, 1, 2)
    hr_out = 2 * hr - gather_carafe(hr, _softmax_kernels(highpass, kh), kh, 1, 1)
    ds = module.dysampler
    hx, lx = ds.norm_hr(hr1), ds.norm_lr(lr0)
    raw = _conv(reference_similarity(lx, 3, 2), ds.offset) + F.pixel_unshuffle(
        _conv(reference_similarity(hx, 3, 2), ds.hr_offset), 2
    )
    gate = _conv(lx, ds.direct_scale) + F.pixel_unshuffle(_conv(hx, ds.hr_direct_scale), 2)
    offsets = raw * gate.sigmoid() + ds.init_pos
    return lowpass, hr_out, ds.sample(lr_up, offsets)


def _randomise(module: torch.nn.Module) -> None:
    """Non-trivial weights everywhere (the default init makes kernels near-uniform and the gate 0.5)."""
    torch.manual_seed(1)
    for p in module.parameters():
        p.data.copy_(0.3 * torch.randn_like(p))


def test_freqfusion_matches_float64_reference():
    module = FreqFusion(16, 24, compressed_channels=16).double().eval()
    _randomise(module)
    hr = torch.randn(2, 16, 8, 10, dtype=torch.float64)
    lr = torch.randn(2, 24, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        got = module(hr, lr)
        ref = reference_freqfusion(module, hr, lr)
    for name, a, b in zip(("lowpass_mask", "hr", "lr"), got, ref):
        assert (a - b).abs().max() <= 1e-10 * max(1.0, float(b.abs().max())), name


def test_offseg_head_matches_float64_reference():
    from offseg_vis.models.heads.offseg_head import OffSegHead

    head = OffSegHead([8, 16, 24, 32], [32, 32, 64, 64], num_classes=5, channels=32).double().eval()
    _randomise(head)
    feats = [torch.randn(1, c, 64 // s, 96 // s, dtype=torch.float64) for c, s in zip((8, 16, 24, 32), (4, 8, 16, 32))]

    def pre(block, x):
        return F.relu(F.group_norm(F.conv2d(x, block.conv.weight), 32, block.gn.weight, block.gn.bias, 1e-5))

    with torch.no_grad():
        maps = [pre(b, f) for b, f in zip(head.pre, feats)][::-1]
        running = maps[0]
        for fusion, hr in zip(head.freqfusions, maps[1:]):
            _, hr_out, lr_out = reference_freqfusion(fusion, hr, running)
            ca, cb = hr_out.shape[1] // 4, lr_out.shape[1] // 4
            # interleave in 4 groups: [hr group 0, lr group 0, hr group 1, ...]
            order = [t for g in range(4) for t in (hr_out[:, g * ca : (g + 1) * ca], lr_out[:, g * cb : (g + 1) * cb])]
            running = torch.cat(order, 1)
        ref = head.classifier(pre(head.align, running))
        got = head(feats)
    assert got.shape == (1, 5, 16, 24)
    assert (got - ref).abs().max() <= 1e-10 * max(1.0, float(ref.abs().max()))


def test_efficientformer_bias_cache_never_serves_stale_biases():
    """The eval-time attention-bias cache (part of the same speed-up) equals the uncached gather,
    follows edits made through ``.data`` and size changes, and stays out of autograd."""
    from offseg_vis.models.backbones.efficientformer_v2 import efficientformer_v2

    backbone = efficientformer_v2("s1").eval()
    modules = [m for m in backbone.modules() if hasattr(m, "attention_biases_seg")]
    assert len(modules) == 5  # S1: 2 attention blocks in each of stages 3 and 4, and the downsampling one
    m = modules[0]
    nq = m.attention_bias_idxs_seg.shape[0]
    with torch.no_grad():
        first = m.relative_bias(nq, nq)
        assert m.relative_bias(nq, nq) is first  # served from the cache
        m.attention_biases_seg.data.normal_()  # bypasses the version counter
        second = m.relative_bias(nq, nq)
        assert torch.equal(second, m.attention_biases_seg[:, m.attention_bias_idxs_seg])
        resized = m.relative_bias(nq // 4, nq // 4)
        assert resized.shape[-2:] == (nq // 4, nq // 4)
    with_grad = m.relative_bias(nq, nq)
    assert with_grad.requires_grad and torch.equal(with_grad, second)


def test_carafe_graph_path_matches_the_definition(monkeypatch):
    """The unfold + einsum form used while a graph is recorded (ONNX export) is the same CARAFE."""
    import offseg_vis.models.freqfusion as ff

    monkeypatch.setattr(ff, "_tracing", lambda: True)
    f = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    m = torch.randn(2, 3 * 25, 6, 8, dtype=torch.float64)
    assert (ff.carafe(f, m, 5, 3, 2) - naive_carafe(f, m, 5, 3, 2)).abs().max() <= 1e-10
