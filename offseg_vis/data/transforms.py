"""The OffSeg training recipe (spec section 3.2) and the test pipeline, in numpy / Pillow / torch.

Train: random resize (ratio 0.5-2.0 of a base scale, aspect kept) -> random crop whose dominant
class covers less than ``cat_max_ratio`` of the labelled pixels -> horizontal flip -> photometric
distortion (image only) -> ImageNet normalisation -> pad to the crop size (image 0, mask 255).
Test: resize to the scale (image only; the mask stays at its original size, because metrics are
computed at the original resolution as in mmseg) -> normalise.

Masks are only ever resized nearest-neighbour, so they never gain a value that was not there.
Every random choice comes from the ``rng`` passed in, so a sample is a pure function of it.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from offseg_vis.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from offseg_vis.errors import InputError

__all__ = [
    "TrainTransform",
    "TestTransform",
    "TransformedDataset",
    "photometric_distortion",
    "random_crop_box",
    "rescaled_size",
    "resize_image",
    "resize_mask",
    "to_normalized_tensor",
]

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255.0
_STD = np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (
        (int(value), int(value)) if isinstance(value, (int, np.integer)) else (int(value[0]), int(value[1]))
    )


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"Transforms take uint8 images of shape (H, W, 3), got {image.dtype} {image.shape}.")
    if mask.shape != image.shape[:2]:
        raise InputError(f"Image {image.shape[:2]} and mask {mask.shape} differ in size; they must match.")


def rescaled_size(
    height: int, width: int, scale: tuple[int, int] | None, ratio: float = 1.0
) -> tuple[int, int]:
    """Output (h, w) of a keep-ratio resize.

    With ``scale`` = (long, short) (mmseg convention, e.g. (2048, 512)) the image is scaled by the
    largest factor that keeps its long side <= long * ratio and its short side <= short * ratio;
    without a scale the image's own size is the base (the factor is ``ratio``).
    """
    if scale is None:
        factor = ratio
    else:
        long_side, short_side = max(scale) * ratio, min(scale) * ratio
        factor = min(long_side / max(height, width), short_side / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (h, w, 3), bilinear (antialiased when shrinking)."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) labels -> (h, w) nearest-neighbour: every output value is one of the input's."""
    height, width = mask.shape
    if (height, width) == tuple(size):
        return mask
    # Output pixel centre (r + 0.5) maps to input (r + 0.5) * H / h; take the pixel containing it.
    rows = np.minimum(((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.int64), width - 1)
    return mask[rows[:, None], cols[None, :]]


def random_crop_box(
    mask: np.ndarray,
    crop: tuple[int, int],
    rng: np.random.Generator,
    cat_max_ratio: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
    tries: int = 10,
) -> tuple[int, int, int, int]:
    """A crop window (y0, y1, x0, x1) of at most ``crop`` = (h, w) inside ``mask`` (H, W).

    With ``cat_max_ratio`` < 1, up to ``tries`` windows are drawn and the first whose most frequent
    class covers less than that share of the labelled (non-ignored) pixels, with at least two classes
    present, is kept; if none qualifies, the window with the smallest dominant share is used.
    """
    height, width = mask.shape
    ch, cw = min(crop[0], height), min(crop[1], width)
    best, best_share = None, np.inf
    for _ in range(tries if cat_max_ratio < 1.0 else 1):
        y0 = int(rng.integers(0, height - ch + 1))
        x0 = int(rng.integers(0, width - cw + 1))
        box = (y0, y0 + ch, x0, x0 + cw)
        if cat_max_ratio >= 1.0:
            return box
        labels = mask[y0 : y0 + ch, x0 : x0 + cw]
        counts = np.bincount(labels[labels != ignore_index].ravel().astype(np.int64))
        counts = counts[counts > 0]
        share = counts.max() / counts.sum() if len(counts) > 1 else 1.0
        if share < cat_max_ratio:
            return box
        if share < best_share:
            best, best_share = box, share
    return best


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """float (..., 3) RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of the circle)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    chroma = value - rgb.min(axis=-1)
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(
        value == r, (g - b) / safe, np.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
    )
    hue = np.where(chroma > 0, (hue / 6.0) % 1.0, 0.0)
    saturation = np.where(value > 0, chroma / np.where(value > 0, value, 1.0), 0.0)
    return np.stack([hue, saturation, value], axis=-1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """float (..., 3) HSV in [0, 1] -> RGB in [0, 1]."""
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    # Standard piecewise form: channel n takes v - v s max(0, min(k, 4 - k, 1)), k = (n + 6 h) mod 6.
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (n + hue * 6.0) % 6.0
        channels.append(value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return np.stack(channels, axis=-1)


def photometric_distortion(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: float = 32.0,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """mmseg's PhotoMetricDistortion semantics on float (H, W, 3) RGB in [0, 255] -> same shape.

    Each step happens with probability 1/2: brightness shift U(-32, 32); contrast x U(0.5, 1.5)
    (before or after the colour steps, chosen at random); saturation x U(0.5, 1.5); hue shift of an
    integer in [-18, 18] on OpenCV's 0-180 hue scale. Values are clipped to [0, 255] after each step.
    """
    out = image.astype(np.float32, copy=True)
    if rng.random() < 0.5:
        out = np.clip(out + rng.uniform(-brightness_delta, brightness_delta), 0.0, 255.0)
    contrast_first = rng.random() < 0.5
    do_contrast = rng.random() < 0.5
    contrast = rng.uniform(*contrast_range)
    if contrast_first and do_contrast:
        out = np.clip(out * contrast, 0.0, 255.0)
    do_saturation, do_hue = rng.random() < 0.5, rng.random() < 0.5
    saturation = rng.uniform(*saturation_range)
    hue_shift = int(rng.integers(-hue_delta, hue_delta + 1)) / 180.0
    if do_saturation or do_hue:
        hsv = _rgb_to_hsv(out / 255.0)
        if do_saturation:
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0.0, 1.0)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0] + hue_shift) % 1.0
        out = np.clip(_hsv_to_rgb(hsv) * 255.0, 0.0, 255.0).astype(np.float32)
    if not contrast_first and do_contrast:
        out = np.clip(out * contrast, 0.0, 255.0)
    return out


def to_normalized_tensor(image: np.ndarray) -> Tensor:
    """uint8 or float [0, 255] image (H, W, 3) -> ImageNet-normalised float32 tensor (3, H, W)."""
    normalized = (np.asarray(image, dtype=np.float32) - _MEAN) / _STD  # (H, W, 3)
    return torch.from_numpy(np.ascontiguousarray(normalized.transpose(2, 0, 1)))  # (3, H, W)


class TrainTransform:
    """The OffSeg training augmentation.

    Args:
        crop_size: crop (h, w) or side; outputs always have this size (padded when smaller).
        scale: base (long, short) of the random resize; None = the image's own size.
        ratio_range: range of the random resize ratio.
        cat_max_ratio: largest share one class may take of a crop (1 = no constraint).
        flip_prob: probability of a horizontal flip.
        photometric: apply the photometric distortion (image only).
        ignore_index: label of padding and of pixels excluded from the loss.

    Call: ``t(image uint8 (H, W, 3), mask int64 (H, W), rng)`` -> (image float32 (3, h, w),
    mask int64 (h, w)) with (h, w) = ``crop_size``.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        scale: tuple[int, int] | None = None,
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.crop_size = _pair(crop_size)
        self.scale = None if scale is None else _pair(scale)
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.cat_max_ratio = float(cat_max_ratio)
        self.flip_prob = float(flip_prob)
        self.photometric = bool(photometric)
        self.ignore_index = int(ignore_index)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[Tensor, Tensor]:
        _check_pair(image, mask)
        ratio = rng.uniform(*self.ratio_range)
        size = rescaled_size(image.shape[0], image.shape[1], self.scale, ratio)
        image, mask = resize_image(image, size), resize_mask(mask, size)

        y0, y1, x0, x1 = random_crop_box(mask, self.crop_size, rng, self.cat_max_ratio, self.ignore_index)
        image, mask = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
        if rng.random() < self.flip_prob:
            image, mask = image[:, ::-1], mask[:, ::-1]
        pixels = photometric_distortion(image, rng) if self.photometric else image

        image_t = to_normalized_tensor(pixels)  # (3, h, w)
        mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))  # (h, w)
        return self._pad(image_t, mask_t)

    def _pad(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Pad bottom/right to the crop size: image with 0 (after normalisation), mask with ignore."""
        height, width = self.crop_size
        ph, pw = height - image.shape[1], width - image.shape[2]
        if ph <= 0 and pw <= 0:
            return image, mask
        padded_image = image.new_zeros((3, height, width))
        padded_mask = mask.new_full((height, width), self.ignore_index)
        padded_image[:, : image.shape[1], : image.shape[2]] = image
        padded_mask[: mask.shape[0], : mask.shape[1]] = mask
        return padded_image, padded_mask

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, scale={self.scale}, ratio_range={self.ratio_range}, "
            f"cat_max_ratio={self.cat_max_ratio}, flip_prob={self.flip_prob}, photometric={self.photometric})"
        )


class TestTransform:
    """Test pipeline: keep-ratio resize of the image to ``scale`` (long, short), then normalise.

    Call: ``t(image uint8 (H, W, 3), mask int64 (H, W), rng=None)`` -> (image float32 (3, h, w),
    mask int64 (H, W)). The mask is not resized: predictions are resized back to it (mmseg protocol).
    """

    __test__ = False  # not a pytest class

    def __init__(self, scale: int | tuple[int, int] | None = None) -> None:
        self.scale = None if scale is None else _pair(scale)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        _check_pair(image, mask)
        if self.scale is not None:
            image = resize_image(image, rescaled_size(image.shape[0], image.shape[1], self.scale))
        return to_normalized_tensor(image), torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))

    def __repr__(self) -> str:
        return f"TestTransform(scale={self.scale})"


class TransformedDataset(torch.utils.data.Dataset):
    """A dataset of (image, mask, name) seen through a transform.

    The generator for sample ``i`` is ``np.random.default_rng([seed, epoch, i])``, so a sample
    depends only on (seed, epoch, i): runs are reproducible whatever the worker count, and a resumed
    run sees exactly the samples it would have seen. Call :meth:`set_epoch` before each epoch (it is
    forwarded to the wrapped dataset, which lets a streaming FashionScenes draw fresh scenes); with
    a DataLoader, do it before iterating, and do not use ``persistent_workers`` (workers keep the
    copy of the dataset, and so the epoch, they started with).

    Returns ``(image float32 (3, h, w), mask int64 (h, w))``; :meth:`name` gives item names.
    """

    def __init__(self, dataset, transform, seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the random draws (and, for streaming datasets, the scenes) of ``epoch``."""
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def name(self, i: int) -> str:
        """Name of item ``i`` (from the wrapped dataset)."""
        if hasattr(self.dataset, "name"):
            return self.dataset.name(i)
        return self.dataset[i][2]

    @property
    def classes(self):
        return self.dataset.classes

    @property
    def palette(self):
        return self.dataset.palette

    @property
    def num_classes(self) -> int:
        return len(self.dataset.classes)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image, mask, _ = self.dataset[i]
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        return self.transform(image, mask, rng)
