"""Decode whatever a user uploads into an (H, W, 3) uint8 RGB array, or say in one sentence why not.

Accepted: PNG, JPEG, WebP, BMP, TIFF; any Pillow mode (1-bit, grayscale, palette, RGBA, CMYK, 16-bit and
32-bit grayscale, float). Alpha is composited on white, EXIF orientation is applied, the first frame of
an animated file is used, and images larger than ``max_side`` are downscaled (the user is told).
Everything that goes wrong raises :class:`~offseg_vis.errors.InputError` with a sentence for the user.

Nothing here writes a file: the upload stays where the web framework put it (the app's temp folder).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from offseg_vis.errors import InputError

# Pillow's format names we accept (MPO = multi-picture JPEG written by many phone cameras; DIB = BMP body).
ACCEPTED_FORMATS = {
    "PNG": "PNG",
    "JPEG": "JPEG",
    "MPO": "JPEG",
    "WEBP": "WebP",
    "BMP": "BMP",
    "DIB": "BMP",
    "TIFF": "TIFF",
}
FORMATS_SENTENCE = "PNG, JPEG, WebP, BMP or TIFF"
EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S")


@dataclass(frozen=True)
class InputLimits:
    """What the app accepts.

    Attributes:
        max_side: longer image sides are downscaled to this (pixels).
        min_side: shorter sides below this are refused (the model's stride-32 backbone needs some room).
        max_file_mb: uploads above this size (MB) are refused.
        max_pixels: images with more pixels than this are refused before decoding (decompression bombs).
    """

    max_side: int = 1024
    min_side: int = 16
    max_file_mb: float = 10.0
    max_pixels: int = 80_000_000

    def __post_init__(self) -> None:
        if self.max_side < self.min_side or self.min_side < 1:
            raise InputError(f"max_side ({self.max_side}) must be >= min_side ({self.min_side}) >= 1.")
        if self.max_file_mb <= 0:
            raise InputError(f"max_file_mb must be positive, got {self.max_file_mb}.")

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)


@dataclass
class LoadedImage:
    """A decoded upload.

    Attributes:
        image: (H, W, 3) uint8 RGB, after orientation, alpha compositing and downscaling.
        original_size: (H0, W0) of the file as stored (after EXIF rotation).
        format: the file's format name ("PNG", "JPEG", ...).
        notices: sentences about what was done to the image (downscaled, alpha removed, ...).
    """

    image: np.ndarray
    original_size: tuple[int, int]
    format: str
    notices: list[str] = field(default_factory=list)


def _check_file(path: Path, limits: InputLimits) -> None:
    if not path.is_file():
        raise InputError("The uploaded file could not be found on the server; please upload it again.")
    size = path.stat().st_size
    if size == 0:
        raise InputError("The uploaded file is empty (0 bytes); please choose an image file.")
    if size > limits.max_file_bytes:
        raise InputError(
            f"The file is {size / 1024 / 1024:.1f} MB, above this app's limit of {limits.max_file_mb:g} MB; "
            "please upload a smaller or more compressed image."
        )


def _png_declared_size(path: Path) -> tuple[int, int] | None:
    """(width, height) a PNG header declares (Pillow refuses zero-size PNGs without saying why), else None."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or not head.startswith(b"\x89PNG\r\n\x1a\n") or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _open(path: Path) -> Image.Image:
    """Open lazily (header only) and check the format."""
    try:
        with warnings.catch_warnings():
            # A decompression-bomb *warning* becomes an error here: we check the size ourselves below.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except UnidentifiedImageError:
        declared = _png_declared_size(path)
        if declared is not None and 0 in declared:
            raise InputError(
                f"The image has no pixels ({declared[0]}×{declared[1]}); please upload a non-empty image."
            ) from None
        raise InputError(
            f"This file is not an image this app can read; please upload a {FORMATS_SENTENCE} file."
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            "The image has far too many pixels to process; please upload a smaller image."
        ) from None
    except OSError as err:
        raise InputError(
            f"The file could not be read as an image ({err}); please upload another file."
        ) from None
    if im.format not in ACCEPTED_FORMATS:
        im.close()
        raise InputError(
            f"{im.format or 'This'} images are not supported; please upload a {FORMATS_SENTENCE} file."
        )
    return im


def _to_rgb(im: Image.Image, notices: list[str]) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8; alpha composited on white; 16-bit and float scaled to 8-bit."""
    mode = im.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        arr = np.asarray(im).astype(np.float64)
        # "I" holds 32-bit ints; 16-bit files can land there too: use the 16-bit range when values exceed 255.
        scale = 257.0 if mode in SIXTEEN_BIT_MODES or arr.max(initial=0) > 255 else 1.0
        gray = np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8)
        if scale != 1.0:
            notices.append("The 16-bit image was reduced to 8 bits per channel.")
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64))
        # Floats in [0, 1] are intensities; anything else is taken as 0-255 values.
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 and arr.min(initial=0) >= 0.0 else arr
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        notices.append("The floating-point image was converted to 8 bits per channel.")
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:  # some pixel is not fully opaque
            notices.append("Transparent areas were filled with white.")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def _downscale(image: np.ndarray, max_side: int, notices: list[str]) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=2.0)
    notices.append(
        f"The image was {w}×{h} pixels and has been downscaled to {new_w}×{new_h} "
        f"(this app's maximum side is {max_side} px)."
    )
    return np.asarray(resized)


def load_image(path: str | os.PathLike, limits: InputLimits | None = None) -> LoadedImage:
    """Decode an uploaded file into RGB.

    Args:
        path: the uploaded file.
        limits: size limits (default :class:`InputLimits`).

    Returns:
        a :class:`LoadedImage` whose ``image`` is (H, W, 3) uint8 with max(H, W) <= ``limits.max_side``.

    Raises:
        InputError: empty, too large, truncated, unreadable or unsupported files; zero-size or too-small
            images. The message is one sentence meant for the user.
    """
    limits = limits or InputLimits()
    path = Path(path)
    _check_file(path, limits)
    with _open(path) as im:
        fmt = ACCEPTED_FORMATS[im.format]
        w, h = im.size
        if w == 0 or h == 0:
            raise InputError(f"The image has no pixels ({w}×{h}); please upload a non-empty image.")
        if w * h > limits.max_pixels:
            raise InputError(
                f"The image is {w}×{h} pixels ({w * h / 1e6:.0f} megapixels), more than this app can process "
                f"({limits.max_pixels / 1e6:.0f} megapixels); please upload a smaller image."
            )
        notices: list[str] = []
        if getattr(im, "n_frames", 1) > 1:
            notices.append("The file holds several frames; only the first one is used.")
        try:
            if im.format in ("JPEG", "MPO") and max(w, h) > 2 * limits.max_side:
                # Let the JPEG decoder drop resolution by powers of two: much faster for huge photos.
                im.draft(
                    "RGB",
                    (max(1, w * limits.max_side // max(w, h)), max(1, h * limits.max_side // max(w, h))),
                )
            im.load()
            oriented = im
            if im.getexif().get(EXIF_ORIENTATION, 1) != 1:
                oriented = ImageOps.exif_transpose(im)
                notices.append("The image was turned upright as its EXIF orientation tag says.")
            # Size as the user sees it: the stored size, with sides swapped when EXIF turned it by 90°.
            swapped = oriented.size != im.size and oriented.size == im.size[::-1]
            original = (w, h) if swapped else (h, w)
            rgb = _to_rgb(oriented, notices)
        except (OSError, SyntaxError, ValueError) as err:
            message = str(err).lower()
            if "truncated" in message or "broken" in message or "premature" in message:
                raise InputError(
                    "The image file is truncated or damaged and cannot be decoded; please upload it again "
                    "or choose another file."
                ) from None
            raise InputError(
                f"The {fmt} file could not be decoded ({err}); please save it again as a standard "
                f"{FORMATS_SENTENCE} file."
            ) from None
    if rgb.shape[0] < limits.min_side or rgb.shape[1] < limits.min_side:
        raise InputError(
            f"The image is only {rgb.shape[1]}×{rgb.shape[0]} pixels; please upload an image at least "
            f"{limits.min_side} pixels on each side."
        )
    rgb = _downscale(np.ascontiguousarray(rgb, dtype=np.uint8), limits.max_side, notices)
    return LoadedImage(image=np.ascontiguousarray(rgb), original_size=original, format=fmt, notices=notices)
