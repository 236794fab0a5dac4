"""The class map of logits upsampled bilinearly to the image, without forming the upsampled logits.

A prediction at image resolution is ``argmax_k interpolate(logits, size, bilinear)[k]``. With K = 150
classes at 512², the upsampled logits are 39 M floats (157 MB) and, on a CPU, PyTorch's kernel for them
plus the strided argmax over K took longer than the model itself (≈ 1.9 s against ≈ 0.5 s for OffSeg-T
on one core; the channels-last layout Offset Learning returns took 3–5 s). :func:`upsampled_argmax`
computes the same interpolation a band of output rows at a time on channels-last data, so every
multiply-add and the argmax run along contiguous classes and the band stays small; only the (H, W)
class map is kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

BAND_BYTES = 4 << 20  # one band of upsampled logits: a few MB, so the band's passes stay near the cache


def bilinear_taps(out_size: int, in_size: int, device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Source taps of bilinear resizing (``align_corners=False``, output size given) along one axis.

    Returns:
        (i0, i1, weight): int64 (out_size,) indices of the two input samples each output sample blends,
        and float32 (out_size,) weight of ``i1`` (``1 - weight`` goes to ``i0``), computed in float32 as
        PyTorch's CPU kernel does: ``src = (in/out)·(o + ½) − ½`` clamped at 0, ``i0 = ⌊src⌋``,
        ``i1 = min(i0 + 1, in − 1)``.
    """
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    src = (scale * (torch.arange(out_size, dtype=torch.float32) + 0.5) - 0.5).clamp_min(0.0)
    i0 = src.long().clamp_max(in_size - 1)
    weight = (src - i0.float()).clamp(0.0, 1.0)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0.to(device), i1.to(device), weight.to(device)


def upsampled_argmax(logits: Tensor, size: tuple[int, int], crop: tuple[int, int] | None = None) -> Tensor:
    """``interpolate(logits, size, mode="bilinear", align_corners=False).argmax(1)``, cropped, in bands.

    Args:
        logits: (B, K, h, w) float scores, any memory layout (Offset Learning's is channels-last).
        size: (H, W) to resize to (the padded canvas the model saw).
        crop: (H', W') <= size: keep only the top-left H'×W' of the result (the real image), or None.

    Returns:
        (B, H', W') int64 class ids. Equal to PyTorch's up to the order of the multiply-adds: a pixel
        whose two best classes are within a few float32 ulps of each other may take the other one.
    """
    b, k, h, w = logits.shape
    out_h, out_w = crop if crop is not None else size
    nhwc = logits.permute(0, 2, 3, 1)  # (B, h, w, K): a view when the logits are channels-last
    if not nhwc.is_contiguous():
        nhwc = nhwc.contiguous()
    rows0, rows1, row_weight = bilinear_taps(size[0], h, logits.device)
    cols0, cols1, col_weight = bilinear_taps(size[1], w, logits.device)
    cols0, cols1, col_weight = cols0[:out_w], cols1[:out_w], col_weight[:out_w, None]
    labels = torch.empty(b, out_h, out_w, dtype=torch.long, device=logits.device)
    band = max(1, BAND_BYTES // max(1, out_w * k * nhwc.element_size()))
    for top in range(0, out_h, band):
        rows = slice(top, min(out_h, top + band))
        upper = nhwc[:, rows0[rows]]  # (B, R, w, K)
        lower = nhwc[:, rows1[rows]]
        blended = torch.lerp(upper, lower, row_weight[rows, None, None].to(nhwc.dtype))  # (B, R, w, K)
        left, right = blended[:, :, cols0], blended[:, :, cols1]  # (B, R, W', K)
        torch.argmax(torch.lerp(left, right, col_weight.to(nhwc.dtype)), dim=-1, out=labels[:, rows])
    return labels
