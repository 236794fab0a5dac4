"""Shared pytest fixtures and helpers: reference data, float32 tolerances, a free port, one thread."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
VENDORED_REFERENCE = REPO / "tests" / "reference"
# CI sets OFFSEG_STRICT=1 (.ci/run): a missing reference file then fails the test instead of skipping
# it, so a numeric check cannot silently drop out of a fresh clone's run.
STRICT = os.environ.get("OFFSEG_STRICT", "") not in ("", "0")

EPS32 = torch.finfo(torch.float32).eps  # 2**-23 ~ 1.19e-7, twice float32's unit roundoff


# -------------------------------------------------------------------------------------------------
# reference data
# -------------------------------------------------------------------------------------------------


def missing(reason: str) -> None:
    """Skip the calling test because something it needs is absent, or fail it under OFFSEG_STRICT=1."""
    if STRICT:
        pytest.fail(f"{reason} (OFFSEG_STRICT=1: missing references fail instead of skipping)")
    pytest.skip(reason)


def full_reference_dir() -> Path | None:
    """``$OFFSEG_REFERENCE``, else the team's full copy beside the repository, else None."""
    env = os.environ.get("OFFSEG_REFERENCE")
    if env:
        return Path(env)
    shared = REPO.parent / "shared" / "reference"
    return shared if (shared / "vectors").is_dir() else None


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Official reference data: state-dict key lists and numeric test vectors of the official code.

    The full copy (``$OFFSEG_REFERENCE`` or ``../shared/reference``) when present, else the vendored
    ``tests/reference/``, which holds everything except the 20 MB EfficientFormerV2-S1 backbone
    vector (it vendors a reduced copy of that one instead, see tests/reference/README.md).
    """
    path = full_reference_dir() or VENDORED_REFERENCE
    if not (path / "vectors").is_dir():
        missing(f"reference data not found in {path}; set OFFSEG_REFERENCE")
    return path


# -------------------------------------------------------------------------------------------------
# float32 tolerances
# -------------------------------------------------------------------------------------------------


def fp32_tolerance(expected: torch.Tensor, reduction_len: int, factor: float = 8.0) -> float:
    """Absolute tolerance for a float32 result that should equal ``expected`` up to rounding.

    ``atol = factor * eps32 * sqrt(reduction_len) * max|expected|``

    Why: a float32 sum of n terms carries a rounding error of about u * sqrt(n) * S when the
    errors of its n additions are independent (a random walk; u = eps32 / 2 is the unit roundoff
    and S the size of the partial sums). Two correct implementations, or one library on two CPUs
    (MKL picks a different kernel, blocking and summation order per instruction set), differ by the
    difference of two such errors. Outputs here are O(max|expected|) and so, up to modest
    cancellation, are the partial sums, hence S ~ max|expected|. ``reduction_len`` is the longest
    reduction behind the compared value (channels of a matmul, pixels of a softmax-weighted sum,
    taps of a convolution). ``factor`` covers cancellation and errors carried in from earlier
    reductions; 8 suits one or two chained reductions (the official Offset Learning vectors, after
    float64 and four MKL code paths, reach 0.5 of the unit ``eps32 * sqrt(n) * max|expected|``),
    deep networks need more and say so where they use it. A genuine mistake (a wrong softmax axis,
    a missing term) moves outputs by a fraction of their magnitude, orders above this bound.
    """
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    return factor * EPS32 * math.sqrt(max(int(reduction_len), 1)) * scale


def scaled_error(actual: torch.Tensor, expected: torch.Tensor, reduction_len: int, factor: float = 8.0) -> float:
    """max|actual - expected| in units of :func:`fp32_tolerance` (<= 1 passes), computed in float64."""
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    err = float((actual.detach().double() - expected.detach().double()).abs().max()) if actual.numel() else 0.0
    tol = fp32_tolerance(expected, reduction_len, factor)
    if math.isnan(err):
        return math.inf
    return err / tol if tol > 0 else (0.0 if err == 0 else math.inf)


def assert_close_scaled(
    actual: torch.Tensor, expected: torch.Tensor, reduction_len: int, factor: float = 8.0, name: str = ""
) -> None:
    """Assert max|actual - expected| <= :func:`fp32_tolerance` (expected, reduction_len, factor)."""
    ratio = scaled_error(actual, expected, reduction_len, factor)
    if not ratio <= 1.0:
        err = float((actual.detach().double() - expected.detach().double()).abs().max())
        tol = fp32_tolerance(expected, reduction_len, factor)
        raise AssertionError(
            f"{name or 'tensor'}: max abs error {err:.3g} > tolerance {tol:.3g} "
            f"(= {factor} * eps32 * sqrt({reduction_len}) * max|expected| {float(expected.abs().max()):.3g}; "
            f"{ratio:.3g} x the tolerance)"
        )


def assert_fails_scaled(
    wrong: torch.Tensor, expected: torch.Tensor, reduction_len: int, factor: float = 8.0, name: str = ""
) -> None:
    """Negative check: a deliberately wrong computation must miss the same tolerance by a wide margin
    (10x), so the positive check above is known to be able to fail."""
    ratio = scaled_error(wrong, expected, reduction_len, factor)
    assert ratio > 10.0, f"{name or 'wrong variant'} is within {ratio:.3g} x the tolerance: the check is too loose"


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|actual - expected| / max|expected| (per tensor, float64)."""
    assert tuple(actual.shape) == tuple(expected.shape), (tuple(actual.shape), tuple(expected.shape))
    return float((actual.detach().double() - expected.detach().double()).abs().max() / expected.abs().max())


# -------------------------------------------------------------------------------------------------
# prediction references
# -------------------------------------------------------------------------------------------------


def expected_whole_predict(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What ``Segmentor.predict(images, "whole")`` must return, written out from its rule: zero-pad
    (B, 3, H, W) at the bottom/right to the backbone's ``size_divisor``, run the model, resize the
    logits bilinearly (align_corners=False) to the padded size and crop the real H x W.
    For divisor 1 that is a plain resize to (H, W). Returns (B, K, H, W)."""
    h, w = images.shape[-2:]
    d = getattr(model.backbone, "size_divisor", 1)
    ph, pw = -(-h // d) * d, -(-w // d) * d
    with torch.no_grad():
        logits = model(torch.nn.functional.pad(images, (0, pw - w, 0, ph - h)))
    return torch.nn.functional.interpolate(logits, size=(ph, pw), mode="bilinear", align_corners=False)[..., :h, :w]


def expected_slide_predict(model: torch.nn.Module, images: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """``predict(images, "slide", crop, stride)`` written out: windows of min(crop, side) every
    ``stride`` pixels, the last one flush with the bottom/right edge; each window predicted whole;
    overlapping logits averaged. Returns (B, K, H, W)."""
    h, w = images.shape[-2:]
    ch, cw = min(crop, h), min(crop, w)
    ys = sorted({min(y, h - ch) for y in range(0, max(h - ch, 0) + stride, stride)})
    xs = sorted({min(x, w - cw) for x in range(0, max(w - cw, 0) + stride, stride)})
    total = torch.zeros(images.shape[0], model.num_classes, h, w)
    count = torch.zeros(1, 1, h, w)
    for y in ys:
        for x in xs:
            total[..., y : y + ch, x : x + cw] += expected_whole_predict(model, images[..., y : y + ch, x : x + cw])
            count[..., y : y + ch, x : x + cw] += 1
    assert count.min() >= 1  # the windows cover the image
    return total / count


# -------------------------------------------------------------------------------------------------
# small shared utilities
# -------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module's tests, restored afterwards. For modules of many tiny ops:
    one thread is about as fast, and it does not stall when the CPU is shared (OpenMP barriers in
    thousands of small ops wait on descheduled threads). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)
    yield
