"""The example gallery shipped with the app: FashionScenes val scenes as small PNGs, with their masks.

``NAME.png`` is a scene and ``NAME.mask.png`` its ground truth (class ids as 8-bit gray). When an upload
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
    return sorted(p for p in folder.glob("*.png") if not p.name.endswith(MASK_SUFFIX))


def mask_path(image_path: str | Path) -> Path:
    """``NAME.png`` -> ``NAME.mask.png``."""
    image_path = Path(image_path)
    return image_path.with_name(image_path.name[: -len(".png")] + MASK_SUFFIX)


class ExampleMasks:
    """Ground-truth masks of the gallery, found by the pixels of a decoded upload."""

    def __init__(self, folder: str | Path = EXAMPLES_DIR) -> None:
        self._masks: dict[str, Path] = {}
        for path in example_images(folder):
            mpath = mask_path(path)
            if mpath.is_file():
                with Image.open(path) as im:
                    self._masks[pixels_key(np.asarray(im.convert("RGB")))] = mpath

    def __len__(self) -> int:
        return len(self._masks)

    def lookup(self, image: np.ndarray) -> np.ndarray | None:
        """(H, W) int64 mask of the example whose pixels equal ``image``, else None."""
        mpath = self._masks.get(pixels_key(image))
        if mpath is None:
            return None
        with Image.open(mpath) as im:
            mask = np.asarray(im, dtype=np.int64)
        return mask if mask.shape == image.shape[:2] else None
