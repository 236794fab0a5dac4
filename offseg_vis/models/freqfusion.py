"""FreqFusion (Chen et al., TPAMI 2024) and CARAFE in plain PyTorch (no compiled ops).

FreqFusion fuses a high-resolution map ``hr`` (B, C_hr, 2h, 2w) with a low-resolution map ``lr``
(B, C_lr, h, w), as OffSeg's decoder uses it (reference README, "OffSegHead and FreqFusion"):

1. compress both to ``compressed_channels`` with 1×1 convs: h₀, l;
2. sharpen: h₁ = 2·h₀ − CARAFE₃(h₀) with kernels predicted from h₀ (``content_encoder2``);
3. low-pass kernels m_lr (5×5) from h₁ plus the CARAFE-upsampled kernels predicted from l;
4. high-pass kernels m_hr (3×3) from h₀ plus the CARAFE-upsampled kernels predicted from l;
5. lr' = CARAFE₅(lr, m_lr, ×2) (adaptive low-pass upsampling);
6. hr' = 2·hr − CARAFE₃(hr, m_hr) (adaptive high-pass boost);
7. lr' is resampled by :class:`LocalSimGuidedSampler` with offsets from the local similarity of
   h₁ and l.

Parameter names produce exactly the official state-dict keys (``hr_channel_compressor``,
``content_encoder``, ``dysampler.offset`` ...). Only the configuration OffSeg uses is built
(lowpass 5, highpass 3, up_group 1, encoder kernel 3, 4 resample groups, no Hamming window).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offseg_vis.errors import InputError

__all__ = [
    "FreqFusion",
    "FreqFusionOutput",
    "LocalSimGuidedSampler",
    "carafe",
    "compute_similarity",
    "kernel_normalizer",
]


def carafe(features: Tensor, kernels: Tensor, kernel_size: int, group: int = 1, scale: int = 1) -> Tensor:
    """Content-aware reassembly (CARAFE), as defined by mmcv's CUDA kernel.

    out[n, c, y, x] = Σ_{i,j<k} f[n, c, ⌊y/s⌋ + i − (k−1)/2, ⌊x/s⌋ + j − (k−1)/2]
                               · m[n, g(c)·k² + i·k + j, y, x],    g(c) = ⌊c / (C/G)⌋,

    with zero padding outside f. Computed per sub-pixel phase: output pixel (y·s + a, x·s + b)
    belongs to phase (a, b), whose s² maps of (h, w) are each one shifted multiply-add per tap,
    then interleaved (a pixel shuffle). Why: every operand then runs contiguously along w, so the
    multiply-adds vectorise (with the phases as the innermost axes, as in a literal (h, s, w, s)
    layout, the inner loop is 2 long); and the output is built in channel blocks of about 2 MB, so
    the k² passes over each block hit the cache instead of memory (512² OffSeg-T, the 224-channel
    ×2 upsampling: ≈ 5× faster than k² passes over the whole output).

    Args:
        features: f (N, C, h, w); C divisible by ``group``.
        kernels: m (N, G·k², s·h, s·w), normally from :func:`kernel_normalizer`.
        kernel_size: k (odd).
        group: G, channel groups sharing one kernel.
        scale: s, the upsampling factor.

    Returns:
        (N, C, s·h, s·w).
    """
    n, c, h, w = features.shape
    k, g, s = kernel_size, group, scale
    if k % 2 != 1:
        raise ValueError(f"CARAFE kernel_size must be odd, got {k}.")
    if c % g:
        raise ValueError(f"CARAFE: {c} channels cannot be split into {g} groups.")
    if kernels.shape != (n, g * k * k, s * h, s * w):
        raise InputError(
            f"CARAFE kernels must have shape {(n, g * k * k, s * h, s * w)} for features {tuple(features.shape)} "
            f"at scale {s}, got {tuple(kernels.shape)}."
        )
    r = (k - 1) // 2
    cg = c // g
    padded = F.pad(features, (r, r, r, r)).view(n, g, cg, h + 2 * r, w + 2 * r)
    # (N, G, k², s, s, h, w): tap t of phase (a, b) at low-res pixel (y, x) is m[t, y·s + a, x·s + b]
    taps = kernels.view(n, g, k * k, h, s, w, s).permute(0, 1, 2, 4, 6, 3, 5).contiguous()
    if _tracing():
        # A recorded graph gets the same sum as one unfold and one contraction: two nodes instead
        # of k² slices and multiply-adds, each carrying symbolic sizes through the exporter.
        windows = F.unfold(features, k, padding=r).view(n, g, cg, k * k, h, w)  # (N, G, C/G, k², h, w)
        out = torch.einsum("ngcthw,ngtabhw->ngcabhw", windows, taps)  # (N, G, C/G, s, s, h, w)
        return out.permute(0, 1, 2, 5, 3, 6, 4).reshape(n, c, s * h, s * w)
    # Without autograd the first tap writes each block (no zero fill, one pass fewer; the sum is
    # bit-identical since 0 + x = x); ``out=`` does not record gradients, so training starts from zeros.
    first_writes = not (torch.is_grad_enabled() and (features.requires_grad or kernels.requires_grad))
    out = features.new_empty((n, g, cg, s, s, h, w)) if first_writes else features.new_zeros((n, g, cg, s, s, h, w))
    step = _carafe_block_channels(cg, n * g * s * s * h * w)
    for c0 in range(0, cg, step):
        block = out[:, :, c0 : c0 + step]  # a view: the in-place adds land in ``out``
        source = padded[:, :, c0 : c0 + step, None, None]  # (N, G, b, 1, 1, h + 2r, w + 2r)
        for i in range(k):
            for j in range(k):
                # f[⌊y/s⌋ + i − r, ⌊x/s⌋ + j − r] for every phase, times that phase's tap weight
                window, tap = source[..., i : i + h, j : j + w], taps[:, :, None, i * k + j]
                if i == j == 0 and first_writes:
                    torch.mul(window, tap, out=block)
                else:
                    block.addcmul_(window, tap)
    return out.permute(0, 1, 2, 5, 3, 6, 4).reshape(n, c, s * h, s * w)  # pixel shuffle of the phases


# Output elements per CARAFE channel block (2 MB of float32): the k² in-place passes over one
# block then stay in the CPU's cache. 2 MB rather than 1 MB: half the calls (each one an OpenMP
# region), and faster at 1 and 2 threads (224 channels, 64² -> 128², k 5, median of 21 interleaved
# calls on a loaded 2-core machine: 1 thread 67 -> 42 ms, 2 threads 220 -> 116 ms).
_CARAFE_BLOCK_ELEMENTS = 1 << 19


def _tracing() -> bool:
    """True while torch.jit, torch.compile, torch.export or the ONNX exporter records the graph."""
    return (
        torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.onnx.is_in_onnx_export()
    )


def _carafe_block_channels(channels: int, per_channel: int) -> int:
    """Channels per CARAFE block."""
    return max(1, min(channels, _CARAFE_BLOCK_ELEMENTS // max(1, per_channel)))


def kernel_normalizer(mask: Tensor, kernel_size: int, hamming: Tensor | float | None = None) -> Tensor:
    """Turn predicted kernel logits into normalised CARAFE kernels.

    Channels are viewed as (groups, k²); a softmax runs over the k² taps, the kernels are multiplied
    by a Hamming window (a scalar or a (k, k) tensor; FreqFusion's default is the scalar 1) and
    divided by their sum again. Channel order is g·k² + (ky·k + kx).

    Args:
        mask: (N, G·k², H, W) logits.
        kernel_size: k.
        hamming: window, broadcast to (k, k); None means 1.

    Returns:
        (N, G·k², H, W) kernels summing to 1 over each group's k² taps.
    """
    n, ch, h, w = mask.shape
    taps = kernel_size * kernel_size
    if ch % taps:
        raise ValueError(f"kernel_normalizer: {ch} channels are not a multiple of {kernel_size}² taps.")
    kernels = mask.view(n, ch // taps, taps, h, w).softmax(dim=2)  # (N, G, k², H, W)
    if hamming is not None:
        window = torch.as_tensor(hamming, dtype=kernels.dtype, device=kernels.device)
        kernels = kernels * window.expand(kernel_size, kernel_size).reshape(1, 1, taps, 1, 1)
    kernels = kernels / kernels.sum(dim=2, keepdim=True)
    return kernels.view(n, ch, h, w)


def compute_similarity(x: Tensor, kernel_size: int = 3, dilation: int = 1) -> Tensor:
    """Cosine similarity of every pixel with its k×k dilated neighbours, the centre left out.

    x (B, C, H, W) -> (B, k²−1, H, W); neighbour order is raster order of the window without the
    centre. Neighbours outside the map are zero vectors and give similarity 0; a pixel's norm is
    clamped at eps = 1e-8 (as ``F.cosine_similarity`` does).

    Why this shape: the features are normalised once, and since sim(p, p + δ) = sim(p + δ, p),
    only the "forward" half of the offsets needs a dot product; the backward half is the same
    product map read at a shifted position. Each map is one multiply and one channel sum over a
    padded grid, instead of k² window copies with their norms recomputed for every pair.
    """
    b, c, h, w = x.shape
    k, d = kernel_size, dilation
    r = k // 2
    if k % 2 != 1:
        raise ValueError(f"compute_similarity needs an odd window, got {k}.")
    pad = r * d
    # √(Σ x²) over channels as a plain sum: linalg.vector_norm over dim 1 of an NCHW map took 5.4 vs
    # 0.6 ms (64 × 128², one thread), and this runs twice per FreqFusion.
    norm = (x * x).sum(dim=1, keepdim=True).sqrt()  # (B, 1, H, W); out of place: autograd needs it
    unit = x / norm.clamp_min(1e-8)  # (B, C, H, W)
    padded = F.pad(unit, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p); zero vectors outside
    hp, wp = h + 2 * pad, w + 2 * pad
    sims: dict[tuple[int, int], Tensor] = {}
    for i in range(k):
        for j in range(k):
            dy, dx = (i - r) * d, (j - r) * d
            if (dy, dx) <= (0, 0):
                continue  # (0, 0) is the centre; the rest of the backward half is read below
            # prod[u, v] = padded[u, v] · padded[u + dy, v + dx] over the valid padded range.
            v0 = max(0, -dx)
            v1 = wp - max(0, dx)
            prod = (padded[:, :, : hp - dy, v0:v1] * padded[:, :, dy:, v0 + dx : v1 + dx]).sum(1)
            # pixel (y, x) sits at padded (y + p, x + p): forward δ at (y + p, x + p), backward −δ
            # at (y + p − dy, x + p − dx), both shifted by v0 columns.
            sims[(dy, dx)] = prod[:, pad : pad + h, pad - v0 : pad - v0 + w]
            sims[(-dy, -dx)] = prod[:, pad - dy : pad - dy + h, pad - dx - v0 : pad - dx - v0 + w]
    order = [((i - r) * d, (j - r) * d) for i in range(k) for j in range(k) if (i, j) != (r, r)]
    return torch.stack([sims[o] for o in order], dim=1)  # (B, k² − 1, H, W)


class LocalSimGuidedSampler(nn.Module):
    """Offset-based resampling guided by local similarity (FreqFusion's ``dysampler``).

    Offsets are predicted at lr resolution for each of ``groups`` channel groups and each of the
    scale² sub-pixels, from the 8-neighbour cosine similarity (dilation 2) of the GroupNorm-ed
    features, gated by a sigmoid "direct scale"; the hr-resolution branches are folded in with
    pixel_unshuffle. ``feat2sample`` (already at hr resolution) is then bilinearly sampled at the
    lr pixel centres plus the offsets (``grid_sample``, border padding).

    Offset channel layout: comp·(G·s²) + g·s² + i·s + j, comp 0 = x, comp 1 = y, in lr pixels.

    Args:
        in_channels: channels of the compressed hr and lr features (divisible by 8).
        scale: upsampling factor s (2).
        groups: resampling groups G (4).
        kernel_size: size of the four offset/scale convs (3).
        local_window: similarity window (3).
    """

    def __init__(
        self, in_channels: int, scale: int = 2, groups: int = 4, kernel_size: int = 3, local_window: int = 3
    ) -> None:
        super().__init__()
        self.scale = scale
        self.groups = groups
        self.local_window = local_window
        sim_channels = local_window * local_window - 1
        out_lr = 2 * groups * scale * scale
        pad = kernel_size // 2
        self.register_buffer("init_pos", self._initial_positions(scale, groups))
        self.offset = nn.Conv2d(sim_channels, out_lr, kernel_size, padding=pad)
        self.direct_scale = nn.Conv2d(in_channels, out_lr, kernel_size, padding=pad)
        self.hr_offset = nn.Conv2d(sim_channels, 2 * groups, kernel_size, padding=pad)
        self.hr_direct_scale = nn.Conv2d(in_channels, 2 * groups, kernel_size, padding=pad)
        self.norm_hr = nn.GroupNorm(in_channels // 8, in_channels)
        self.norm_lr = nn.GroupNorm(in_channels // 8, in_channels)
        self.reset_parameters()

    @staticmethod
    def _initial_positions(scale: int, groups: int) -> Tensor:
        """Sub-pixel centres relative to the lr pixel centre: (1, 2·G·s², 1, 1).

        For s = 2 these are ±0.25 lr pixels: x varies with the sub-column j, y with the sub-row i.
        """
        sub = (torch.arange(scale, dtype=torch.float32) - (scale - 1) / 2) / scale  # (s,)
        x = sub.view(1, scale).expand(scale, scale)  # [i, j] -> sub[j]
        y = sub.view(scale, 1).expand(scale, scale)  # [i, j] -> sub[i]
        pos = torch.stack([x, y]).reshape(2, 1, scale * scale).expand(2, groups, scale * scale)
        return pos.reshape(1, -1, 1, 1).clone()

    def reset_parameters(self) -> None:
        """Offsets start tiny and the gate at sigmoid(0) = 0.5, so sampling starts near the sub-pixel
        centres (plain resampling); norms start as identity."""
        for conv in (self.offset, self.hr_offset):
            nn.init.normal_(conv.weight, std=1e-3)
            nn.init.zeros_(conv.bias)
        for conv in (self.direct_scale, self.hr_direct_scale):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.norm_hr.reset_parameters()
        self.norm_lr.reset_parameters()

    def predict_offsets(self, hr_x: Tensor, lr_x: Tensor) -> Tensor:
        """hr_x (B, C, s·h, s·w), lr_x (B, C, h, w) -> offsets (B, 2·G·s², h, w) in lr pixels."""
        hr_x = self.norm_hr(hr_x)
        lr_x = self.norm_lr(lr_x)
        hr_sim = compute_similarity(hr_x, self.local_window, dilation=2)  # (B, 8, s·h, s·w)
        lr_sim = compute_similarity(lr_x, self.local_window, dilation=2)  # (B, 8, h, w)
        raw = self.offset(lr_sim) + F.pixel_unshuffle(self.hr_offset(hr_sim), self.scale)
        gate = self.direct_scale(lr_x) + F.pixel_unshuffle(self.hr_direct_scale(hr_x), self.scale)
        return raw * gate.sigmoid() + self.init_pos

    def sample(self, feat: Tensor, offsets: Tensor) -> Tensor:
        """Bilinearly sample feat (B, C, H', W') at lr centres + offsets (B, 2·G·s², h, w).

        Returns (B, C, s·h, s·w); group g of the channels uses its own offsets.
        """
        b, _, h, w = offsets.shape
        s, g = self.scale, self.groups
        offsets = offsets.view(b, 2, g * s * s, h, w)
        ys = torch.arange(h, dtype=feat.dtype, device=feat.device) + 0.5
        xs = torch.arange(w, dtype=feat.dtype, device=feat.device) + 0.5
        base = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)])  # (2, h, w), x first
        size = torch.tensor([w, h], dtype=feat.dtype, device=feat.device).view(1, 2, 1, 1, 1)
        coords = 2 * (base.view(1, 2, 1, h, w) + offsets) / size - 1  # (B, 2, G·s², h, w) in [-1, 1]
        coords = F.pixel_shuffle(coords.reshape(b, 2 * g * s * s, h, w), s)  # (B, 2·G, s·h, s·w)
        grid = coords.view(b, 2, g, s * h, s * w).permute(0, 2, 3, 4, 1).reshape(b * g, s * h, s * w, 2)
        grouped = feat.reshape(b * g, -1, feat.shape[-2], feat.shape[-1])  # (B·G, C/G, H', W')
        out = F.grid_sample(grouped, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.view(b, -1, s * h, s * w)

    def forward(self, hr_x: Tensor, lr_x: Tensor, feat2sample: Tensor) -> Tensor:
        """Guides hr_x (B, C, s·h, s·w) and lr_x (B, C, h, w); feat2sample (B, C', H', W') -> (B, C', s·h, s·w)."""
        if feat2sample.shape[1] % self.groups:
            raise ValueError(f"feat2sample has {feat2sample.shape[1]} channels, not divisible by {self.groups}.")
        return self.sample(feat2sample, self.predict_offsets(hr_x, lr_x))


class FreqFusionOutput(NamedTuple):
    """FreqFusion results: the low-pass kernel logits m_lr (B, 25, 2h, 2w), hr' (B, C_hr, 2h, 2w)
    and lr' (B, C_lr, 2h, 2w)."""

    lowpass_mask: Tensor
    hr: Tensor
    lr: Tensor


class FreqFusion(nn.Module):
    """Frequency-aware fusion of a high-resolution and a ×2 lower-resolution feature map.

    Args:
        hr_channels: C_hr of the finer map.
        lr_channels: C_lr of the coarser map.
        compressed_channels: width of the kernel-predicting features (OffSeg: (C_hr + C_lr) // 4).
        lowpass_kernel: k of the low-pass CARAFE (5).
        highpass_kernel: k of the high-pass CARAFE (3).
        encoder_kernel: kernel of the two content encoders (3).
        feature_resample_group: groups of the similarity-guided sampler (4).
    """

    def __init__(
        self,
        hr_channels: int,
        lr_channels: int,
        compressed_channels: int = 64,
        lowpass_kernel: int = 5,
        highpass_kernel: int = 3,
        encoder_kernel: int = 3,
        feature_resample_group: int = 4,
    ) -> None:
        super().__init__()
        self.lowpass_kernel = lowpass_kernel
        self.highpass_kernel = highpass_kernel
        # No Hamming window: the official module keeps scalar 1.0 buffers in its state.
        self.register_buffer("hamming_lowpass", torch.ones(1))
        self.register_buffer("hamming_highpass", torch.ones(1))
        pad = encoder_kernel // 2
        self.hr_channel_compressor = nn.Conv2d(hr_channels, compressed_channels, 1)
        self.lr_channel_compressor = nn.Conv2d(lr_channels, compressed_channels, 1)
        self.content_encoder = nn.Conv2d(compressed_channels, lowpass_kernel**2, encoder_kernel, padding=pad)
        self.dysampler = LocalSimGuidedSampler(
            compressed_channels, scale=2, groups=feature_resample_group, kernel_size=encoder_kernel
        )
        self.content_encoder2 = nn.Conv2d(compressed_channels, highpass_kernel**2, encoder_kernel, padding=pad)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Compressors: Xavier-uniform; kernel encoders: N(0, 0.001²) so the first kernels are near
        uniform; zero biases; the sampler initialises itself."""
        for conv in (self.hr_channel_compressor, self.lr_channel_compressor):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        for conv in (self.content_encoder, self.content_encoder2):
            nn.init.normal_(conv.weight, std=1e-3)
            nn.init.zeros_(conv.bias)
        self.dysampler.reset_parameters()

    def _lowpass(self, logits: Tensor) -> Tensor:
        return kernel_normalizer(logits, self.lowpass_kernel, self.hamming_lowpass)

    def _highpass(self, logits: Tensor) -> Tensor:
        return kernel_normalizer(logits, self.highpass_kernel, self.hamming_highpass)

    def forward(self, hr_feat: Tensor, lr_feat: Tensor) -> FreqFusionOutput:
        """hr_feat (B, C_hr, 2h, 2w), lr_feat (B, C_lr, h, w) -> :class:`FreqFusionOutput`."""
        if hr_feat.shape[-2:] != (2 * lr_feat.shape[-2], 2 * lr_feat.shape[-1]):
            raise InputError(
                f"FreqFusion needs the hr map to be exactly twice the lr map, got {tuple(hr_feat.shape[-2:])} "
                f"and {tuple(lr_feat.shape[-2:])}; pad the input image to a multiple of 32."
            )
        kl, kh = self.lowpass_kernel, self.highpass_kernel
        hr0 = self.hr_channel_compressor(hr_feat)  # (B, Cc, 2h, 2w)
        lr0 = self.lr_channel_compressor(lr_feat)  # (B, Cc, h, w)

        # Sharpen the compressed hr map with its own high-pass kernels.
        hr_highpass_logits = self.content_encoder2(hr0)  # (B, kh², 2h, 2w)
        hr1 = 2 * hr0 - carafe(hr0, self._highpass(hr_highpass_logits), kh, 1, 1)

        # Low-pass kernels: hr prediction + lr prediction upsampled with the hr-guided kernels.
        hr_lowpass_logits = self.content_encoder(hr1)  # (B, kl², 2h, 2w)
        lowpass_logits = hr_lowpass_logits + carafe(
            self.content_encoder(lr0), self._lowpass(hr_lowpass_logits), kl, 1, 2
        )
        # High-pass kernels: from the unsharpened hr0 + lr prediction upsampled with the low-pass kernels.
        lowpass_kernels = self._lowpass(lowpass_logits)  # (B, kl², 2h, 2w)
        highpass_logits = hr_highpass_logits + carafe(self.content_encoder2(lr0), lowpass_kernels, kl, 1, 2)

        lr_up = carafe(lr_feat, lowpass_kernels, kl, 1, 2)  # (B, C_lr, 2h, 2w)
        hr_out = 2 * hr_feat - carafe(hr_feat, self._highpass(highpass_logits), kh, 1, 1)
        lr_out = self.dysampler(hr_x=hr1, lr_x=lr0, feat2sample=lr_up)
        return FreqFusionOutput(lowpass_mask=lowpass_logits, hr=hr_out, lr=lr_out)
