"""Turn analysis results into pictures for the web page, as plain RGB arrays (fast: no matplotlib figure).

The numbers come from :mod:`offseg_vis.analysis` (probe, correction map, offset magnitudes, attention);
this module only maps them to colours at the image's size. Feature-grid maps (h, w) are resized to the
backbone's padded canvas and cropped to the image, the same geometry the logits follow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from offseg_vis.analysis.compare import BOTH_RIGHT, OUTCOME_COLORS
from offseg_vis.analysis.corrections import CODE_COLORS, CODE_NAMES, UNCHANGED, CorrectionMap
from offseg_vis.analysis.plots import overlay

DISAGREE_RGB = (255, 0, 255)
MIN_DISPLAY_SIDE = 384  # small images are enlarged (nearest neighbour) so panels and colour bars stay legible
MASK_OPACITY = 0.6  # how strongly the class colours cover the image in gr.AnnotatedImage


def hex_color(rgb: Sequence[int]) -> str:
    """(r, g, b) 0-255 -> "#rrggbb"."""
    r, g, b = (int(v) for v in rgb[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def class_pixel_counts(prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) class ids -> (K,) pixel counts."""
    return np.bincount(prediction.reshape(-1), minlength=num_classes)[:num_classes]


def class_shares(prediction: np.ndarray, class_names: Sequence[str]) -> list[list]:
    """Rows [class name, share in %, pixels] of the classes present, largest first."""
    counts = class_pixel_counts(prediction, len(class_names))
    total = max(int(counts.sum()), 1)
    order = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    return [[class_names[c], round(float(100.0 * counts[c] / total), 2), int(counts[c])] for c in order]


def annotations(prediction: np.ndarray, class_names: Sequence[str]) -> list[tuple[np.ndarray, str]]:
    """One (H, W) float mask per present class, largest first, for ``gr.AnnotatedImage``.

    Mask values are 0 outside the class and ``MASK_OPACITY`` inside (gradio uses them as the opacity).
    """
    counts = class_pixel_counts(prediction, len(class_names))
    order = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    return [((prediction == c).astype(np.float32) * MASK_OPACITY, class_names[c]) for c in order]


def enlarge(picture: np.ndarray, min_side: int = MIN_DISPLAY_SIDE) -> np.ndarray:
    """Repeat pixels by the smallest integer factor that brings the longer side to ``min_side``.

    (H, W, 3) -> (f*H, f*W, 3); images already large enough are returned as they are.
    """
    factor = max(1, -(-min_side // max(picture.shape[:2])))  # ceil division
    if factor == 1:
        return picture
    return np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)


def grid_to_image(values: np.ndarray, input_size: tuple[int, int], padded_size: tuple[int, int]) -> np.ndarray:
    """(h, w) feature-grid values -> (H, W) float32: bilinear to the padded canvas, then crop the image."""
    hp, wp = padded_size
    resized = Image.fromarray(np.asarray(values, dtype=np.float32)).resize((wp, hp), Image.Resampling.BILINEAR)
    return np.asarray(resized)[: input_size[0], : input_size[1]]


def apply_colormap(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """(H, W) floats -> (H, W, 3) uint8 through a matplotlib colormap over [vmin, vmax]."""
    from matplotlib import colormaps

    span = vmax - vmin if vmax > vmin else 1.0
    scaled = np.clip((values - vmin) / span, 0.0, 1.0)
    lut = (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)  # (256, 3)
    return lut[np.rint(scaled * 255).astype(np.int64)]


def _gray(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> its luminance as (H, W, 3) float32 (for overlays whose colours must stand out)."""
    lum = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(lum[..., None], 3, axis=2)


def _colorbar(width: int, cmap: str, vmin: float, vmax: float, label: str) -> np.ndarray:
    """A (34, width, 3) strip: the colour ramp with its end values and a label written under it."""
    ramp = apply_colormap(np.tile(np.linspace(vmin, vmax, width, dtype=np.float32), (12, 1)), cmap, vmin, vmax)
    strip = Image.new("RGB", (width, 34), (255, 255, 255))
    strip.paste(Image.fromarray(ramp), (0, 2))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    draw.text((2, 16), f"{vmin:.3g}", fill=(0, 0, 0), font=font)
    right = f"{vmax:.3g}"
    draw.text((width - 8 * len(right) - 2, 16), right, fill=(0, 0, 0), font=font)
    draw.text((width // 2 - 4 * len(label), 16), label, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def heatmap_overlay(
    image: np.ndarray,
    values: np.ndarray,
    input_size: tuple[int, int],
    padded_size: tuple[int, int],
    cmap: str = "magma",
    label: str = "",
    alpha: float = 0.7,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """A feature-grid map (h, w) coloured over the grayscale image, with a colour bar underneath.

    Returns (f*H + 34, f*W, 3) uint8 (f: see :func:`enlarge`).
    """
    full = grid_to_image(values, input_size, padded_size)  # (H, W)
    lo = float(np.min(values)) if vmin is None else vmin
    hi = float(np.max(values)) if vmax is None else vmax
    colours = apply_colormap(full, cmap, lo, hi).astype(np.float32)
    blend = (1 - alpha) * _gray(image) + alpha * colours
    picture = enlarge(np.clip(blend, 0, 255).astype(np.uint8))
    return np.concatenate([picture, _colorbar(picture.shape[1], cmap, lo, hi, label)], axis=0)


def correction_overlay(image: np.ndarray, cmap: CorrectionMap, alpha: float = 0.75) -> np.ndarray:
    """Correction codes over the grayscale image: unchanged pixels stay gray, changed ones take their
    code's colour (fixed green, broken red, changed-still-wrong orange, changed blue). (f*H, f*W, 3) uint8."""
    out = _gray(image) * 0.8 + 40  # lighter gray: the coloured codes read better
    for code, rgb in CODE_COLORS.items():
        if code == UNCHANGED:
            continue
        sel = cmap.codes == code
        out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(rgb, dtype=np.float32)
    return enlarge(np.clip(out, 0, 255).astype(np.uint8))


def correction_legend(cmap: CorrectionMap) -> list[tuple[str, str, int]]:
    """(name, hex colour, pixels) for each code that can occur in this map, in the map's order."""
    counts = cmap.counts()
    return [(CODE_NAMES[c], hex_color(CODE_COLORS[c]), counts[CODE_NAMES[c]]) for c in cmap.code_order]


def segmentation_overlay(image: np.ndarray, prediction: np.ndarray, palette: np.ndarray, alpha: float = 0.55):
    """Class colours blended over the image (analysis.plots.overlay), (f*H, f*W, 3) uint8."""
    return enlarge(overlay(image, prediction, palette, alpha))


def disagreement_overlay(image: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Pixels where two predictions differ in magenta over the dimmed grayscale image, (f*H, f*W, 3) uint8."""
    out = _gray(image) * 0.6 + 60
    differ = first != second
    out[differ] = np.asarray(DISAGREE_RGB, dtype=np.float32)
    return enlarge(np.clip(out, 0, 255).astype(np.uint8))


def twin_overlay(image: np.ndarray, codes: np.ndarray, alpha: float = 0.75) -> np.ndarray:
    """Twin-comparison codes over the grayscale image: both-right pixels stay gray, fixed green, broken red,
    both wrong orange, ignored black. (f*H, f*W, 3) uint8."""
    out = _gray(image) * 0.8 + 40
    for code, rgb in OUTCOME_COLORS.items():
        if code == BOTH_RIGHT:
            continue
        sel = codes == code
        out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(rgb, dtype=np.float32)
    return enlarge(np.clip(out, 0, 255).astype(np.uint8))


NEIGHBOUR_RGB = {"E": (0, 180, 230), "E'": (255, 140, 0)}
CLICKED_RGB = (230, 0, 126)


def _square(mask: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int) -> None:
    """Set a size x size square (starting half a square before each (y, x)) in ``mask``, clipped."""
    lo = size // 2
    for y, x in zip(np.asarray(ys).reshape(-1), np.asarray(xs).reshape(-1)):
        mask[max(0, int(y) - lo) : int(y) - lo + size, max(0, int(x) - lo) : int(x) - lo + size] = True


def pixel_picture(
    image: np.ndarray,
    prediction: np.ndarray,
    palette: np.ndarray,
    clicked: tuple[int, int] | None = None,
    neighbours: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    chosen: int | None = None,
    cell: int = 4,
) -> np.ndarray:
    """The clickable segmentation: class colours over the image; with a ``chosen`` class the other pixels
    are gray; each neighbour (x (k,), y (k,)) as a ``cell``-sized square (E cyan, E′ orange; pixels
    that are neighbours in both spaces show E′ on top) and the clicked (x, y) as a magenta ring.

    Returns (f*H, f*W, 3) uint8 (f: see :func:`enlarge`; a click at display pixel (u, v) is image pixel
    (u // f, v // f)).
    """
    out = overlay(image, prediction, palette, 0.55).astype(np.float32)
    if chosen is not None:
        other = prediction != chosen
        out[other] = _gray(image)[other] * 0.6 + 60
    for space, (xs, ys) in (neighbours or {}).items():
        mark = np.zeros(prediction.shape, dtype=bool)
        _square(mark, ys, xs, cell)
        out[mark] = NEIGHBOUR_RGB[space]
    if clicked is not None:
        ring = np.zeros(prediction.shape, dtype=bool)
        inner = np.zeros_like(ring)
        x, y = clicked
        _square(ring, [y], [x], cell + 4)
        _square(inner, [y], [x], cell)
        ring &= ~inner
        out[ring] = CLICKED_RGB
    return enlarge(np.clip(out, 0, 255).astype(np.uint8))
