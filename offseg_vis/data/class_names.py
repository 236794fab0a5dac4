"""Class names and colour palettes of the real datasets (train-id order), and the one resolver.

Cityscapes colours are the dataset's own. For ADE20K, COCO-Stuff and Pascal-Context the palette is
not the mmseg table (we do not vendor those tables and would not vouch for every entry): a
deterministic palette is generated (bit-interleaved, as the PASCAL VOC colour map does), offset by
one so no class is black. An official checkpoint carries its own palette in ``meta.dataset_meta``,
and :func:`classes_for` prefers it.

:func:`classes_for` is the one place that decides which class names and palette a model gets
(conversion of official checkpoints, cards without names); it always says where they came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from offseg_vis.errors import ConfigError

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)  # fmt: skip
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

COCO_STUFF_CLASSES = (
    # 80 things
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
    # 91 stuff
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

PASCAL_CONTEXT59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse",
    "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip


def generated_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """``num_classes`` distinct RGB colours: the bits of (class + 1) spread over R, G and B."""
    colours = []
    for index in range(1, num_classes + 1):
        r = g = b = 0
        code = index
        for bit in range(7, -1, -1):
            r |= (code & 1) << bit
            g |= ((code >> 1) & 1) << bit
            b |= ((code >> 2) & 1) << bit
            code >>= 3
        colours.append((r, g, b))
    return tuple(colours)


PALETTE_SOURCES = {
    "ade20k": "generated (bit-interleaved), not mmseg's table",
    "cityscapes": "the dataset's own colours",
    "coco-stuff": "generated (bit-interleaved), not mmseg's table",
    "pascal-context": "generated (bit-interleaved), not mmseg's table",
}
DISPLAY_NAMES = {
    "ade20k": "ADE20K", "cityscapes": "Cityscapes", "coco-stuff": "COCO-Stuff-164K",
    "pascal-context": "Pascal-Context-59",
}  # fmt: skip
DATASET_CLASSES: dict[str, tuple[str, ...]] = {
    "ade20k": ADE20K_CLASSES,
    "cityscapes": CITYSCAPES_CLASSES,
    "coco-stuff": COCO_STUFF_CLASSES,
    "pascal-context": PASCAL_CONTEXT59_CLASSES,
}
DATASET_PALETTES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "ade20k": generated_palette(len(ADE20K_CLASSES)),
    "cityscapes": CITYSCAPES_PALETTE,
    "coco-stuff": generated_palette(len(COCO_STUFF_CLASSES)),
    "pascal-context": generated_palette(len(PASCAL_CONTEXT59_CLASSES)),
}
# K -> the dataset an official checkpoint with K classes was trained on (the four K differ).
DATASET_BY_NUM_CLASSES = {len(names): key for key, names in DATASET_CLASSES.items()}


class Classes(NamedTuple):
    """Class names and palette of a model, and one sentence saying where they came from."""

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    source: str


def dataset_key(name: str) -> str:
    """'ADE20K', 'coco_stuff', 'pascal-context' ... -> a key of :data:`DATASET_CLASSES` (ConfigError if none)."""
    key = name.strip().lower().replace("_", "-")
    key = {"ade": "ade20k", "coco-stuff164k": "coco-stuff", "cocostuff": "coco-stuff"}.get(key, key)
    key = {"pascal-context-59": "pascal-context", "pascal-context59": "pascal-context", "pc59": "pascal-context"}.get(
        key, key
    )
    if key not in DATASET_CLASSES:
        raise ConfigError(f"No class names known for dataset {name!r}; choose one of {', '.join(DATASET_CLASSES)}.")
    return key


def _names(value: Any) -> tuple[str, ...] | None:
    """A sequence of strings (list, tuple, numpy array of str), else None."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__") or not hasattr(value, "__iter__"):
        return None
    items = list(value)
    if not items or not all(isinstance(n, str) for n in items):  # numpy str_ is a str subclass
        return None
    return tuple(str(n) for n in items)


def _palette(value: Any, k: int) -> tuple[tuple[int, int, int], ...] | None:
    """K colours as (r, g, b) ints in 0..255 (lists, tuples or a (K, 3) array), else None."""
    if value is None or isinstance(value, str | bytes):
        return None
    try:
        rows = [tuple(int(c) for c in row) for row in value]
        exact = all(float(c) == int(c) for row in value for c in row)
    except (TypeError, ValueError):
        return None
    if len(rows) != k or not exact or any(len(r) != 3 or not all(0 <= c <= 255 for c in r) for r in rows):
        return None
    return tuple((r[0], r[1], r[2]) for r in rows)


def _meta_classes(meta: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """(where, names, palette) from a checkpoint meta: mmengine ``dataset_meta`` or mmseg-0.x keys."""
    dataset_meta = meta.get("dataset_meta")
    if isinstance(dataset_meta, Mapping) and dataset_meta.get("classes") is not None:
        return "meta.dataset_meta", dataset_meta.get("classes"), dataset_meta.get("palette")
    if meta.get("CLASSES") is not None:  # mmseg 0.x / mmcv checkpoints
        return "meta.CLASSES", meta.get("CLASSES"), meta.get("PALETTE")
    if meta.get("classes") is not None:  # a dataset_meta passed directly
        return "meta.classes", meta.get("classes"), meta.get("palette")
    return None


def _classes_from_meta(
    where: str, raw_names: Any, raw_palette: Any, num_classes: int | None, key: str | None, notes: list[str]
) -> Classes | None:
    """Rule 1 of :func:`classes_for`: the checkpoint's own names (``where`` says which meta key held
    them) with their palette, else the matching dataset's, else a generated one. None when the names
    are unusable; the reason is appended to ``notes`` for the source sentence of a later rule."""
    names = _names(raw_names)
    if names is None:
        notes.append(f"the checkpoint's {where} is not a list of names")
        return None
    if num_classes is not None and len(names) != num_classes:
        notes.append(f"the checkpoint's {where} lists {len(names)} names but the model has {num_classes} classes")
        return None
    k = len(names)
    palette = _palette(raw_palette, k)
    match = next((d for d, table in DATASET_CLASSES.items() if tuple(table) == names), None)
    if palette is not None:
        colours = f"palette from {where.replace('CLASSES', 'PALETTE').replace('classes', 'palette')}"
    elif match is not None:
        palette = DATASET_PALETTES[match]
        colours = f"no valid palette there, so {DISPLAY_NAMES[match]}'s ({PALETTE_SOURCES[match]})"
    else:
        palette = generated_palette(k)
        colours = "no valid palette there, so a generated one"
    source = f"{k} class names from the checkpoint's {where}, {colours}"
    if key is not None and match != key:
        source += f" (they are not the {DISPLAY_NAMES[key]} names of --dataset {key}; the checkpoint's own are used)"
    return Classes(names, palette, source + ".")


def _classes_from_count(num_classes: int, notes: list[str]) -> Classes:
    """Rules 3 and 4 of :func:`classes_for`: the dataset with ``num_classes`` classes, else generic
    names and a generated palette; ``notes`` (why the checkpoint's names were not used) lead the
    source sentence."""
    lead = (
        ("; ".join(notes) + ", and no dataset was given, so ")
        if notes
        else "no class names in the checkpoint and no dataset given, so "
    )
    guess = DATASET_BY_NUM_CLASSES.get(num_classes)
    if guess is not None:
        return Classes(
            DATASET_CLASSES[guess],
            DATASET_PALETTES[guess],
            f"{lead}class names of {DISPLAY_NAMES[guess]} inferred from K={num_classes} (palette: "
            f"{PALETTE_SOURCES[guess]}); pass --dataset if the model was trained on another dataset.",
        )
    known = ", ".join(f"{DISPLAY_NAMES[d]} {len(n)}" for d, n in DATASET_CLASSES.items())
    return Classes(
        tuple(f"class {i}" for i in range(num_classes)),
        generated_palette(num_classes),
        f"{lead}generic names 'class 0' ... 'class {num_classes - 1}' and a generated palette: "
        f"K={num_classes} matches no known dataset ({known}); pass --dataset to name them.",
    )


def classes_for(
    dataset: str | None = None, num_classes: int | None = None, meta: Mapping[str, Any] | None = None
) -> Classes:
    """The class names and palette of a model, in this order of preference.

    1. ``meta``'s own list (an official checkpoint's ``meta.dataset_meta = {"classes": (...),
       "palette": [[r, g, b], ...]}``, or mmseg 0.x ``CLASSES``/``PALETTE``), when it has
       ``num_classes`` names; its palette when valid, else the named dataset's (or a generated) one;
    2. the tables of ``dataset`` (ade20k, cityscapes, coco-stuff, pascal-context);
    3. inferred from ``num_classes``: 150 ADE20K, 19 Cityscapes, 171 COCO-Stuff, 59 Pascal-Context;
    4. generic names ``class 0`` ... ``class K-1`` with a generated palette.

    Args:
        dataset: a dataset name (``--dataset``), or None.
        num_classes: K of the model; None only when ``meta`` or ``dataset`` decides it.
        meta: the checkpoint's ``meta`` dict (may hold placeholders and numpy values), or None.

    Returns:
        :class:`Classes` (names (K,), palette (K, 3) ints, source sentence). The sentence says which
        rule applied and why earlier ones did not; print it.

    Raises:
        ConfigError: unknown ``dataset``; ``dataset`` with another number of classes than
            ``num_classes``; nothing to decide K from.
    """
    notes: list[str] = []
    key = dataset_key(dataset) if dataset else None
    if key is not None and num_classes is not None and len(DATASET_CLASSES[key]) != num_classes:
        raise ConfigError(
            f"Dataset {key!r} has {len(DATASET_CLASSES[key])} classes but the model has {num_classes}; "
            "pass the dataset the checkpoint was trained on."
        )
    found = _meta_classes(meta) if isinstance(meta, Mapping) else None
    if found is not None:
        chosen = _classes_from_meta(*found, num_classes, key, notes)
        if chosen is not None:
            return chosen
    if key is not None:
        lead = "; ".join(notes) + ", so " if notes else ""
        return Classes(
            DATASET_CLASSES[key],
            DATASET_PALETTES[key],
            f"{lead}class names of {DISPLAY_NAMES[key]} (dataset {key!r} given; palette: {PALETTE_SOURCES[key]}).",
        )
    if num_classes is None:
        raise ConfigError("Cannot choose class names: give the dataset or the number of classes.")
    return _classes_from_count(num_classes, notes)
