"""Readers for the standard mmsegmentation folder layouts, label converters and a dataset checker.

Layouts (``ROOT`` is what the user passes):

* ADE20K: ``ROOT/images/{training,validation}/*.jpg`` + ``ROOT/annotations/{...}/*.png``;
  reduce_zero_label (0 "other" -> 255, 1..150 -> 0..149).
* Cityscapes: ``ROOT/leftImg8bit/{train,val,test}/CITY/*_leftImg8bit.png`` +
  ``ROOT/gtFine/{...}/CITY/*_gtFine_labelTrainIds.png`` (19 classes). When only
  ``*_gtFine_labelIds.png`` exist they are mapped 34 -> 19 on the fly (or once, with
  :func:`convert_cityscapes`).
* COCO-Stuff-164K: ``ROOT/images/{train2017,val2017}/*.jpg`` +
  ``ROOT/annotations/{...}/*_labelTrainIds.png`` (171 classes). The raw stuff-thing maps
  (``*.png``, values 0-181) are mapped on the fly or once with :func:`convert_coco_stuff`.
* Pascal-Context-59: ``ROOT/JPEGImages/*.jpg`` + ``ROOT/SegmentationClassContext/*.png`` with the
  split lists ``ROOT/ImageSets/SegmentationContext/{train,val}.txt``; reduce_zero_label.
* Folder: ``ROOT/images/SPLIT/*`` + ``ROOT/masks/SPLIT/*.png`` (or ``ROOT/images`` + ``ROOT/masks``
  without split folders) + ``ROOT/classes.txt`` (one class name per line, in label order).

Every reader yields ``(image uint8 (H, W, 3), mask int64 (H, W), name)``; labels are in
``[0, K)`` or 255 (ignored). Bad data raises :class:`DatasetError` naming the file and the fix.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from offseg_vis.constants import IGNORE_INDEX
from offseg_vis.data.class_names import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    COCO_STUFF_CLASSES,
    PASCAL_CONTEXT59_CLASSES,
    generated_palette,
)
from offseg_vis.data.fashion_scenes import FashionScenes, config_from_dict, open_stored_set
from offseg_vis.data.paths import default_data_dir
from offseg_vis.errors import ConfigError, DatasetError

__all__ = [
    "ADE20K",
    "Cityscapes",
    "COCOStuff",
    "PascalContext59",
    "FolderDataset",
    "SegmentationFolder",
    "build_dataset",
    "check_dataset",
    "CheckReport",
    "cityscapes_label_ids_to_train_ids",
    "coco_stuff_raw_to_train_ids",
    "convert_cityscapes",
    "convert_coco_stuff",
    "DATASET_NAMES",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# ----------------------------------------------------------------------------- label converters

# Cityscapes label id (0-33) -> train id (0-18) or 255, from the dataset's official label table.
_CITYSCAPES_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_ID_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _label_id, _train_id in _CITYSCAPES_TRAIN_ID.items():
    CITYSCAPES_ID_TO_TRAIN_ID[_label_id] = _train_id

# COCO-Stuff stuff-thing maps store COCO category id - 1 (0-181) and 255 for unlabelled. Eleven
# thing ids were never used in COCO (street sign, hat, shoe, eye glasses, plate, mirror, window,
# desk, door, blender, hair brush: ids 12 26 29 30 45 66 68 69 71 83 91); the other 171 values keep
# their order and become train ids 0-170.
COCO_STUFF_UNUSED_RAW = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_STUFF_RAW_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
COCO_STUFF_RAW_TO_TRAIN_ID[[v for v in range(182) if v not in COCO_STUFF_UNUSED_RAW]] = np.arange(171)


def cityscapes_label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes ``*_labelIds`` values (H, W) -> train ids int64 (H, W): 19 classes, others 255."""
    return CITYSCAPES_ID_TO_TRAIN_ID[np.clip(label_ids, 0, 255).astype(np.int64)].astype(np.int64)


def coco_stuff_raw_to_train_ids(raw: np.ndarray) -> np.ndarray:
    """COCO-Stuff raw stuff-thing map (H, W) of 0-181 / 255 -> train ids int64 (H, W) in 0-170 / 255."""
    return COCO_STUFF_RAW_TO_TRAIN_ID[np.clip(raw, 0, 255).astype(np.int64)].astype(np.int64)


def reduce_zero_label(mask: np.ndarray) -> np.ndarray:
    """Label 0 ("other") -> 255 and k -> k - 1 (ADE20K, Pascal-Context); 255 stays 255."""
    mask = mask.astype(np.int64)
    return np.where((mask == 0) | (mask == IGNORE_INDEX), IGNORE_INDEX, mask - 1)


# ``Sample.convert`` -> the mapping from the stored mask's values to train ids (H, W) int64.
LABEL_MAPPINGS = {
    "none": lambda stored: stored.astype(np.int64),
    "reduce_zero_label": reduce_zero_label,
    "cityscapes": cityscapes_label_ids_to_train_ids,
    "coco-stuff": coco_stuff_raw_to_train_ids,
}


# ----------------------------------------------------------------------------- file helpers


# What Pillow raises for missing, truncated or corrupt files (SyntaxError: "broken PNG file").
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


def _verify(path: Path) -> None:
    """Pillow's integrity check (chunk CRCs, end marker): catches truncation a decode can miss."""
    with Image.open(path) as im:
        im.verify()


def _read_image(path: Path, verify: bool = False) -> np.ndarray:
    """Image file -> uint8 (H, W, 3); DatasetError when it cannot be decoded (or verified)."""
    try:
        if verify:
            _verify(path)
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except _DECODE_ERRORS as err:
        raise DatasetError(
            f"The image {path} cannot be read ({err}). It is missing, truncated or not an image: "
            "download it again or remove it (and its mask) from the dataset."
        ) from err


def _read_mask(path: Path, verify: bool = False) -> np.ndarray:
    """Single-channel label PNG -> int64 (H, W); DatasetError for colour masks or broken files."""
    try:
        if verify:
            _verify(path)
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                raise DatasetError(
                    f"The mask {path} is a {im.mode} image; label masks must be single-channel PNGs whose "
                    "pixel values are class ids (mode L or P). Convert colour-coded masks to ids first."
                )
            return np.asarray(im, dtype=np.int64)
    except _DECODE_ERRORS as err:
        raise DatasetError(
            f"The mask {path} cannot be read ({err}). It is missing, truncated or not a PNG: download or regenerate it."
        ) from err


def _write_png_atomic(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    Image.fromarray(array.astype(np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, path)


def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass(frozen=True)
class Sample:
    """One image/mask pair; ``convert`` names the mapping of the stored mask's values (``LABEL_MAPPINGS``)."""

    image: Path
    mask: Path
    name: str
    convert: str = "none"


# ----------------------------------------------------------------------------- readers


class SegmentationFolder(torch.utils.data.Dataset):
    """Base of the folder readers: a list of image/mask pairs and how to map stored labels.

    Subclasses set ``classes``, ``palette`` and implement :meth:`scan`. ``strict`` (default)
    raises on any pairing problem at construction; :func:`check_dataset` uses ``strict=False`` to
    collect them all.
    """

    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    layout: str = ""
    # Folders the root itself holds (any one of them shows ROOT is the dataset's own folder).
    layout_dirs: tuple[str, ...] = ()
    # Where unpacking the official archive puts the dataset, relative to the folder unpacked into
    # (e.g. ADEChallengeData2016): a root that holds exactly one of these instead of the layout is
    # taken as its parent.
    top_folders: tuple[str, ...] = ()
    ignore_index = IGNORE_INDEX
    verify_files = False  # also run Pillow's integrity check on every read (the checker sets it)

    def __init__(self, root: str | Path, split: str = "train", strict: bool = True) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        if not self.root.is_dir():
            raise DatasetError(
                f"The {type(self).__name__} root {self.root} does not exist. Pass the folder that holds "
                f"the dataset (expected layout: {self.layout})."
            )
        self.root, self.note = self._enter_top_folder(self.root)
        self.samples, self.problems = self.scan()
        if strict and self.problems:
            more = f" ({len(self.problems)} problems in total)" if len(self.problems) > 1 else ""
            raise DatasetError(
                f"{self.problems[0]}{more}. Run `offseg data check {self.root} --dataset "
                f"{self.dataset_name} --split {split}` to list every problem."
            )
        if not self.samples and not self.problems:
            raise DatasetError(
                f"No images found for split {split!r} of {type(self).__name__} under {self.root}. "
                f"Expected layout: {self.layout}."
            )

    dataset_name = "folder"

    @classmethod
    def _enter_top_folder(cls, root: Path) -> tuple[Path, str | None]:
        """``root``, or the official archive's top folder inside it -> (dataset root, one-line note or None).

        A root that holds none of :attr:`layout_dirs` but exactly one of :attr:`top_folders` is the
        folder the archive was unpacked into (e.g. ``data/ade`` holding ``ADEChallengeData2016/``).
        """
        if not cls.top_folders or any((root / d).is_dir() for d in cls.layout_dirs):
            return root, None
        found = [root / t for t in cls.top_folders if (root / t).is_dir()]
        if len(found) != 1:
            return root, None
        return found[0], f"{root} holds the dataset's top folder {found[0].relative_to(root)}/: reading {found[0]}."

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> str:
        """One line: dataset, split, number of images and the folder they come from."""
        inside = f" ({self.note})" if self.note else ""
        return f"{type(self).__name__} split {self.split!r}: {len(self)} images from {self.root}{inside}"

    def scan(self) -> tuple[list[Sample], list[str]]:
        """List the split's pairs -> (samples, problems found while pairing)."""
        raise NotImplementedError

    def _pair_by_name(
        self, images: list[Path], mask_for: Callable[[Path], list[tuple[Path, str]]], name_for: Callable
    ) -> tuple[list[Sample], list[str]]:
        """Pair each image with the first existing candidate mask; report images without one."""
        samples, problems = [], []
        for image in images:
            candidates = mask_for(image)
            found = next(((m, conv) for m, conv in candidates if m.is_file()), None)
            if found is None:
                problems.append(f"Missing mask for image {image}: expected {candidates[0][0]}")
            else:
                samples.append(Sample(image, found[0], name_for(image), found[1]))
        return samples, problems

    def map_labels(self, stored: np.ndarray, sample: Sample) -> np.ndarray:
        """Stored mask values -> train ids (H, W) int64 in [0, K) or 255, by the sample's ``convert``."""
        return LABEL_MAPPINGS[sample.convert](stored)

    def __len__(self) -> int:
        return len(self.samples)

    def name(self, i: int) -> str:
        """File stem of item ``i``."""
        return self.samples[i].name

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """Read and validate one pair -> (image uint8 (H, W, 3), mask int64 (H, W))."""
        image = _read_image(sample.image, self.verify_files)
        mask = self.map_labels(_read_mask(sample.mask, self.verify_files), sample)
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"The mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]} but its image {sample.image} is "
                f"{image.shape[1]}x{image.shape[0]}; each mask must have its image's size (wrong pairing, "
                "or the mask was resized)."
            )
        bad = np.unique(mask[(mask >= self.num_classes) & (mask != self.ignore_index)])
        if bad.size:
            raise DatasetError(
                f"The mask {sample.mask} holds label values {bad[:10].tolist()} outside 0-{self.num_classes - 1} "
                f"and {self.ignore_index} ({type(self).__name__} has {self.num_classes} classes). Check that the "
                "dataset type matches the files and that masks hold train ids (convert raw ids first)."
            )
        return image, mask

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        sample = self.samples[i]
        image, mask = self.load(sample)
        return image, mask, sample.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, images={len(self)})"


class ADE20K(SegmentationFolder):
    """ADE20K (SceneParse150): 150 classes, reduce_zero_label. Splits "train" / "val"."""

    classes = ADE20K_CLASSES
    palette = generated_palette(150)
    dataset_name = "ade20k"
    layout = "ROOT/images/{training,validation}/*.jpg and ROOT/annotations/{training,validation}/*.png"
    layout_dirs = ("images", "annotations")
    top_folders = ("ADEChallengeData2016",)  # what unzipping ADEChallengeData2016.zip gives
    _SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}

    def scan(self) -> tuple[list[Sample], list[str]]:
        sub = _split_folder(self._SPLITS, self.split, type(self).__name__)
        images = _images_in(self.root / "images" / sub)
        masks = self.root / "annotations" / sub
        return self._pair_by_name(images, lambda p: [(masks / f"{p.stem}.png", "reduce_zero_label")], lambda p: p.stem)


class Cityscapes(SegmentationFolder):
    """Cityscapes fine annotations, 19 train ids. Splits "train" / "val" / "test"."""

    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE
    dataset_name = "cityscapes"
    layout = (
        "ROOT/leftImg8bit/SPLIT/CITY/*_leftImg8bit.png and ROOT/gtFine/SPLIT/CITY/*_gtFine_labelTrainIds.png "
        "(or *_gtFine_labelIds.png)"
    )
    _SPLITS = {"train": "train", "val": "val", "test": "test"}

    def scan(self) -> tuple[list[Sample], list[str]]:
        sub = _split_folder(self._SPLITS, self.split, type(self).__name__)
        image_root, mask_root = self.root / "leftImg8bit" / sub, self.root / "gtFine" / sub
        images = [p for p in _images_in(image_root, recursive=True) if p.name.endswith("_leftImg8bit.png")]

        def masks(p: Path) -> list[tuple[Path, str]]:
            base = mask_root / p.parent.relative_to(image_root) / p.name.removesuffix("_leftImg8bit.png")
            return [
                (Path(f"{base}_gtFine_labelTrainIds.png"), "none"),
                (Path(f"{base}_gtFine_labelIds.png"), "cityscapes"),
            ]

        return self._pair_by_name(images, masks, lambda p: p.name.removesuffix("_leftImg8bit.png"))


class COCOStuff(SegmentationFolder):
    """COCO-Stuff-164K: 80 things + 91 stuff = 171 train ids. Splits "train" / "val"."""

    classes = COCO_STUFF_CLASSES
    palette = generated_palette(171)
    dataset_name = "coco-stuff"
    layout = (
        "ROOT/images/{train2017,val2017}/*.jpg and ROOT/annotations/{train2017,val2017}/*_labelTrainIds.png "
        "(or the raw stuff-thing maps *.png)"
    )
    _SPLITS = {"train": "train2017", "val": "val2017", "train2017": "train2017", "val2017": "val2017"}

    def scan(self) -> tuple[list[Sample], list[str]]:
        sub = _split_folder(self._SPLITS, self.split, type(self).__name__)
        images = _images_in(self.root / "images" / sub)
        masks = self.root / "annotations" / sub
        return self._pair_by_name(
            images,
            lambda p: [
                (masks / f"{p.stem}_labelTrainIds.png", "none"),
                (masks / f"{p.stem}.png", "coco-stuff"),
            ],
            lambda p: p.stem,
        )


class PascalContext59(SegmentationFolder):
    """Pascal-Context with 59 classes (reduce_zero_label). Splits "train" / "val" from the split lists."""

    classes = PASCAL_CONTEXT59_CLASSES
    palette = generated_palette(59)
    dataset_name = "pascal-context"
    layout = (
        "ROOT/JPEGImages/*.jpg, ROOT/SegmentationClassContext/*.png and "
        "ROOT/ImageSets/SegmentationContext/{train,val}.txt"
    )
    layout_dirs = ("JPEGImages", "SegmentationClassContext", "ImageSets")
    top_folders = ("VOCdevkit/VOC2010", "VOC2010")  # the VOC2010 archive unpacks to VOCdevkit/VOC2010

    def scan(self) -> tuple[list[Sample], list[str]]:
        split_file = self.root / "ImageSets" / "SegmentationContext" / f"{self.split}.txt"
        if not split_file.is_file():
            raise DatasetError(
                f"The Pascal-Context split list {split_file} does not exist. Expected layout: {self.layout}."
            )
        ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        samples, problems = [], []
        for stem in ids:
            image = next(
                (
                    self.root / "JPEGImages" / f"{stem}{s}"
                    for s in (".jpg", ".png")
                    if (self.root / "JPEGImages" / f"{stem}{s}").is_file()
                ),
                None,
            )
            mask = self.root / "SegmentationClassContext" / f"{stem}.png"
            if image is None:
                problems.append(f"Missing image for {stem} listed in {split_file}: expected JPEGImages/{stem}.jpg")
            elif not mask.is_file():
                problems.append(f"Missing mask for image {image}: expected {mask}")
            else:
                samples.append(Sample(image, mask, stem, "reduce_zero_label"))
        return samples, problems


class FolderDataset(SegmentationFolder):
    """Any dataset as ``images/`` + ``masks/`` (optionally with SPLIT sub-folders) + ``classes.txt``.

    ``classes.txt`` holds one class name per line in label order (blank lines and lines starting
    with ``#`` are skipped). Masks are ``<image stem>.png`` with values in [0, K) or 255.
    """

    dataset_name = "folder"
    layout = "ROOT/images/SPLIT/*.{jpg,png}, ROOT/masks/SPLIT/*.png (or no SPLIT level) and ROOT/classes.txt"

    def __init__(self, root: str | Path, split: str = "train", strict: bool = True) -> None:
        classes_file = Path(root).expanduser() / "classes.txt"
        if not classes_file.is_file():
            raise DatasetError(
                f"{classes_file} is missing. A folder dataset needs a classes.txt with one class name per line "
                "(line 1 = label 0)."
            )
        names = [
            line.strip()
            for line in classes_file.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if not names:
            raise DatasetError(f"{classes_file} lists no class names; write one name per line (line 1 = label 0).")
        if len(names) > 255:
            raise DatasetError(f"{classes_file} lists {len(names)} classes; at most 255 fit in 8-bit masks.")
        self.classes = tuple(names)
        self.palette = generated_palette(len(names))
        super().__init__(root, split, strict)

    def scan(self) -> tuple[list[Sample], list[str]]:
        image_dir, mask_dir = self.root / "images" / self.split, self.root / "masks" / self.split
        if not image_dir.is_dir():
            image_dir, mask_dir = self.root / "images", self.root / "masks"
        images = _images_in(image_dir)
        return self._pair_by_name(images, lambda p: [(mask_dir / f"{p.stem}.png", "none")], lambda p: p.stem)


def _split_folder(splits: dict[str, str], split: str, dataset: str) -> str:
    if split not in splits:
        raise DatasetError(f"{dataset} has no split {split!r}; choose one of {sorted(set(splits))}.")
    return splits[split]


# ----------------------------------------------------------------------------- converters on disk


def convert_cityscapes(root: str | Path, splits: tuple[str, ...] = ("train", "val"), progress: bool = True) -> int:
    """Write ``*_gtFine_labelTrainIds.png`` beside every ``*_gtFine_labelIds.png``; returns the count."""
    from tqdm.auto import tqdm

    files = []
    for split in splits:
        files += sorted((Path(root) / "gtFine" / split).rglob("*_gtFine_labelIds.png"))
    if not files:
        raise DatasetError(f"No *_gtFine_labelIds.png found under {Path(root) / 'gtFine'}; is this a Cityscapes root?")
    for path in tqdm(files, desc="Cityscapes labelIds -> trainIds", disable=not progress):
        target = path.with_name(path.name.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"))
        _write_png_atomic(cityscapes_label_ids_to_train_ids(_read_mask(path)), target)
    return len(files)


def convert_coco_stuff(
    root: str | Path, splits: tuple[str, ...] = ("train2017", "val2017"), progress: bool = True
) -> int:
    """Write ``*_labelTrainIds.png`` (0-170 / 255) beside every raw stuff-thing map; returns the count."""
    from tqdm.auto import tqdm

    files = []
    for split in splits:
        folder = Path(root) / "annotations" / split
        files += sorted(p for p in folder.glob("*.png") if not p.name.endswith("_labelTrainIds.png"))
    if not files:
        raise DatasetError(f"No raw COCO-Stuff maps (*.png) found under {Path(root) / 'annotations'}.")
    for path in tqdm(files, desc="COCO-Stuff raw -> trainIds", disable=not progress):
        _write_png_atomic(
            coco_stuff_raw_to_train_ids(_read_mask(path)), path.with_name(f"{path.stem}_labelTrainIds.png")
        )
    return len(files)


# ----------------------------------------------------------------------------- registry


READERS: dict[str, type[SegmentationFolder]] = {
    "ade20k": ADE20K,
    "cityscapes": Cityscapes,
    "coco-stuff": COCOStuff,
    "pascal-context": PascalContext59,
    "folder": FolderDataset,
}
ALIASES = {
    "ade": "ade20k", "ade20k": "ade20k",
    "cityscapes": "cityscapes",
    "coco-stuff": "coco-stuff", "coco-stuff164k": "coco-stuff", "cocostuff": "coco-stuff",
    "coco-stuff-164k": "coco-stuff",
    "pascal-context": "pascal-context", "pascal-context-59": "pascal-context", "pascal-context59": "pascal-context",
    "pc59": "pascal-context",
    "folder": "folder",
    "fashion-scenes": "fashion-scenes", "fashionscenes": "fashion-scenes",
}  # fmt: skip
DATASET_NAMES = ("ade20k", "cityscapes", "coco-stuff", "pascal-context", "folder", "fashion-scenes")
DEFAULT_FOLDERS = {
    "ade20k": "ade/ADEChallengeData2016", "cityscapes": "cityscapes", "coco-stuff": "coco_stuff164k",
    "pascal-context": "VOCdevkit/VOC2010", "folder": "folder",
}  # fmt: skip


def canonical_name(name: str) -> str:
    """Dataset name or alias -> one of :data:`DATASET_NAMES`; ConfigError with suggestions otherwise."""
    key = name.strip().lower().replace("_", "-")
    if key in ALIASES:
        return ALIASES[key]
    close = difflib.get_close_matches(key, list(ALIASES), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}.{hint}")


def _resolve_root(name: str, root: str | Path | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    default = default_data_dir() / DEFAULT_FOLDERS[name]
    if not default.is_dir():
        raise DatasetError(
            f"No root given for dataset {name!r} and the default {default} does not exist. Pass the dataset's "
            "folder (root=... in Python, ROOT on the command line) or place it there ($OFFSEG_DATA moves data/)."
        )
    return default


def build_dataset(name: str, root: str | Path | None = None, split: str = "train", **kwargs):
    """Dataset by name: "ade20k", "cityscapes", "coco-stuff", "pascal-context", "folder", "fashion-scenes".

    Real datasets default to ``$OFFSEG_DATA/<mmseg folder>`` (``data/`` of the repo); FashionScenes
    takes its own keyword arguments (``config`` as a :class:`FashionScenesConfig` or dict, ``length``,
    ``stream``, ``fmnist``). Every dataset yields ``(image uint8 (H, W, 3), mask int64 (H, W), name)``
    and has ``.classes`` and ``.palette``.
    """
    key = canonical_name(name)
    if key == "fashion-scenes":
        config = kwargs.pop("config", None)
        if isinstance(config, dict):
            config = config_from_dict(config)
        return FashionScenes(split=split, root=root, config=config, **kwargs)
    return READERS[key](_resolve_root(key, root), split=split, **kwargs)


# ----------------------------------------------------------------------------- checker


@dataclass
class CheckReport:
    """Everything :func:`check_dataset` found.

    Attributes:
        histogram: labelled pixels per class (length K); ``ignored`` counts 255 pixels.
        problems: one sentence per problem (all of them, not only the first).
    """

    dataset: str
    root: str
    split: str
    classes: tuple[str, ...]
    num_images: int = 0
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ignored: int = 0
    problems: list[str] = field(default_factory=list)
    note: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def classes_present(self) -> list[str]:
        return [c for c, n in zip(self.classes, self.histogram) if n > 0]

    def summary(self) -> str:
        """Readable summary: counts, classes present, label histogram (share of labelled pixels)."""
        labelled = int(self.histogram.sum())
        total = labelled + self.ignored
        lines = [self.note] if self.note else []
        lines += [
            f"{self.dataset} split {self.split!r} at {self.root}",
            f"  images checked: {self.num_images}",
            f"  classes present: {len(self.classes_present)} of {len(self.classes)}",
            f"  ignored (255) pixels: {self.ignored} ({100.0 * self.ignored / max(total, 1):.2f} %)",
            "  label histogram (share of labelled pixels):",
        ]
        for index in np.argsort(-self.histogram, kind="stable"):
            if self.histogram[index] > 0:
                share = 100.0 * self.histogram[index] / labelled
                lines.append(f"    {index:4d} {self.classes[index]:<24s} {share:7.3f} %")
        absent = [c for c, n in zip(self.classes, self.histogram) if n == 0]
        if absent:
            lines.append(f"  absent classes: {', '.join(absent)}")
        lines.append(f"  problems: {len(self.problems)}")
        return "\n".join(lines)


def check_dataset(
    name: str, root: str | Path | None = None, split: str = "val", progress: bool = False, **kwargs
) -> CheckReport:
    """Read every image and mask of a split; collect all problems and the label histogram.

    Problems: missing masks (or images listed in a split file), unreadable or truncated files,
    colour masks, image/mask size mismatches, labels outside [0, K) other than 255, an empty split.
    Layout errors that prevent scanning at all (missing root, no classes.txt) are reported as one
    problem. Never raises for bad data.
    """
    from tqdm.auto import tqdm

    key = canonical_name(name)
    try:
        if key == "fashion-scenes" and root is not None and not kwargs:
            # a given root is checked as stored (its manifest decides), never regenerated with defaults
            dataset = open_stored_set(root, split)
            if dataset is None:
                raise DatasetError(
                    f"{root} holds no stored FashionScenes {split} set (no folder with a manifest.json); "
                    f"write one with `offseg data fashion-scenes --out {root}`."
                )
        elif key == "fashion-scenes":
            dataset = build_dataset(key, root, split, stream=False, **kwargs)
        else:
            dataset = READERS[key](_resolve_root(key, root), split=split, strict=False, **kwargs)
            dataset.verify_files = True
    except DatasetError as err:
        return CheckReport(key, str(root), split, (), problems=[str(err)])
    # FashionScenes: the set's own folder, and a line with its generator parameters
    where = getattr(dataset, "folder", None) or getattr(dataset, "root", root)
    note = dataset.describe() if key == "fashion-scenes" else getattr(dataset, "note", None)
    report = CheckReport(
        key, str(where), split, tuple(dataset.classes),
        histogram=np.zeros(len(dataset.classes), dtype=np.int64), note=note,
    )  # fmt: skip
    report.problems.extend(getattr(dataset, "problems", []))
    if len(dataset) == 0:
        report.problems.append(f"The split {split!r} holds no readable image/mask pair.")
    for i in tqdm(range(len(dataset)), desc=f"check {key} {split}", disable=not progress):
        try:
            _, mask, _ = dataset[i]
        except DatasetError as err:
            report.problems.append(str(err))
            continue
        report.num_images += 1
        counts = np.bincount(mask.ravel(), minlength=256)
        report.histogram += counts[: len(dataset.classes)]
        report.ignored += int(counts[IGNORE_INDEX])
    return report
