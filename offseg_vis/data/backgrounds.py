"""Real photos and textures bundled with scikit-image / scikit-learn, used as FashionScenes backgrounds.

Only accessors that read files shipped inside the wheels are listed (none of them downloads).
Train and val use disjoint source images, so a model is judged on backgrounds it never saw.
"""

from __future__ import annotations

import colorsys
from functools import cache

import numpy as np
from PIL import Image

from offseg_vis.errors import DatasetError

# name -> what it shows (for the README and the manifest).
TRAIN_BACKGROUNDS = {
    "astronaut": "colour photo: astronaut portrait with flag",
    "chelsea": "colour photo: a cat",
    "hubble_deep_field": "colour photo: galaxies (Hubble)",
    "immunohistochemistry": "colour microscopy: stained tissue",
    "retina": "colour photo: human retina",
    "stereo_motorcycle": "colour photo: motorcycle in a workshop (left view)",
    "sklearn_china": "colour photo: a Chinese temple (scikit-learn)",
    "brick": "grey texture: brick wall",
    "cell": "grey microscopy: cells",
    "clock": "grey photo: a wall clock",
    "coins": "grey photo: coins",
    "gravel": "grey texture: gravel",
    "moon": "grey photo: lunar surface",
    "page": "grey scan: a printed page",
    "text": "grey photo: text on a sign",
    "microaneurysms": "grey photo: retinal microaneurysms",
}
VAL_BACKGROUNDS = {
    "coffee": "colour photo: a cup of coffee",
    "rocket": "colour photo: a rocket on its launch pad",
    "sklearn_flower": "colour photo: a flower (scikit-learn)",
    "camera": "grey photo: a cameraman",
    "grass": "grey texture: grass",
}
BACKGROUNDS = {"train": TRAIN_BACKGROUNDS, "val": VAL_BACKGROUNDS}


def _load_rgb(name: str) -> tuple[np.ndarray, bool]:
    """Source image ``name`` -> (uint8 (H, W, 3), was_grey)."""
    if name.startswith("sklearn_"):
        from sklearn.datasets import load_sample_image

        image = load_sample_image(name.removeprefix("sklearn_") + ".jpg")
    else:
        import skimage.data

        image = getattr(skimage.data, name)()
        if name == "stereo_motorcycle":
            image = image[0]  # (left, right, disparity): the left view
    image = np.asarray(image)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2), True  # (H, W, 3)
    return np.ascontiguousarray(image[:, :, :3]), False


@cache
def background_pyramid(name: str) -> tuple[tuple[Image.Image, ...], bool]:
    """The source image at full size and successive halvings (so crops are never heavily aliased)."""
    try:
        image, grey = _load_rgb(name)
    except Exception as err:  # any failure here means the wheel lacks the file
        raise DatasetError(
            f"The background image {name!r} could not be loaded from scikit-image / scikit-learn ({err}). "
            "Reinstall scikit-image>=0.22 and scikit-learn."
        ) from err
    levels = [Image.fromarray(image)]
    while min(levels[-1].size) >= 128:
        levels.append(levels[-1].reduce(2))
    return tuple(levels), grey


def sample_background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random rotated, flipped, colour-jittered square crop of background ``name``.

    Returns float32 (size, size, 3) in [0, 255]. Consumes a fixed number of draws from ``rng``.
    """
    levels, grey = background_pyramid(name)
    width, height = levels[0].size
    angle = rng.uniform(0.0, 2.0 * np.pi)
    flip = rng.random() < 0.5
    cos, sin = np.cos(angle), np.sin(angle)
    spread = abs(cos) + abs(sin)  # bounding-box growth of a rotated square
    side = rng.uniform(0.25, 1.0) * min(width, height) / spread  # crop side in source pixels
    half_extent = side * spread / 2
    cx = rng.uniform(half_extent, width - half_extent)
    cy = rng.uniform(half_extent, height - half_extent)
    # Pick the pyramid level whose resolution is at most 2x the output (bilinear is then clean).
    level = 0
    while level + 1 < len(levels) and side / 2 ** (level + 1) >= size:
        level += 1
    source, factor = levels[level], 2.0**level
    step = side / size / factor  # source pixels per output pixel at this level
    sx = -step if flip else step
    # Output pixel (x, y) -> source (a x + b y + c, d x + e y + f): rotate about the crop centre.
    a, b = cos * sx, -sin * step
    d, e = sin * sx, cos * step
    ox, oy = size / 2, size / 2
    c = cx / factor - (a * ox + b * oy)
    f = cy / factor - (d * ox + e * oy)
    crop = source.transform((size, size), Image.AFFINE, (a, b, c, d, e, f), resample=Image.BILINEAR)
    image = np.asarray(crop, dtype=np.float32)  # (S, S, 3)
    return _jitter_colours(image, grey, rng)


def _jitter_colours(image: np.ndarray, grey: bool, rng: np.random.Generator) -> np.ndarray:
    """Colourise grey sources sometimes, then random channel order, gains, saturation, contrast, brightness."""
    hue, sat = rng.random(), rng.uniform(0.15, 0.6)
    colourise = grey and rng.random() < 0.6
    permute = rng.random() < 0.3
    order = rng.permutation(3)
    gains = np.exp(rng.normal(0.0, 0.1, size=3)).astype(np.float32)
    saturation = rng.uniform(0.6, 1.4)
    contrast = rng.uniform(0.7, 1.3)
    brightness = rng.uniform(-25.0, 25.0)
    if colourise:
        image = image * np.asarray(colorsys.hsv_to_rgb(hue, sat, 1.0), dtype=np.float32)
    if permute:
        image = image[:, :, order]
    image = image * gains
    luma = image.mean(axis=2, keepdims=True)  # (S, S, 1)
    image = luma + saturation * (image - luma)
    image = (image - image.mean()) * contrast + image.mean() + brightness
    return np.clip(image, 0.0, 255.0).astype(np.float32)
