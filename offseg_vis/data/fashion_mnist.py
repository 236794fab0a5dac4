"""Fashion-MNIST (Zalando, MIT): find the four IDX files and load them as numpy arrays."""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from offseg_vis.errors import DatasetError

FMNIST_ENV = "OFFSEG_FMNIST"
# Where the Debian/Ubuntu package `dataset-fashion-mnist` installs the files.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049


def _missing_message(looked_in: list[Path]) -> str:
    names = ", ".join(name for pair in FMNIST_FILES.values() for name in pair)
    places = "; ".join(str(p) for p in looked_in) or "nowhere"
    return (
        f"Fashion-MNIST was not found (looked in: {places}). FashionScenes needs the four files {names} "
        f"(gzip-compressed or not). Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
        f"or download them from the Fashion-MNIST project into a folder and either pass `--fmnist DIR` "
        f"(Python: fmnist=DIR) or set the environment variable {FMNIST_ENV}=DIR."
    )


def _file_in(folder: Path, name: str) -> Path | None:
    """The file ``name`` in ``folder``, compressed or not; None if neither exists."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _has_all_files(folder: Path) -> bool:
    return all(_file_in(folder, n) for pair in FMNIST_FILES.values() for n in pair)


def find_fashion_mnist(path: str | Path | None = None) -> Path:
    """The folder holding the four Fashion-MNIST files.

    Order: ``path`` when given (then nothing else is tried), ``$OFFSEG_FMNIST``, the Debian package
    location. Raises :class:`DatasetError` naming the four files and both ways to provide them.
    """
    if path is not None:
        candidates = [Path(path).expanduser()]
    else:
        candidates = []
        if os.environ.get(FMNIST_ENV):
            candidates.append(Path(os.environ[FMNIST_ENV]).expanduser())
        candidates.append(DEBIAN_DIR)
    for folder in candidates:
        if folder.is_dir() and _has_all_files(folder):
            return folder
    raise DatasetError(_missing_message(candidates))


def _read(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as err:
        raise DatasetError(
            f"Cannot read the Fashion-MNIST file {path} ({err}); it is probably truncated. "
            "Reinstall `dataset-fashion-mnist` or download the file again."
        ) from err


def _parse_idx(data: bytes, path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """IDX bytes -> uint8 array (N, *item_shape). Header: magic, N, then the item dims (big-endian int32)."""
    header_len = 4 * (2 + len(item_shape))
    if len(data) < header_len:
        raise DatasetError(
            f"The Fashion-MNIST file {path} is too short to be an IDX file; download it again."
        )
    fields = np.frombuffer(data[:header_len], dtype=">i4")
    if fields[0] != magic or tuple(fields[2:]) != item_shape:
        raise DatasetError(
            f"The file {path} is not a Fashion-MNIST IDX file (header {fields.tolist()}); download it again."
        )
    count = int(fields[1])
    expected = header_len + count * int(np.prod(item_shape))
    if len(data) != expected:
        raise DatasetError(
            f"The Fashion-MNIST file {path} has {len(data)} bytes, expected {expected}; it is truncated "
            "or corrupt. Download it again."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(count, *item_shape)


@dataclass(frozen=True)
class FashionMNISTSplit:
    """One Fashion-MNIST split.

    Attributes:
        images: uint8 (N, 28, 28), item bright on black (its intensity is its matte).
        labels: int64 (N,), class ids 0-9 in the order of :data:`FMNIST_CLASSES`.
        sha256: digest of the (compressed) image file, recorded in manifests.
    """

    images: np.ndarray
    labels: np.ndarray
    sha256: str


@lru_cache(maxsize=4)
def _load_split_cached(folder: str, split: str) -> FashionMNISTSplit:
    image_name, label_name = FMNIST_FILES[split]
    image_path = _file_in(Path(folder), image_name)
    label_path = _file_in(Path(folder), label_name)
    if image_path is None or label_path is None:
        raise DatasetError(_missing_message([Path(folder)]))
    raw = _read(image_path)
    images = _parse_idx(raw, image_path, _IMAGE_MAGIC, (28, 28))
    labels = _parse_idx(_read(label_path), label_path, _LABEL_MAGIC, ()).astype(np.int64)
    if len(images) != len(labels):
        raise DatasetError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels; "
            "the two files belong to different downloads."
        )
    images.setflags(write=False)
    labels.setflags(write=False)
    digest = hashlib.sha256(image_path.read_bytes()).hexdigest()
    return FashionMNISTSplit(images=images, labels=labels, sha256=digest)


def load_fashion_mnist(split: str, path: str | Path | None = None) -> FashionMNISTSplit:
    """Load split "train" (60,000 items) or "t10k" (10,000 items); cached per process."""
    if split not in FMNIST_FILES:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 't10k', got {split!r}.")
    return _load_split_cached(str(find_fashion_mnist(path).resolve()), split)
