"""Gradio components of the app that differ from the stock ones only in how fast they encode.

``gr.AnnotatedImage`` writes one full-size RGBA PNG per annotation, built through float64 arrays and
compressed at zlib level 6. A 150-class model can put dozens of classes into one image (an untrained
OffSeg-T put 47 into a 512² scene), and those encodes took ≈ 1.9 s, longer than the model.
:class:`ClassMapImage` writes the same pixels (a test decodes both and compares them) from uint8
arrays at zlib level 1.
"""

from __future__ import annotations

import io
from pathlib import Path

import gradio as gr
import numpy as np
from gradio import processing_utils, utils
from gradio.components.annotated_image import AnnotatedImageData, Annotation
from gradio.data_classes import FileData
from PIL import Image

PNG_LEVEL = 1  # zlib level: masks are mostly empty, so level 1 is nearly as small and several times faster
DEFAULT_RGB = (255, 0, 0)  # gradio's colour for a label missing from color_map


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    value = hex_colour.lstrip("#")
    step = len(value) // 3
    return tuple(int(value[i : i + step], 16) for i in range(0, len(value), step))  # type: ignore[return-value]


def _cache_png(rgba: np.ndarray, cache_dir: str) -> str:
    """Encode (H, W, 4) uint8 as PNG into gradio's cache (a folder named by the content's hash)."""
    with io.BytesIO() as buffer:
        Image.fromarray(rgba, "RGBA").save(buffer, "png", compress_level=PNG_LEVEL)
        data = buffer.getvalue()
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mask.png"
    path.write_bytes(data)
    return str(utils.abspath(path))


def mask_rgba(mask: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """(H, W) opacity in [0, 1] -> (H, W, 4) uint8: ``rgb`` where the mask is positive, alpha = mask·255
    truncated, as ``gr.AnnotatedImage`` makes it."""
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask > 0, :3] = rgb
    rgba[..., 3] = (np.asarray(mask, np.float64) * 255).astype(np.uint8)
    return rgba


class ClassMapImage(gr.AnnotatedImage):
    """``gr.AnnotatedImage`` for a class map: (image (H, W, 3) uint8, [(mask (H, W) in [0, 1], label)])."""

    is_template = True  # gradio's mark for a subclass that reuses its parent's frontend (gr.templates does it)

    def postprocess(self, value):
        if (
            value is None
            or not isinstance(value[0], np.ndarray)
            or not all(isinstance(mask, np.ndarray) for mask, _ in value[1])
        ):
            return super().postprocess(value)  # file paths, PIL images and boxes: the stock encoder
        image, sections = value
        base = processing_utils.save_img_array_to_cache(image, cache_dir=self.GRADIO_CACHE, format=self.format)
        colours = self.color_map or {}
        annotations = [
            Annotation(
                image=FileData(
                    path=_cache_png(
                        mask_rgba(mask, _rgb(colours[label]) if label in colours else DEFAULT_RGB), self.GRADIO_CACHE
                    )
                ),
                label=label,
            )
            for mask, label in sections
        ]
        return AnnotatedImageData(image=FileData(path=str(utils.abspath(base))), annotations=annotations)
