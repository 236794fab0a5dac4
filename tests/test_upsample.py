"""upsampled_argmax equals the argmax of PyTorch's bilinear upsampling (computed in float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from offseg_vis.models.upsample import bilinear_taps, upsampled_argmax

pytestmark = pytest.mark.numeric


def _reference(logits: torch.Tensor, size, crop, align_corners=False):
    """float64 upsampled logits (B, K, H', W') and their argmax."""
    up = F.interpolate(logits.double(), size=size, mode="bilinear", align_corners=align_corners)
    if crop is not None:
        up = up[..., : crop[0], : crop[1]]
    return up, up.argmax(1)


def _clear(up: torch.Tensor) -> torch.Tensor:
    """Pixels whose two best classes differ by more than float32 rounding of a 4-tap blend can decide:
    a few ulps of the largest |logit| (the blend's terms are at most that large)."""
    top2 = up.topk(2, dim=1).values
    margin = 16 * torch.finfo(torch.float32).eps * up.abs().amax()
    return (top2[:, 0] - top2[:, 1]) > margin


@pytest.mark.parametrize(
    "shape, size, crop",
    [
        ((2, 150, 32, 32), (128, 128), None),  # x4, Offset Learning's stride-4 logits
        ((1, 11, 17, 23), (68, 96), (60, 90)),  # padded canvas, then the image's crop
        ((1, 19, 5, 7), (13, 31), None),  # non-integer scales
        ((1, 3, 9, 9), (9, 9), None),  # same size: the argmax itself
        ((1, 7, 12, 10), (6, 5), None),  # downscaling
    ],
)
@pytest.mark.parametrize("channels_last", [True, False])
def test_upsampled_argmax_equals_the_float64_reference(shape, size, crop, channels_last):
    g = torch.Generator().manual_seed(sum(shape))
    b, k, h, w = shape
    logits = torch.randn(b, h * w, k, generator=g) * 4
    logits = logits.transpose(1, 2).reshape(b, k, h, w)  # Offset Learning's layout (channels-last)
    if not channels_last:
        logits = logits.contiguous()
    up, expected = _reference(logits, size, crop)
    ours = upsampled_argmax(logits, size, crop)
    clear = _clear(up)
    assert clear.float().mean() > 0.99  # the comparison covers almost every pixel
    assert torch.equal(ours[clear], expected[clear])


def test_upsampled_argmax_can_fail():
    """Against another interpolation (align_corners=True) the same check finds many differences."""
    logits = torch.randn(1, 20, 16, 16, generator=torch.Generator().manual_seed(1))
    up, expected = _reference(logits, (64, 64), None, align_corners=True)
    ours = upsampled_argmax(logits, (64, 64))
    clear = _clear(up)
    assert (ours[clear] != expected[clear]).float().mean() > 0.05


def test_bilinear_taps_follow_the_definition():
    """A loop over the definition in float64: src = (in/out)(o + 1/2) - 1/2, clamped at 0."""
    for out_size, in_size in [(512, 128), (31, 7), (5, 12), (9, 9)]:
        i0, i1, weight = bilinear_taps(out_size, in_size)
        for o in range(out_size):
            src = max(0.0, in_size / out_size * (o + 0.5) - 0.5)
            lo = min(int(src), in_size - 1)
            assert (int(i0[o]), int(i1[o])) == (lo, min(lo + 1, in_size - 1))
            assert abs(float(weight[o]) - min(src - lo, 1.0)) < 1e-6
