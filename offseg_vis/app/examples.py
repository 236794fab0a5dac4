"""The example gallery shipped with the app: FashionScenes val scenes as small PNGs, with their masks.

``NAME.png`` is a scene and ``NAME.mask.png`` its ground truth (class ids as 8-bit gray). ``val_N`` is
plain FashionScenes val scene N; ``PRESET_val_N`` the same index under an experiment scene preset (e.g.
``looks_val_N``, the setting of the ``offseg-mbv2_*-looks`` checkpoints). When an upload
decodes to exactly an example's pixels, the app knows its mask, so the correction map can say whether the
offsets fixed or broke each pixel.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
MASK_SUFFIX = ".mask.png"


def pixels_key(image: np.ndarray) -> str:
    """Digest of an (H, W, 3) uint8 image's shape and pixels."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    return hashlib.sha256(f"{image.shape}".encode() + image.tobytes()).hexdigest()


def example_images(folder: str | Path = EXAMPLES_DIR) -> list[Path]:
    """The gallery's scene files (masks excluded), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    scenes = [p for p in folder.glob("*.png") if not p.name.endswith(MASK_SUFFIX)]
    return sorted(scenes, key=lambda p: (scene_preset(p), p.name))  # plain scenes first


def scene_preset(image_path: str | Path) -> str:
    """The scene preset a gallery file name records: ``looks_val_000002.png`` -> "looks", plain -> ""."""
    head, sep, _ = Path(image_path).name.rpartition("val_")
    return head.rstrip("_") if sep else ""


def example_label(image_path: str | Path) -> str:
    """Gallery caption: ``val_000004.png`` -> "val 4", ``looks_val_000002.png`` -> "+looks · val 2"."""
    stem = Path(image_path).name[: -len(".png")]
    number = stem.rpartition("_")[2]
    index = f"val {int(number)}" if number.isdigit() else stem
    preset = scene_preset(image_path)
    return f"+{preset} · {index}" if preset else index


def mask_path(image_path: str | Path) -> Path:
    """``NAME.png`` -> ``NAME.mask.png``."""
    image_path = Path(image_path)
    return image_path.with_name(image_path.name[: -len(".png")] + MASK_SUFFIX)


class ExampleMasks:
    """Ground-truth masks of the gallery, found by the pixels of a decoded upload."""

    def __init__(self, folder: str | Path = EXAMPLES_DIR) -> None:
        self._scenes: dict[str, Path] = {}  # pixels -> the gallery scene's file
        for path in example_images(folder):
            if mask_path(path).is_file():
                with Image.open(path) as im:
                    self._scenes[pixels_key(np.asarray(im.convert("RGB")))] = path

    def __len__(self) -> int:
        return len(self._scenes)

    def scene_of(self, image: np.ndarray) -> Path | None:
        """The gallery file whose pixels equal ``image``, else None."""
        return self._scenes.get(pixels_key(image))

    def lookup(self, image: np.ndarray) -> np.ndarray | None:
        """(H, W) int64 mask of the example whose pixels equal ``image``, else None."""
        path = self.scene_of(image)
        if path is None:
            return None
        with Image.open(mask_path(path)) as im:
            mask = np.asarray(im, dtype=np.int64)
        return mask if mask.shape == image.shape[:2] else None
