"""Linked pixel <-> embedding exploration: plain functions behind the notebook's widgets and the app.

One row of a :class:`PixelTable` is one pixel of one image: the feature-grid cell the sampler drew
(``row``, ``col``) and the image pixel at that cell's centre (``x``, ``y``), with its ground truth,
the Offset Learning prediction, whether that is right, and — when the per-pixel twin was probed on the
same images — the twin's prediction and the fixed / broken / both right / both wrong outcome
(:mod:`offseg_vis.analysis.compare`). A :class:`PixelMap` places every row twice in ONE 2-D map, once
by its E and once by its E′ (one fit on the stacked features, :func:`~offseg_vis.analysis.embedding.
fit_joint_umap`), so switching or animating between E and E′ is a swap of two (n, 2) arrays.

Nothing here draws or holds a widget: the notebook's callbacks (and the app) call these functions,
and the tests call them without a browser.

Coordinates. The classifier's grid (h, w) covers the padded canvas (Hp, Wp) the backbone saw; cell
(r, c) covers canvas rows [r·Hp/h, (r+1)·Hp/h) and its centre pixel is y = ⌊(r + ½)·Hp/h⌋ (x alike),
clipped into the real image (H, W). The inverse, image pixel -> cell, is r = ⌊y·h/Hp⌋ — the rule
:func:`~offseg_vis.analysis.probe.label_at_features` uses — so ``pixel_to_cell(cell_to_pixel(r, c))``
gives (r, c) back for every cell whose centre lies in the image.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from offseg_vis.analysis.compare import (
    BOTH_RIGHT,
    BOTH_WRONG,
    BROKEN,
    FIXED,
    OUTCOME_COLORS,
    compare_to_baseline,
)
from offseg_vis.analysis.embedding import (
    JointEmbedding,
    PixelSample,
    embed_pixels,
    fit_joint_umap,
    gather_pixel_features,
    sample_pixels,
)
from offseg_vis.analysis.probe import IGNORE_INDEX, ImageProbe
from offseg_vis.errors import InputError

# Short outcome names for tables, legends and hover text (the compare module's codes).
OUTCOME_NAMES = {FIXED: "fixed", BROKEN: "broken", BOTH_WRONG: "both wrong", BOTH_RIGHT: "both right"}
COLOUR_BY = ("class", "correct", "twin")
CORRECT_COLOURS = {"correct": "#3a923a", "wrong": "#d62728"}
SPACES = ("E", "E'")


# ----------------------------------------------------------------------------------------------------
# pixel <-> feature cell


def cell_to_pixel(
    row: np.ndarray | int,
    col: np.ndarray | int,
    feature_size: tuple[int, int],
    padded_size: tuple[int, int],
    input_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Feature cell (row, col) -> its centre pixel (x, y) in image coordinates (module docstring).

    Args:
        row, col: cell indices (scalars or (n,) arrays) on the (h, w) grid.
        feature_size: (h, w); padded_size: (Hp, Wp); input_size: (H, W).

    Returns:
        (x, y) int64 arrays of the shape of ``row``, clipped into the image.
    """
    h, w = feature_size
    hp, wp = padded_size
    row, col = np.asarray(row, dtype=np.int64), np.asarray(col, dtype=np.int64)
    y = (2 * row + 1) * hp // (2 * h)  # ⌊(r + ½)·Hp/h⌋ in integers
    x = (2 * col + 1) * wp // (2 * w)
    return np.minimum(x, input_size[1] - 1), np.minimum(y, input_size[0] - 1)


def pixel_to_cell(
    x: np.ndarray | int, y: np.ndarray | int, feature_size: tuple[int, int], padded_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Image pixel (x, y) -> the feature cell (row, col) it falls in (int64 arrays)."""
    h, w = feature_size
    hp, wp = padded_size
    return np.asarray(y, dtype=np.int64) * h // hp, np.asarray(x, dtype=np.int64) * w // wp


def pixel_cell(p: ImageProbe, x: int, y: int) -> tuple[int, int]:
    """The feature cell (row, col) under image pixel (x, y) of probe ``p``; a sentence when (x, y) lies
    outside the image (the app's click handler calls this)."""
    height, width = p.input_size
    if not (0 <= int(x) < width and 0 <= int(y) < height):
        raise InputError(
            f"Pixel (x={x}, y={y}) is outside the image, which is {width} wide and {height} high; "
            "click inside the image."
        )
    r, c = pixel_to_cell(int(x), int(y), p.feature_size, p.padded_size)
    return int(r), int(c)


# ----------------------------------------------------------------------------------------------------
# the pixel table


@dataclass
class PixelTable:
    """A stratified sample of pixels of N images, one row per pixel (all columns are (n,) arrays).

    Attributes:
        image: index of the image in the probe list.
        x, y: the pixel in image coordinates (the centre of its feature cell).
        row, col: its feature cell on the classifier grid (where E and E′ are read).
        label: ground-truth class at (y, x).
        predicted: the Offset Learning model's class at (y, x) (argmax of its upsampled logits, i.e.
            ``probe.prediction[y, x]``).
        correct: predicted == label.
        twin_predicted: the per-pixel twin's class at (y, x), or None without a twin.
        outcome: compare codes (FIXED, BROKEN, BOTH_WRONG, BOTH_RIGHT) at (y, x), or None.
        sample_index: each row's index in ``sample`` (rows whose centre pixel is unlabelled are dropped).
        sample: what :func:`~offseg_vis.analysis.embedding.sample_pixels` drew (before that drop).
        class_names: K names.
        image_shapes: (H, W) of every image.
        max_pixels, seed: the sampler's parameters (the map is fitted on the same draw).
        dropped: sampled cells left out because their centre pixel is unlabelled.
    """

    image: np.ndarray
    x: np.ndarray
    y: np.ndarray
    row: np.ndarray
    col: np.ndarray
    label: np.ndarray
    predicted: np.ndarray
    correct: np.ndarray
    twin_predicted: np.ndarray | None
    outcome: np.ndarray | None
    sample_index: np.ndarray
    sample: PixelSample
    class_names: list[str]
    image_shapes: list[tuple[int, int]]
    max_pixels: int
    seed: int
    dropped: int = 0

    def __len__(self) -> int:
        return int(self.image.size)

    @property
    def has_twin(self) -> bool:
        return self.outcome is not None

    def columns(self) -> dict[str, np.ndarray]:
        """Named columns for a data frame or a TSV: image, x, y, row, col, class, class_name, predicted,
        predicted_name, correct, and with a twin twin_predicted, twin_name and outcome (a name)."""
        names = np.asarray(self.class_names, dtype=object)
        cols = {
            "image": self.image,
            "x": self.x,
            "y": self.y,
            "row": self.row,
            "col": self.col,
            "class": self.label,
            "class_name": names[self.label],
            "predicted": self.predicted,
            "predicted_name": names[self.predicted],
            "correct": self.correct,
        }
        if self.has_twin:
            cols["twin_predicted"] = self.twin_predicted
            cols["twin_name"] = names[self.twin_predicted]
            cols["outcome"] = outcome_names(self.outcome)
        return cols

    def to_pandas(self):
        """The columns as a pandas DataFrame (pandas comes with the notebooks extra)."""
        import pandas as pd  # optional: only the notebook builds a data frame

        return pd.DataFrame(self.columns())

    def describe(self) -> str:
        """One sentence: points, images, accuracy, and the twin's outcome counts."""
        n = len(self)
        text = (
            f"{n:,} pixels of {len(self.image_shapes)} image(s) (stratified by class, seed {self.seed}; "
            f"{self.dropped} sampled cell(s) with an unlabelled centre left out); "
            f"{100 * self.correct.mean():.1f} % predicted right"
        )
        if self.has_twin:
            counts = {name: int((self.outcome == code).sum()) for code, name in OUTCOME_NAMES.items()}
            text += "; vs the twin: " + ", ".join(f"{v:,} {k}" for k, v in counts.items())
        return text + "."


def outcome_names(codes: np.ndarray) -> np.ndarray:
    """Compare codes (n,) -> names (n,) object array ("fixed", "broken", "both wrong", "both right")."""
    lookup = np.full(256, "ignored", dtype=object)
    for code, name in OUTCOME_NAMES.items():
        lookup[code] = name
    return lookup[np.asarray(codes, dtype=np.uint8)]


def _check_probes(probes: Sequence[ImageProbe], what: str) -> list[ImageProbe]:
    probes = list(probes)
    if not probes:
        raise InputError(f"{what} needs at least one probe.")
    missing = [i for i, p in enumerate(probes) if p.label is None]
    if missing:
        raise InputError(
            f"Image(s) {missing[:5]} have no ground truth; pass labels to probe() (the table's class and "
            "correct columns need them)."
        )
    return probes


def pixel_table(
    probes: Sequence[ImageProbe],
    max_pixels: int = 25_000,
    twin_probes: Sequence[ImageProbe] | None = None,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    ignore_index: int = IGNORE_INDEX,
) -> PixelTable:
    """Sample pixels of N probed images (stratified by class) and tabulate what each one is.

    Args:
        probes: probes of an Offset Learning (or per-pixel) model with labels, e.g.
            ``probe(model, images, labels, need={"features", "refined_features"})``.
        max_pixels: rows to draw; every class gets an equal share
            (:func:`~offseg_vis.analysis.embedding.sample_pixels`, stratified on the labels at feature
            resolution).
        twin_probes: the per-pixel twin's probes of the same images (same order), for the twin columns;
            ``need={"prediction"}`` is enough.
        class_names: K names (default "class k").
        seed: the sampler's seed.

    Returns:
        a :class:`PixelTable`.
    """
    probes = _check_probes(probes, "pixel_table")
    if max_pixels < 1:
        raise InputError(f"max_pixels must be at least 1, got {max_pixels}.")
    k = probes[0].num_classes
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(k)]
    if len(names) != k:
        raise InputError(f"Got {len(names)} class names for a model with {k} classes.")
    sample = sample_pixels(probes, max_pixels, seed=seed, label_source="label", ignore_index=ignore_index)
    n = len(sample)
    x, y = np.zeros(n, np.int64), np.zeros(n, np.int64)
    label, predicted = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for i, p in enumerate(probes):
        sel = np.flatnonzero(sample.image_index == i)
        xi, yi = cell_to_pixel(sample.rows[sel], sample.cols[sel], p.feature_size, p.padded_size, p.input_size)
        x[sel], y[sel] = xi, yi
        label[sel], predicted[sel] = p.label[yi, xi], p.prediction[yi, xi]
    twin_pred = outcome = None
    if twin_probes is not None:
        comparison = compare_to_baseline(probes, twin_probes, names, ignore_index)  # checks same images
        twin_pred, outcome = np.zeros(n, np.int64), np.zeros(n, np.uint8)
        for i, tp in enumerate(twin_probes):
            sel = np.flatnonzero(sample.image_index == i)
            twin_pred[sel] = tp.prediction[y[sel], x[sel]]
            outcome[sel] = comparison.codes[i][y[sel], x[sel]]
    # A cell labelled by majority can have an unlabelled centre pixel (object borders): such rows have no
    # ground truth at (x, y), so they leave the table (and the map takes the same rows).
    keep = (label != ignore_index) & (label >= 0) & (label < k)
    idx = np.flatnonzero(keep)
    return PixelTable(
        image=sample.image_index[idx],
        x=x[idx],
        y=y[idx],
        row=sample.rows[idx],
        col=sample.cols[idx],
        label=label[idx],
        predicted=predicted[idx],
        correct=predicted[idx] == label[idx],
        twin_predicted=None if twin_pred is None else twin_pred[idx],
        outcome=None if outcome is None else outcome[idx],
        sample_index=idx.astype(np.int64),
        sample=sample,
        class_names=names,
        image_shapes=[tuple(int(s) for s in p.input_size) for p in probes],
        max_pixels=int(max_pixels),
        seed=int(seed),
        dropped=int(n - idx.size),
    )


# ----------------------------------------------------------------------------------------------------
# one map for E and E′


@dataclass
class PixelMap:
    """E and E′ of every table row in one 2-D map (one fit), plus W and each image's W′.

    Attributes:
        before: (n, 2) the rows' E; after: (n, 2) their E′ (None for a per-pixel model).
        embedding: the :class:`~offseg_vis.analysis.embedding.JointEmbedding` of the single fit (its
            ``class_embed`` (K, 2) places W, ``refined_class_embed`` (I, K, 2) each image's W′).
        method: "umap" or "pca".
    """

    before: np.ndarray
    after: np.ndarray | None
    embedding: JointEmbedding
    method: str
    extras: dict = field(default_factory=dict)

    def coords(self, space: str = "E") -> np.ndarray:
        """(n, 2) coordinates of the rows in ``space`` ("E" or "E'")."""
        if space not in SPACES:
            raise InputError(f"space must be one of {SPACES}, got {space!r}.")
        if space == "E'":
            if self.after is None:
                raise InputError("This map has no E′: the model is per-pixel (no feature offsets).")
            return self.after
        return self.before

    def between(self, t: float) -> np.ndarray:
        """(n, 2) coordinates a fraction ``t`` of the way from E (t=0) to E′ (t=1): animation frames."""
        return (1.0 - t) * self.before + t * self.coords("E'")

    def describe(self) -> str:
        e = self.embedding
        return (
            f"one {self.method.upper()} map fitted on {e.params.get('points', 0):,} points (E and E′ stacked) "
            f"in {e.fit_seconds:.1f} s{' (loaded from the cache)' if e.from_cache else ''}"
        )


def pixel_map(
    probes: Sequence[ImageProbe],
    table: PixelTable,
    method: str = "umap",
    cache_dir: str | Path | None = None,
    model_key: str | None = None,
    data_key: str | None = None,
    **options,
) -> PixelMap:
    """Fit ONE map on the table's E and E′ together and return both coordinate sets.

    Reuses :func:`~offseg_vis.analysis.embedding.embed_pixels` (its ``.npz`` cache) on the very draw the
    table was built from, so rows and points correspond one to one.

    Args:
        probes: the probes the table came from (with ``features``, and ``refined_features`` for an
            offset model; ``class_embed`` / ``refined_class_embed`` place W and W′).
        table: from :func:`pixel_table`.
        method: "umap" or "pca" (fast).
        cache_dir, model_key, data_key: see ``embed_pixels``; None disables the cache.
        options: other :class:`~offseg_vis.analysis.embedding.FitOptions` fields (n_epochs, ...).
    """
    probes = list(probes)
    if len(probes) != len(table.image_shapes):
        raise InputError(f"The table was built from {len(table.image_shapes)} probes, got {len(probes)}.")
    for p in probes:
        p.require("features", "class_embed")
        if p.is_offset_model:
            p.require("refined_features", "refined_class_embed")
    if cache_dir is None:
        emb = fit_joint_umap(gather_pixel_features(probes, table.sample), seed=table.seed, method=method, **options)
    else:
        per_point = 2 if probes[0].is_offset_model else 1
        emb = embed_pixels(
            probes,
            max_points=per_point * table.max_pixels,
            seed=table.seed,
            label_source="label",
            cache_dir=cache_dir,
            model_key=model_key,
            data_key=data_key,
            method=method,
            **options,
        )
        if not (
            np.array_equal(emb.classes, table.sample.classes)
            and np.array_equal(emb.image_index, table.sample.image_index)
        ):
            raise InputError("The cached map was drawn from other pixels than the table; clear the cache folder.")
    idx = table.sample_index
    return PixelMap(
        before=emb.before[idx],
        after=None if emb.after is None else emb.after[idx],
        embedding=emb,
        method=emb.method,
    )


# ----------------------------------------------------------------------------------------------------
# colourings


def _hex(rgb) -> str:
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def colour_by(table: PixelTable, by: str, palette: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, str]]:
    """Categories and colours for one colouring of the points.

    Args:
        table: the pixel table.
        by: "class" (ground truth), "correct" (correct / wrong) or "twin" (fixed / broken / both right /
            both wrong against the twin).
        palette: (K, 3) uint8 class colours (default: matplotlib's tab20).

    Returns:
        (labels (n,) object array of category names, {category: "#rrggbb"}) — the ``color_by`` column and
        ``color_map`` of a scatter widget.
    """
    if by == "class":
        names = np.asarray(table.class_names, dtype=object)
        if palette is None:
            from matplotlib import colormaps

            palette = (np.asarray(colormaps["tab20"].colors)[: len(names)] * 255).round()
        palette = np.asarray(palette)
        if len(palette) < len(names):
            raise InputError(f"The palette has {len(palette)} colours for {len(names)} classes.")
        return names[table.label], {str(n): _hex(palette[i]) for i, n in enumerate(names)}
    if by == "correct":
        return np.where(table.correct, "correct", "wrong").astype(object), dict(CORRECT_COLOURS)
    if by == "twin":
        if not table.has_twin:
            raise InputError("Colouring by fixed/broken needs the twin: build the table with twin_probes=.")
        return outcome_names(table.outcome), {OUTCOME_NAMES[c]: _hex(OUTCOME_COLORS[c]) for c in OUTCOME_NAMES}
    raise InputError(f"Colour by one of {COLOUR_BY}, got {by!r}.")


# ----------------------------------------------------------------------------------------------------
# selection -> pixels


def _selected(table: PixelTable, selected_indices) -> np.ndarray:
    sel = np.asarray(selected_indices if selected_indices is not None else [], dtype=np.int64).reshape(-1)
    if sel.size and (sel.min() < 0 or sel.max() >= len(table)):
        raise InputError(f"Selected point indices must lie in 0..{len(table) - 1}; got {sel.min()}..{sel.max()}.")
    return sel


def selection_to_masks(
    table: PixelTable, selected_indices, image_shapes: Sequence[tuple[int, int]] | None = None
) -> list[np.ndarray]:
    """Where the selected points are: one (H, W) bool mask per image, True exactly at each selected row's
    (y, x).

    Args:
        table: the pixel table.
        selected_indices: row indices (a lasso selection), any integer sequence; empty = nothing.
        image_shapes: (H, W) per image (default: the table's).
    """
    shapes = table.image_shapes if image_shapes is None else [tuple(s[:2]) for s in image_shapes]
    if len(shapes) != len(table.image_shapes):
        raise InputError(f"The table covers {len(table.image_shapes)} images, got {len(shapes)} image shapes.")
    sel = _selected(table, selected_indices)
    masks = [np.zeros(s, dtype=bool) for s in shapes]
    for i, mask in enumerate(masks):
        rows = sel[table.image[sel] == i]
        mask[table.y[rows], table.x[rows]] = True
    return masks


def points_in_polygon(coords: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Indices of the (n, 2) points inside a closed (m, 2) polygon: what a lasso selects."""
    from matplotlib.path import Path as PolyPath

    polygon = np.asarray(polygon, dtype=np.float64)
    if polygon.ndim != 2 or polygon.shape[0] < 3 or polygon.shape[1] != 2:
        raise InputError(f"A lasso polygon needs at least 3 (x, y) vertices, got an array of shape {polygon.shape}.")
    return np.flatnonzero(PolyPath(polygon).contains_points(np.asarray(coords, dtype=np.float64)))


def selection_summary(table: PixelTable, selected_indices) -> str:
    """One line about a selection: how many points, in how many images, by class, and correct share."""
    sel = _selected(table, selected_indices)
    if sel.size == 0:
        return "No points selected: lasso a group of points (shift + drag in the map)."
    counts = np.bincount(table.label[sel], minlength=len(table.class_names))
    top = np.argsort(-counts, kind="stable")[:3]
    classes = ", ".join(f"{table.class_names[c]} {counts[c]}" for c in top if counts[c])
    text = (
        f"{sel.size:,} point(s) in {np.unique(table.image[sel]).size} image(s); {classes}; "
        f"{100 * table.correct[sel].mean():.0f} % correct"
    )
    if table.has_twin:
        text += "; " + ", ".join(f"{int((table.outcome[sel] == c).sum())} {name}" for c, name in OUTCOME_NAMES.items())
    return text + "."


def selection_overlay(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    max_images: int = 6,
    cell: int = 4,
    colour: tuple[int, int, int] = (255, 0, 255),
    dim: float = 0.45,
) -> tuple[np.ndarray, list[int]]:
    """The images holding the most selected pixels, side by side, with those pixels marked.

    Each selected pixel is drawn as a ``cell`` x ``cell`` square (one feature cell at stride 4) so a
    sparse sample stays visible; the rest of the image is dimmed.

    Returns:
        (strip (H, W_total, 3) uint8, the image indices shown, in order).
    """
    counts = np.array([int(m.sum()) for m in masks])
    order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0][:max_images]
    if not order:
        order = list(range(min(max_images, len(images))))
    tiles = []
    for i in order:
        img = np.asarray(images[i]).astype(np.float32)
        mark = _dilate(masks[i], cell)
        out = img * (1.0 - dim) if masks[i].any() else img.copy()
        out[mark] = colour
        tiles.append(out.astype(np.uint8))
    height = max(t.shape[0] for t in tiles)
    gap = np.full((height, 4, 3), 255, np.uint8)
    padded = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0)), constant_values=255) for t in tiles]
    strip = np.concatenate([x for t in padded for x in (t, gap)][:-1], axis=1)
    return strip, order


def _dilate(mask: np.ndarray, size: int) -> np.ndarray:
    """Grow every True pixel into a size x size square starting at it (centred for odd sizes)."""
    if size <= 1:
        return mask.copy()
    out = np.zeros_like(mask)
    ys, xs = np.nonzero(mask)
    lo = size // 2
    for dy in range(size):
        for dx in range(size):
            yy, xx = ys + dy - lo, xs + dx - lo
            ok = (yy >= 0) & (yy < mask.shape[0]) & (xx >= 0) & (xx < mask.shape[1])
            out[yy[ok], xx[ok]] = True
    return out


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes (for an ``ipywidgets.Image``)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------
# neighbours in the original feature space


@dataclass
class Neighbours:
    """The k most cosine-similar pixels of one image to a query pixel (the query itself excluded).

    Attributes:
        flat: (k,) flat indices into the image's grid, most similar first.
        rows, cols: (k,) the same as grid cells (for a (h, w, C) input; rows = flat, cols = 0 for (n, C)).
        similarity: (k,) cosine similarities (float64), descending.
        query: the query's flat index.
    """

    flat: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    similarity: np.ndarray
    query: int


def nearest_pixels(features: np.ndarray, index, k: int = 20) -> Neighbours:
    """Cosine nearest neighbours of one pixel among the pixels of the same image, in the ORIGINAL feature
    space (call once with E and once with E′: they are separate spaces).

    Args:
        features: (h, w, C) one image's E (or E′) grid, or (n, C) rows.
        index: the query as a flat index, or (row, col) for a grid.
        k: neighbours to return (at most all other pixels).

    Returns:
        :class:`Neighbours`; ties in similarity go to the lower index. Computed in float64 (a 1024 x 128
        image costs ~1 ms), so the ranking is that of exact cosine similarity.
    """
    feats = np.asarray(features)
    if feats.ndim == 3:
        h, w, c = feats.shape
        flat_feats = feats.reshape(h * w, c)  # (h, w, C) -> (h*w, C)
    elif feats.ndim == 2:
        flat_feats, w = feats, 1
    else:
        raise InputError(f"features must be (h, w, C) or (n, C), got shape {feats.shape}.")
    n = flat_feats.shape[0]
    if isinstance(index, (tuple, list)):
        if feats.ndim != 3 or len(index) != 2:
            raise InputError("A (row, col) query needs an (h, w, C) feature grid.")
        r, c_ = int(index[0]), int(index[1])
        if not (0 <= r < feats.shape[0] and 0 <= c_ < feats.shape[1]):
            raise InputError(f"Cell ({r}, {c_}) is outside the {feats.shape[0]} x {feats.shape[1]} feature grid.")
        q = r * w + c_
    else:
        q = int(index)
        if not 0 <= q < n:
            raise InputError(f"Pixel index {q} is outside 0..{n - 1}.")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}.")
    x = flat_feats.astype(np.float64)
    norms = np.linalg.norm(x, axis=1)
    sims = (x @ x[q]) / np.maximum(norms * norms[q], 1e-300)  # (n,) cosine similarity to the query
    sims[q] = -np.inf  # not its own neighbour
    k = min(k, n - 1)
    order = np.lexsort((np.arange(n), -sims))[:k]  # descending similarity, ties -> lower index
    return Neighbours(
        flat=order.astype(np.int64),
        rows=(order // w).astype(np.int64),
        cols=(order % w).astype(np.int64),
        similarity=sims[order],
        query=q,
    )


# ----------------------------------------------------------------------------------------------------
# what the notebook's widgets (and the app) call


def scatter_frame(table: PixelTable, pixel_map_: PixelMap, palette: np.ndarray | None = None):
    """The data frame a scatter widget plots: the table's columns (``correct`` as "correct"/"wrong"), E
    coordinates ``ex``/``ey``, E′ coordinates ``e2x``/``e2y`` (same map), and one colour column per
    colouring (``by_class``, ``by_correct``, ``by_twin``); row j is table row j, so a selection's indices
    are table rows."""
    if len(pixel_map_.before) != len(table):
        raise InputError(f"The map has {len(pixel_map_.before)} points but the table {len(table)} rows.")
    frame = table.to_pandas()
    # Words, not numpy booleans: the widget's tooltip serialises category values to JSON.
    frame["correct"] = np.where(table.correct, "correct", "wrong")
    frame["ex"], frame["ey"] = pixel_map_.before[:, 0], pixel_map_.before[:, 1]
    if pixel_map_.after is not None:
        frame["e2x"], frame["e2y"] = pixel_map_.after[:, 0], pixel_map_.after[:, 1]
    import pandas as pd  # optional: the notebooks extra

    for by in COLOUR_BY:
        if by == "twin" and not table.has_twin:
            continue
        labels, cmap = colour_by(table, by, palette)
        # Categories in the colour map's order: the widget then numbers them as the map lists them (with
        # plain strings it sorts them alphabetically, and its legend came out permuted).
        frame[f"by_{by}"] = pd.Categorical(labels, categories=list(cmap))
    return frame


@dataclass
class SelectionView:
    """What the image panel shows for a selection: ``png`` (the strip), ``summary`` (one line),
    ``shown`` (image indices in the strip) and ``masks`` (one (H, W) bool mask per image)."""

    png: bytes
    summary: str
    shown: list[int]
    masks: list[np.ndarray]


def _upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement (small scenes stay readable in a widget)."""
    return image if scale <= 1 else np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def selection_view(
    table: PixelTable, images: Sequence[np.ndarray], selected_indices, max_images: int = 6, scale: int = 2
) -> SelectionView:
    """The lasso callback: selected rows -> masks -> the images holding them, marked (enlarged ``scale``
    times), as PNG + a line."""
    masks = selection_to_masks(table, selected_indices, [np.asarray(im).shape[:2] for im in images])
    strip, shown = selection_overlay(images, masks, max_images=max_images)
    return SelectionView(png_bytes(_upscale(strip, scale)), selection_summary(table, selected_indices), shown, masks)


def neighbours_view(
    table: PixelTable, probes: Sequence[ImageProbe], index: int, k: int = 20, scale: int = 2
) -> tuple[bytes, str, dict[str, Neighbours]]:
    """One clicked point: its image twice, with the point (white) and its k cosine nearest pixels of that
    image in E (left, cyan) and in E′ (right, orange) — the two spaces searched separately.

    Returns:
        (PNG bytes, one line, {"E": Neighbours, "E'": Neighbours}).
    """
    j = int(_selected(table, [index])[0])
    p = probes[int(table.image[j])]
    spaces = {"E": p.features}
    if p.is_offset_model:
        spaces["E'"] = p.refined_features
    found, tiles = {}, []
    colours = {"E": (0, 200, 255), "E'": (255, 140, 0)}
    h, w = p.feature_size
    for name, feats in spaces.items():
        if feats is None:
            raise InputError(f"The probes were computed without {name}; probe with need={{'features', ...}}.")
        nn = nearest_pixels(feats, (int(table.row[j]), int(table.col[j])), k)
        found[name] = nn
        x, y = cell_to_pixel(nn.rows, nn.cols, (h, w), p.padded_size, p.input_size)
        mark = np.zeros(p.input_size, dtype=bool)
        mark[y, x] = True
        tile = np.asarray(p.image, np.float32) * 0.55
        tile[_dilate(mark, 4)] = colours[name]
        here = np.zeros(p.input_size, dtype=bool)
        here[table.y[j], table.x[j]] = True
        tile[_dilate(here, 5)] = (255, 255, 255)
        tiles.append(tile.astype(np.uint8))
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    strip = np.concatenate([x for t in tiles for x in (t, gap)][:-1], axis=1)
    same = len(np.intersect1d(found["E"].flat, found["E'"].flat)) if "E'" in found else k
    text = (
        f"point {j}: image {table.image[j]}, pixel (x={table.x[j]}, y={table.y[j]}), "
        f"{table.class_names[table.label[j]]}, predicted {table.class_names[table.predicted[j]]}; "
        f"its {k} nearest pixels in E and in E′ share {same}."
    )
    return png_bytes(_upscale(strip, scale)), text, found


def lasso_box(coords: np.ndarray, members: np.ndarray, spread: float = 0.5) -> np.ndarray:
    """A rectangular lasso (4, 2) around the central ``spread`` fraction of the ``members`` points (a bool
    mask or indices over ``coords`` (n, 2)): a reproducible stand-in for a hand-drawn lasso."""
    pts = np.asarray(coords)[members]
    if len(pts) == 0:
        raise InputError("lasso_box needs at least one member point.")
    lo, hi = np.quantile(pts, [(1 - spread) / 2, (1 + spread) / 2], axis=0)
    return np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])


def snapshot_figure(table: PixelTable, pixel_map_: PixelMap, selected_indices, by: str = "class", palette=None):
    """A static matplotlib figure of the linked view (for executed notebooks and docs): the E and the E′
    map in the same coordinates, coloured ``by``, with the selection ringed in black."""
    import matplotlib.pyplot as plt

    labels, cmap = colour_by(table, by, palette)
    colours = np.array([cmap[str(v)] for v in labels])
    sel = _selected(table, selected_indices)
    spaces = [s for s in SPACES if s == "E" or pixel_map_.after is not None]
    fig, axes = plt.subplots(1, len(spaces), figsize=(5.2 * len(spaces), 4.8), sharex=True, sharey=True)
    axes = np.atleast_1d(axes)
    size = max(0.3, min(6.0, 3e4 / max(len(table), 1)))
    for ax, space in zip(axes, spaces):
        xy = pixel_map_.coords(space)
        ax.scatter(xy[:, 0], xy[:, 1], c=colours, s=size, linewidths=0, rasterized=True)
        if sel.size:
            ax.scatter(xy[sel, 0], xy[sel, 1], facecolors="none", edgecolors="black", s=4 * size + 4, linewidths=0.6)
        ax.set_title(f"{space}: {len(table):,} pixels, {sel.size:,} selected (one {pixel_map_.method.upper()} map)")
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=k) for k, c in cmap.items()]
    axes[-1].legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    plt.close(fig)  # returned for display once (a notebook shows it as the cell's value), not left open
    return fig
