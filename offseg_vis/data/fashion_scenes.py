"""FashionScenes: the offline benchmark. Real Fashion-MNIST items composited onto real photos.

A scene is a pure function of (seed, split, index, config):

1. background: a random rotated / flipped / colour-jittered crop of one of the split's photos
   (train and val use disjoint photos, see :mod:`offseg_vis.data.backgrounds`);
2. 2-5 items (train items from the Fashion-MNIST train file, val items from t10k), each scaled to
   32-64 px, flipped at random, 70 % tinted with a random colour. Label policy: an item's label is
   the *filled silhouette* of its matte (threshold, small gaps closed, holes filled, specks dropped)
   and the item is drawn *opaque inside exactly that silhouette*, so every pixel shows either the
   item or the background and its label says which (no ambiguous pixel, no 255 in the masks);
3. a placement that would leave an earlier item less than half visible is redrawn;
4. one global appearance shift per scene (colour cast, contrast, brightness, gamma, slight blur or
   noise) scaled by ``style`` in [0, 1], so one class looks different from image to image.

Val (and any cached split) is stored as PNG pairs + ``manifest.json`` under
``$OFFSEG_DATA/fashion_scenes`` (default ``data/fashion_scenes`` of the repo) and built on first use;
the train split streams fresh scenes every epoch by default.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from offseg_vis.data.backgrounds import BACKGROUNDS, sample_background
from offseg_vis.data.fashion_mnist import (
    FMNIST_CLASSES,
    FashionMNISTSplit,
    find_fashion_mnist,
    load_fashion_mnist,
)
from offseg_vis.data.paths import default_data_dir
from offseg_vis.errors import ConfigError, DatasetError

__all__ = [
    "CLASSES",
    "PALETTE",
    "GENERATOR_VERSION",
    "FashionScenesConfig",
    "FashionScenes",
    "SceneInfo",
    "generate_scene",
    "generate_scene_with_info",
    "build_cache",
    "default_root",
    "stored_sets",
    "open_stored_set",
    "find_fashion_mnist",
]

# Bump whenever a scene's pixels or labels change for the same (seed, split, index, config):
# caches carrying another version are rebuilt.
GENERATOR_VERSION = "2.0"  # 2.1's additions are off by default and leave 2.0's scenes unchanged
CLASSES = ("background",) + FMNIST_CLASSES
PALETTE = (
    (0, 0, 0),
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)  # fmt: skip
SPLITS = {"train": 1, "val": 2}  # split -> seed component (scenes of different splits never coincide)
FMNIST_SPLIT = {"train": "train", "val": "t10k"}  # disjoint item pools
DEFAULT_LENGTH = {"train": 2000, "val": 1000}


# Parameters added in 2.1 and their "off" values, at which scenes are those of 2.0.
_ADDED_IN_2_1 = {"class_style": 0.0, "classes_per_scene": 0}


@dataclass(frozen=True)
class FashionScenesConfig:
    """Parameters of the generator (all recorded in the manifest).

    Attributes:
        size: scene side S in pixels (scenes are S x S).
        min_items, max_items: number of items per scene (uniform, inclusive).
        item_min, item_max: side in pixels of the square a 28 x 28 item is scaled to.
        tint_prob: share of items multiplied by a random colour.
        min_tint_brightness: lowest HSV value of a tint (keeps tinted items from being black).
        style: strength in [0, 1] of the per-scene appearance shift (0 = off).
        class_style: strength in [0, 1] of a per-scene look of each class (0 = off): in one scene,
            every item of a class shares a colour and a stripe texture drawn for that (scene,
            class) pair, so a class looks alike within an image and different across images, the
            paper's case for image-specific class representations. At 1 the look replaces the
            items' own tints.
        classes_per_scene: 0 = each item's class is drawn freely; n >= 1 = a scene's items come
            from n classes drawn for it, so classes repeat within a scene.
        seed: global seed.
        max_hidden: largest share of an earlier item a later one may cover (placements that hide
            more are redrawn).
        silhouette_threshold: matte level (0-1) above which a pixel belongs to the item before gaps
            are closed and holes filled.
        placement_tries: placements tried per item before it is shrunk to ``item_min``, then dropped.
    """

    size: int = 128
    min_items: int = 2
    max_items: int = 5
    item_min: int = 32
    item_max: int = 64
    tint_prob: float = 0.7
    min_tint_brightness: float = 0.2
    style: float = 0.5
    seed: int = 0
    max_hidden: float = 0.5
    silhouette_threshold: float = 0.05
    placement_tries: int = 25
    class_style: float = 0.0
    classes_per_scene: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.size < 16:
            problems.append(f"size must be >= 16 (got {self.size})")
        if not 1 <= self.min_items <= self.max_items:
            problems.append(f"need 1 <= min_items <= max_items (got {self.min_items}, {self.max_items})")
        if not 8 <= self.item_min <= self.item_max <= self.size:
            problems.append(
                f"need 8 <= item_min <= item_max <= size (got {self.item_min}, {self.item_max}, {self.size})"
            )
        for name in ("tint_prob", "min_tint_brightness", "style", "silhouette_threshold", "class_style"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must lie in [0, 1] (got {getattr(self, name)})")
        if not 0.0 <= self.max_hidden < 1.0:
            problems.append(f"max_hidden must lie in [0, 1) (got {self.max_hidden})")
        if self.placement_tries < 1:
            problems.append(f"placement_tries must be >= 1 (got {self.placement_tries})")
        if self.seed < 0:
            problems.append(f"seed must be >= 0 (got {self.seed})")
        if not 0 <= self.classes_per_scene <= len(FMNIST_CLASSES):
            problems.append(f"classes_per_scene must lie in [0, {len(FMNIST_CLASSES)}] (got {self.classes_per_scene})")
        if problems:
            raise ConfigError("Invalid FashionScenes parameters: " + "; ".join(problems) + ".")

    @classmethod
    def for_size(cls, size: int, **overrides) -> FashionScenesConfig:
        """Defaults with item sides scaled to a ``size`` x ``size`` scene (32-64 px at 128)."""
        item_min = max(8, round(32 * size / 128))
        item_max = max(item_min, round(64 * size / 128))
        return cls(**{"size": size, "item_min": item_min, "item_max": item_max, **overrides})

    def key(self) -> str:
        """Short digest of the parameters and generator version (names non-default cache folders).

        Parameters added after version 2.0 enter only when set, so earlier caches keep their names.
        """
        params = {k: v for k, v in asdict(self).items() if not (k in _ADDED_IN_2_1 and v == _ADDED_IN_2_1[k])}
        text = json.dumps({"version": GENERATOR_VERSION, **params}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


# Scene presets: generator parameters an experiment arm (and a gallery scene) may add on top of its style.
# "" is the plain benchmark. "looks" is the lever the paper's setting has and plain FashionScenes lacks:
# class-specific appearance that changes from image to image (each class gets one colour and stripe
# texture per scene) with classes repeating within a scene (two classes per scene). "looks" changes two
# things at once, so its two halves are presets of their own: "class-looks" (per-scene class appearance
# only) and "cooccur" (only two classes per scene: an image-level classifier can exploit which few
# classes are present, a mechanism the paper does not argue).
SCENE_PRESETS: dict[str, dict] = {
    "": {},
    "looks": {"class_style": 1.0, "classes_per_scene": 2},
    "class-looks": {"class_style": 1.0, "classes_per_scene": 0},
    "cooccur": {"class_style": 0.0, "classes_per_scene": 2},
}


def scene_preset_of(options: dict) -> str | None:
    """The preset whose parameters ``options`` (a FashionScenesConfig dict, missing keys at their
    defaults) has: {} -> "", {"class_style": 1, "classes_per_scene": 2} -> "looks"; None when none fits."""
    defaults = asdict(FashionScenesConfig())
    preset_keys = {k for opts in SCENE_PRESETS.values() for k in opts}
    values = {k: options.get(k, defaults[k]) for k in preset_keys}
    for name, opts in SCENE_PRESETS.items():
        if values == {k: opts.get(k, defaults[k]) for k in preset_keys}:
            return name
    return None


@dataclass
class SceneInfo:
    """What went into one scene (for manifests and tests).

    Attributes:
        background: name of the background source image.
        items: per placed item, in drawing order: {"fmnist_index", "class_id" (1-10), "size", "x",
            "y" (top-left corner), "flip", "tint" (RGB in [0, 1] or None), "area", "visible"}
            (area = silhouette pixels, visible = pixels still showing at the end).
        dropped: items that found no valid placement.
    """

    background: str
    items: list[dict] = field(default_factory=list)
    dropped: int = 0


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"FashionScenes split must be 'train' or 'val', got {split!r}.")


def item_silhouette(matte: np.ndarray, threshold: float) -> np.ndarray:
    """Filled silhouette of an item's matte.

    matte: uint8 (s, s), the scaled item. Returns bool (s, s): pixels above ``threshold``, gaps of
    about one Fashion-MNIST pixel closed, enclosed holes filled, components smaller than 10 % of the
    largest dropped (stray specks).
    """
    s = matte.shape[0]
    support = matte >= max(1, round(threshold * 255))
    radius = max(1, round(s / 28))  # one source pixel
    pad = radius + 1
    cross = ndimage.generate_binary_structure(2, 1)
    # Pad first: closing must not glue the item to the frame border.
    closed = ndimage.binary_closing(np.pad(support, pad), structure=cross, iterations=radius)
    filled = ndimage.binary_fill_holes(closed[pad:-pad, pad:-pad])
    labels, count = ndimage.label(filled)
    if count > 1:
        areas = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(areas >= 0.1 * areas.max()) + 1
        filled = np.isin(labels, keep)
    return filled


def _tint(rng: np.random.Generator, config: FashionScenesConfig) -> np.ndarray | None:
    """A random RGB tint (HSV value >= min_tint_brightness) or None (item stays grey)."""
    tinted = rng.random() < config.tint_prob
    hue, sat = rng.random(), rng.uniform(0.25, 1.0)
    value = rng.uniform(config.min_tint_brightness, 1.0)
    return np.asarray(colorsys.hsv_to_rgb(hue, sat, value), dtype=np.float32) if tinted else None


@dataclass(frozen=True)
class ClassLook:
    """How one class looks in one scene (``class_style`` > 0): a colour and a stripe texture.

    Attributes:
        colour: RGB in [0, 1], float32 (3,).
        angle: stripe direction in radians.
        period: stripe period in pixels of a 128-px scene (scaled with the scene).
        depth: how dark the stripes get, in [0, 1].
        phase: stripe phase in radians.
    """

    colour: np.ndarray
    angle: float
    period: float
    depth: float
    phase: float

    def texture(self, side: int, scale: float) -> np.ndarray:
        """Stripe multiplier float32 (side, side) in [1 - depth, 1]."""
        v, u = np.mgrid[0:side, 0:side].astype(np.float32)
        along = u * np.cos(self.angle) + v * np.sin(self.angle)
        wave = 0.5 + 0.5 * np.sin(2.0 * np.pi * along / (self.period * scale) + self.phase)
        return (1.0 - self.depth * wave).astype(np.float32)


def draw_class_looks(rng: np.random.Generator, config: FashionScenesConfig) -> list[ClassLook]:
    """One look per Fashion-MNIST class (always all ten, so the draws do not depend on the scene)."""
    looks = []
    for _ in FMNIST_CLASSES:
        hue, sat = rng.random(), rng.uniform(0.4, 1.0)
        value = rng.uniform(max(config.min_tint_brightness, 0.4), 1.0)
        looks.append(
            ClassLook(
                colour=np.asarray(colorsys.hsv_to_rgb(hue, sat, value), dtype=np.float32),
                angle=float(rng.uniform(0.0, np.pi)),
                period=float(rng.uniform(3.0, 9.0)),
                depth=float(rng.uniform(0.3, 0.7)),
                phase=float(rng.uniform(0.0, 2.0 * np.pi)),
            )
        )
    return looks


def _render_item(
    pool: FashionMNISTSplit,
    index: int,
    side: int,
    flip: bool,
    tint: np.ndarray | None,
    threshold: float,
    look: ClassLook | None = None,
    look_strength: float = 0.0,
    scene_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Item ``index`` scaled to side x side -> (silhouette bool (s, s), colour float32 (s, s, 3)).

    With a ``look`` (strength in (0, 1]) the item's tint moves towards the look's colour and its
    shade is multiplied by the look's stripes, both by ``look_strength``.
    """
    matte = np.asarray(Image.fromarray(pool.images[index]).resize((side, side), Image.BILINEAR))
    if flip:
        matte = matte[:, ::-1]
    silhouette = item_silhouette(matte, threshold)
    shade = matte.astype(np.float32)[:, :, None]  # (s, s, 1) item intensity in [0, 255]
    if look is None or look_strength <= 0:
        colour = shade * tint if tint is not None else np.repeat(shade, 3, axis=2)  # (s, s, 3)
        return silhouette, colour
    own = tint if tint is not None else np.ones(3, dtype=np.float32)
    mixed = (1.0 - look_strength) * own + look_strength * look.colour  # (3,)
    stripes = 1.0 - look_strength * (1.0 - look.texture(side, scene_scale))  # (s, s)
    return silhouette, shade * mixed * stripes[:, :, None]


def _place(
    silhouette: np.ndarray,
    owner: np.ndarray,
    areas: list[int],
    rng: np.random.Generator,
    config: FashionScenesConfig,
) -> tuple[int, int] | None:
    """A top-left corner where the item hides at most ``max_hidden`` of every earlier item, or None."""
    side = silhouette.shape[0]
    span = config.size - side + 1
    visible = np.bincount(owner[owner >= 0], minlength=len(areas)) if areas else None
    for _ in range(config.placement_tries):
        y, x = int(rng.integers(0, span)), int(rng.integers(0, span))
        if not areas:
            return y, x
        covered = owner[y : y + side, x : x + side][silhouette]
        hidden = np.bincount(covered[covered >= 0], minlength=len(areas))
        remaining = visible - hidden
        if np.all(remaining >= (1.0 - config.max_hidden) * np.asarray(areas)):
            return y, x
    return None


def _appearance_shift(image: np.ndarray, rng: np.random.Generator, style: float) -> np.ndarray:
    """One global photometric change of the whole scene, scaled by ``style`` (0 = identity).

    image float32 (S, S, 3) in [0, 255] -> same. The same draws are taken whatever ``style`` is, so
    changing ``style`` changes only the look of a scene, never its layout.
    """
    cast = np.exp(rng.normal(0.0, 0.25, size=3) * style).astype(np.float32)
    contrast = np.exp(rng.uniform(-0.6, 0.6) * style)
    brightness = rng.uniform(-50.0, 50.0) * style
    gamma = np.exp(rng.uniform(-0.4, 0.4) * style)
    blur = rng.random() < 0.4 * style
    blur_sigma = rng.uniform(0.4, 0.4 + 0.8 * style)
    noise = rng.random() < 0.4 * style
    noise_sigma = rng.uniform(2.0, 2.0 + 8.0 * style)
    noise_seed = int(rng.integers(0, 2**31))
    if style == 0:
        return image
    image = image * cast
    mean = image.mean()
    image = (image - mean) * contrast + mean + brightness
    image = 255.0 * (np.clip(image, 0.0, 255.0) / 255.0) ** gamma
    if blur:
        image = ndimage.gaussian_filter(image, sigma=(blur_sigma, blur_sigma, 0))
    if noise:
        image = image + np.random.default_rng(noise_seed).normal(0.0, noise_sigma, image.shape)
    return image.astype(np.float32)


def _choose_item(
    pool: FashionMNISTSplit,
    rng: np.random.Generator,
    config: FashionScenesConfig,
    scene_classes: np.ndarray | None,
    by_class: list[np.ndarray] | None,
) -> tuple[int, int, bool, np.ndarray | None]:
    """Draw one item from ``rng`` -> (Fashion-MNIST index, side, flip, tint or None).

    Draw order (fixed: it defines every scene): the item (or its class then the item), the side,
    the flip, the tint.
    """
    if scene_classes is None:
        item = int(rng.integers(0, len(pool.images)))
    else:
        candidates = by_class[int(scene_classes[int(rng.integers(0, len(scene_classes)))])]
        item = int(candidates[int(rng.integers(0, len(candidates)))])
    side = int(rng.integers(config.item_min, config.item_max + 1))
    flip = bool(rng.random() < 0.5)
    tint = _tint(rng, config)
    return item, side, flip, tint


def _render_and_place(
    pool: FashionMNISTSplit,
    item: int,
    side: int,
    flip: bool,
    tint: np.ndarray | None,
    owner: np.ndarray,
    areas: list[int],
    rng: np.random.Generator,
    config: FashionScenesConfig,
    looks: list | None,
) -> tuple[np.ndarray, np.ndarray, int, tuple[int, int] | None]:
    """Render ``item`` at the drawn ``side`` and look for a place; on failure retry once at the
    smallest side. -> (silhouette bool (s, s), colour float32 (s, s, 3), s, (y, x) or None).

    Placement draws come from ``rng`` (the item stream), in the same order as the attempts.
    """
    placed = None
    for attempt_side in dict.fromkeys((side, config.item_min)):  # the drawn size, then the smallest
        silhouette, colour = _render_item(
            pool,
            item,
            attempt_side,
            flip,
            tint,
            config.silhouette_threshold,
            look=looks[int(pool.labels[item])] if looks else None,
            look_strength=config.class_style,
            scene_scale=owner.shape[0] / 128,
        )
        if not silhouette.any():
            break
        placed = _place(silhouette, owner, areas, rng, config)
        if placed is not None:
            side = attempt_side
            break
    return silhouette, colour, side, placed


def _item_entry(item: int, class_id: int, side: int, y: int, x: int, flip: bool, tint, area: int) -> dict:
    """The :class:`SceneInfo` record of one placed item ("visible" is filled in at the end)."""
    return {
        "fmnist_index": item,
        "class_id": class_id,
        "size": side,
        "x": x,
        "y": y,
        "flip": flip,
        "tint": None if tint is None else [round(float(c), 6) for c in tint],
        "area": area,
    }


def generate_scene_with_info(
    split: str, index: int, config: FashionScenesConfig | None = None, fmnist: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray, SceneInfo]:
    """Scene ``index`` of ``split`` -> (image uint8 (S, S, 3), mask int64 (S, S), :class:`SceneInfo`).

    Mask values: 0 background, 1-10 the Fashion-MNIST classes (:data:`CLASSES`). ``fmnist`` is the
    Fashion-MNIST folder (default: see :func:`find_fashion_mnist`); it only says where the (fixed)
    items are read from, so it does not change the scene.
    """
    _check_split(split)
    config = config or FashionScenesConfig()
    if index < 0:
        raise ValueError(f"scene index must be >= 0, got {index}.")
    pool = load_fashion_mnist(FMNIST_SPLIT[split], fmnist)
    # Independent streams: the background, the items, the style and the class looks never shift
    # each other's draws (spawned children are fixed by their index, so adding the fourth stream
    # left the first three, and 2.0's scenes, unchanged).
    seqs = np.random.SeedSequence([config.seed, SPLITS[split], index]).spawn(4)
    bg_rng, item_rng, style_rng, look_rng = (np.random.default_rng(s) for s in seqs)
    looks = draw_class_looks(look_rng, config) if config.class_style > 0 else None
    scene_classes = by_class = None
    if config.classes_per_scene > 0:
        scene_classes = look_rng.choice(len(FMNIST_CLASSES), size=config.classes_per_scene, replace=False)
        by_class = _indices_by_class(pool)

    names = sorted(BACKGROUNDS[split])
    background = names[int(bg_rng.integers(0, len(names)))]
    size = config.size
    image = sample_background(background, size, bg_rng)  # (S, S, 3) float32
    mask = np.zeros((size, size), dtype=np.int64)
    owner = np.full((size, size), -1, dtype=np.int64)  # which placed item shows at each pixel
    info = SceneInfo(background=background)
    areas: list[int] = []

    for _ in range(int(item_rng.integers(config.min_items, config.max_items + 1))):
        item, side, flip, tint = _choose_item(pool, item_rng, config, scene_classes, by_class)
        silhouette, colour, side, placed = _render_and_place(
            pool, item, side, flip, tint, owner, areas, item_rng, config, looks
        )
        if placed is None:
            info.dropped += 1
            continue
        y, x = placed
        window = (slice(y, y + side), slice(x, x + side))
        image[window][silhouette] = colour[silhouette]  # opaque inside exactly the silhouette
        mask[window][silhouette] = int(pool.labels[item]) + 1
        owner[window][silhouette] = len(areas)
        areas.append(int(silhouette.sum()))
        info.items.append(_item_entry(item, int(pool.labels[item]) + 1, side, y, x, flip, tint, areas[-1]))
    visible = np.bincount(owner[owner >= 0], minlength=len(areas))
    for entry, count in zip(info.items, visible):
        entry["visible"] = int(count)

    image = _appearance_shift(image, style_rng, config.style)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask, info


def _indices_by_class(pool: FashionMNISTSplit) -> list[np.ndarray]:
    """Item indices of each Fashion-MNIST class (0-9) in ``pool``, computed once per pool."""
    if pool.sha256 not in _BY_CLASS:  # the same file has the same labels
        _BY_CLASS[pool.sha256] = [np.flatnonzero(pool.labels == c) for c in range(len(FMNIST_CLASSES))]
    return _BY_CLASS[pool.sha256]


_BY_CLASS: dict[str, list[np.ndarray]] = {}


def generate_scene(
    split: str, index: int, config: FashionScenesConfig | None = None, fmnist: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scene ``index`` of ``split`` -> (image uint8 (S, S, 3), mask int64 (S, S)); a pure function."""
    image, mask, _ = generate_scene_with_info(split, index, config, fmnist)
    return image, mask


# ----------------------------------------------------------------------------- cache on disk


def default_root() -> Path:
    """``$OFFSEG_DATA/fashion_scenes``, else ``data/fashion_scenes`` of the repository."""
    return default_data_dir() / "fashion_scenes"


def split_dir(root: str | Path, split: str, config: FashionScenesConfig) -> Path:
    """Cache folder of a split: ``ROOT/<split>`` for the default parameters, else ``ROOT/<split>-<key>``."""
    name = split if config == FashionScenesConfig() else f"{split}-{config.key()}"
    return Path(root) / name


def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def stored_sets(root: str | Path, split: str | None = None) -> list[Path]:
    """The stored FashionScenes sets under ``root``: ``root`` itself when it holds a ``manifest.json``,
    else each sub-folder that does (``val``, ``val-<key>``, ...), optionally only those of ``split``.

    Returns the folders sorted by name (hidden folders, i.e. builds in progress, are skipped).
    """
    root = Path(root)
    if (root / "manifest.json").is_file():
        return [root]
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        manifest = _read_manifest(folder)
        if manifest is None or manifest.get("dataset") != "FashionScenes":
            continue
        if split is None or manifest.get("split") == split:
            found.append(folder)
    return found


def describe_parameters(config: FashionScenesConfig) -> str:
    """The generator parameters in one phrase: seed, size and style always, every other parameter
    that differs from its default for that size."""
    defaults = asdict(FashionScenesConfig.for_size(config.size))
    shown = {"seed": config.seed, "size": config.size, "style": config.style}
    shown.update({k: v for k, v in asdict(config).items() if k not in shown and v != defaults[k]})
    return ", ".join(f"{k} {v}" for k, v in shown.items())


def _cache_usable(manifest: dict | None, config: FashionScenesConfig, length: int) -> bool:
    return (
        manifest is not None
        and manifest.get("generator_version") == GENERATOR_VERSION
        and manifest.get("config") == asdict(config)
        and int(manifest.get("count", 0)) >= length
    )


def build_cache(
    root: str | Path,
    split: str,
    length: int,
    config: FashionScenesConfig | None = None,
    fmnist: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = True,
) -> Path:
    """Write scenes 0..length-1 of ``split`` as PNG pairs + ``manifest.json`` + ``scenes.jsonl``.

    Files are written to a temporary folder beside the target and renamed into place, so an
    interrupted build never leaves a half-written cache. The same arguments give byte-identical
    files. With ``overwrite=False`` a usable cache that another process finished meanwhile is kept
    (and this build dropped). Returns the split folder.
    """
    from tqdm.auto import tqdm

    _check_split(split)
    config = config or FashionScenesConfig()
    if length < 1:
        raise ConfigError(f"A FashionScenes cache needs at least one scene (got {length}).")
    target = split_dir(root, split, config)
    target.parent.mkdir(parents=True, exist_ok=True)
    pool = load_fashion_mnist(FMNIST_SPLIT[split], fmnist)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        pixels = np.zeros(len(CLASSES), dtype=np.int64)
        items_per_class = np.zeros(len(CLASSES), dtype=np.int64)
        visible_shares, dropped = [], 0
        with open(tmp / "scenes.jsonl", "w") as log:
            for i in tqdm(range(length), desc=f"FashionScenes {split}", unit="scene", disable=not progress):
                image, mask, info = generate_scene_with_info(split, i, config, fmnist)
                Image.fromarray(image).save(tmp / "images" / f"{i:06d}.png")
                Image.fromarray(mask.astype(np.uint8)).save(tmp / "masks" / f"{i:06d}.png")
                pixels += np.bincount(mask.ravel(), minlength=len(CLASSES))
                for item in info.items:
                    items_per_class[item["class_id"]] += 1
                    visible_shares.append(item["visible"] / item["area"])
                dropped += info.dropped
                log.write(json.dumps({"index": i, **asdict(info)}, sort_keys=True) + "\n")
        visible = np.asarray(visible_shares)
        manifest = {
            "dataset": "FashionScenes",
            "generator_version": GENERATOR_VERSION,
            "split": split,
            "seed": config.seed,
            "config": asdict(config),
            "count": length,
            "size": [config.size, config.size],
            "classes": list(CLASSES),
            "palette": [list(c) for c in PALETTE],
            "class_pixel_share": {c: round(float(p) / float(pixels.sum()), 6) for c, p in zip(CLASSES, pixels)},
            "items_per_class": {c: int(n) for c, n in zip(CLASSES[1:], items_per_class[1:])},
            "items": int(len(visible)),
            "items_dropped": dropped,
            "min_item_visible_share": round(float(visible.min()), 6) if len(visible) else None,
            "share_items_less_than_half_visible": float(np.mean(visible < 0.5)) if len(visible) else 0.0,
            "backgrounds": sorted(BACKGROUNDS[split]),
            "fashion_mnist": {"file": FMNIST_SPLIT[split], "images_sha256": pool.sha256},
            "layout": "images/NNNNNN.png (RGB), masks/NNNNNN.png (L, 0=background, 1-10 items)",
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if not overwrite and _cache_usable(_read_manifest(target), config, length):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``, moving any stale ``target`` aside first."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        # Another process finished the same (identical) build first: keep theirs.
        if not (target / "manifest.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- dataset


class FashionScenes(torch.utils.data.Dataset):
    """FashionScenes split as a dataset of ``(image uint8 (S, S, 3), mask int64 (S, S), name)``.

    Args:
        split: "train" or "val".
        root: cache folder (default :func:`default_root`).
        config: generator parameters (default :class:`FashionScenesConfig`).
        length: number of scenes (epoch size when streaming); default 2000 train, 1000 val.
        stream: generate scenes on the fly instead of reading PNGs. Default: True for train
            (fresh scenes every epoch: scene id = epoch * length + i), False for val (read from
            the cache, built on first use).
        fmnist: Fashion-MNIST folder (default: ``$OFFSEG_FMNIST`` or the Debian package).
        progress: show a progress bar while building a cache.
    """

    def __init__(
        self,
        split: str = "train",
        root: str | Path | None = None,
        config: FashionScenesConfig | None = None,
        length: int | None = None,
        stream: bool | None = None,
        fmnist: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        _check_split(split)
        self.split = split
        self.config = config or FashionScenesConfig()
        self.length = int(length if length is not None else DEFAULT_LENGTH[split])
        if self.length < 1:
            raise ConfigError(f"FashionScenes length must be >= 1 (got {self.length}).")
        self.stream = (split == "train") if stream is None else bool(stream)
        self.fmnist = fmnist
        self.epoch = 0
        self.generator_version = GENERATOR_VERSION
        self.root = Path(root) if root is not None else default_root()
        load_fashion_mnist(FMNIST_SPLIT[split], fmnist)  # fail early with a clear message
        self.folder: Path | None = None
        if not self.stream:
            self.folder = split_dir(self.root, split, self.config)
            if not _cache_usable(_read_manifest(self.folder), self.config, self.length):
                build_cache(self.root, split, self.length, self.config, fmnist, progress, overwrite=False)

    @classmethod
    def from_folder(cls, folder: str | Path, length: int | None = None) -> FashionScenes:
        """The scenes stored in ``folder`` (written by ``offseg data fashion-scenes`` or a cache), as
        its ``manifest.json`` describes them (split, generator parameters, count): nothing is generated
        or rebuilt, so this reads exactly the files that are there.

        Args:
            folder: a split folder holding ``manifest.json``, ``images/`` and ``masks/``.
            length: use the first ``length`` scenes (default: all the manifest counts).

        Raises:
            DatasetError: no readable manifest, or fewer scenes than ``length``.
        """
        folder = Path(folder)
        manifest = _read_manifest(folder)
        if manifest is None or manifest.get("dataset") != "FashionScenes":
            raise DatasetError(
                f"{folder} holds no readable FashionScenes manifest.json; point at a folder written by "
                "`offseg data fashion-scenes --out DIR` (DIR/val or DIR/val-<key>)."
            )
        count = int(manifest.get("count", 0))
        length = count if length is None else int(length)
        if not 1 <= length <= count:
            raise DatasetError(f"{folder} stores {count} scenes; cannot read {length} of them.")
        split = manifest.get("split")
        _check_split(split)
        self = cls.__new__(cls)
        self.split, self.length, self.stream, self.fmnist, self.epoch = split, length, False, None, 0
        self.config = config_from_dict(manifest.get("config", {}))
        self.generator_version = str(manifest.get("generator_version"))
        self.root, self.folder = folder.parent, folder
        return self

    def describe(self) -> str:
        """One line: split, number of scenes, where they come from and the generator's parameters."""
        where = "streamed (generated on the fly)" if self.stream else f"from {self.folder}"
        return (
            f"FashionScenes {self.split}: {self.length} scenes {where}; generator {self.generator_version}, "
            f"{describe_parameters(self.config)}"
        )

    classes = CLASSES
    palette = PALETTE
    num_classes = len(CLASSES)

    def set_epoch(self, epoch: int) -> None:
        """Select the scenes of ``epoch`` (stream mode); cached splits are the same every epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def scene_id(self, i: int) -> int:
        """Generator index of item ``i`` in the current epoch."""
        return self.epoch * self.length + i if self.stream and self.split == "train" else i

    def name(self, i: int) -> str:
        """Name of item ``i`` (unique within the split), e.g. ``val_000012``."""
        return f"{self.split}_{self.scene_id(i):06d}"

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for FashionScenes {self.split} of length {self.length}")
        i = i % self.length
        if self.stream:
            image, mask = generate_scene(self.split, self.scene_id(i), self.config, self.fmnist)
            return image, mask, self.name(i)
        image_path = self.folder / "images" / f"{i:06d}.png"
        mask_path = self.folder / "masks" / f"{i:06d}.png"
        try:
            with Image.open(image_path) as im:
                image = np.asarray(im.convert("RGB"))
            with Image.open(mask_path) as im:
                mask = np.asarray(im, dtype=np.int64)
        except OSError as err:
            raise DatasetError(
                f"Cannot read FashionScenes file {image_path} or {mask_path} ({err}). Delete the folder "
                f"{self.folder} and it is rebuilt on next use (or run `offseg data fashion-scenes`)."
            ) from err
        return image, mask, self.name(i)

    def __repr__(self) -> str:
        mode = "stream" if self.stream else f"cache at {self.folder}"
        return f"FashionScenes(split={self.split!r}, length={self.length}, {mode}, config={self.config})"


def open_stored_set(root: str | Path, split: str) -> FashionScenes | None:
    """The one stored set of ``split`` under ``root`` (or ``root`` itself when it is a set's folder),
    read by its manifest; None when there is none.

    Raises:
        DatasetError: ``root`` holds several sets of ``split`` (the sentence lists each with its
            folder and parameters), or ``root`` is itself a set of another split.
    """
    found = stored_sets(root, split)
    if len(found) > 1:
        listing = "; ".join(FashionScenes.from_folder(f).describe() for f in found)
        raise DatasetError(
            f"{root} holds {len(found)} FashionScenes {split} sets, so which one to use is ambiguous: "
            f"{listing}. Pass the folder of the one you mean as the root."
        )
    if not found:
        return None
    scenes = FashionScenes.from_folder(found[0])
    if scenes.split != split:
        raise DatasetError(
            f"{found[0]} stores the FashionScenes {scenes.split} split, not {split!r}; pass --split "
            f"{scenes.split} or the folder of a {split} set."
        )
    return scenes


def config_from_dict(values: dict) -> FashionScenesConfig:
    """A config from a dict (e.g. YAML); unknown keys raise :class:`ConfigError` naming them."""
    known = {f.name for f in fields(FashionScenesConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"Unknown FashionScenes parameter(s) {unknown}; valid ones are {sorted(known)}.")
    return FashionScenesConfig(**values)
