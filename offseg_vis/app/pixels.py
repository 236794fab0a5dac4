"""One image's linked pixel <-> embedding view: the 2-D map fitted once, and what a click reads from it.

:func:`fit_image_map` places E and E′ of the image's feature cells in ONE 2-D map (every cell, or every
``stride``-th row and column when the image has more cells than the method's point budget), with W and
W′ centred over the classes (:func:`~offseg_vis.analysis.embedding.fit_joint_umap`). A click never
refits: :func:`pixel_report` finds the clicked cell (:func:`~offseg_vis.analysis.explore.pixel_cell`),
its map point, its 20 cosine nearest neighbours among the map's cells in E and in E′ separately
(:func:`~offseg_vis.analysis.explore.nearest_pixels`), and its class scores before the offsets (the
ablation), after them, and from the per-pixel twin, plus its position attention over classes.
No gradio here: the callbacks turn these into components.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from offseg_vis.analysis.embedding import (
    JointEmbedding,
    PixelFeatures,
    PixelSample,
    fit_joint_umap,
    gather_pixel_features,
)
from offseg_vis.analysis.explore import Neighbours, cell_to_pixel, nearest_pixels, pixel_cell
from offseg_vis.analysis.probe import IGNORE_INDEX, ImageProbe
from offseg_vis.errors import InputError

NEIGHBOURS = 20
TOP_K = 5


@dataclass
class ImageMap:
    """The joint 2-D map of one image's E and E′ (fitted once per image).

    Attributes:
        grid_rows, grid_cols: the feature-grid rows (a,) and columns (b,) in the map; the map's points are
            their product in row-major order (point j = row ``j // b``, column ``j % b``).
        stride: 1 when every cell is in the map.
        x, y: (n,) each point's centre pixel in image coordinates, n = a * b.
        pixels: what the map was fitted on: ``sample`` (the points' cells ``rows``, ``cols`` (n,) and the
            model's class there, ``classes`` (n,)), ``before`` (n, C) E and ``after`` (n, C) E′, or None for
            a per-pixel model.
        embedding: the fit: ``before`` (n, 2), ``after`` (n, 2) or None, ``class_embed`` (K, 2) W and
            ``refined_class_embed`` (1, K, 2) W′, both centred over the classes before placing.
        label: (n,) the ground truth at (y, x), or None.
        why: a sentence on the method.
    """

    grid_rows: np.ndarray
    grid_cols: np.ndarray
    stride: int
    x: np.ndarray
    y: np.ndarray
    pixels: PixelFeatures
    embedding: JointEmbedding
    label: np.ndarray | None
    why: str

    def __len__(self) -> int:
        return len(self.pixels.sample)

    @property
    def method(self) -> str:
        return self.embedding.method

    @property
    def seconds(self) -> float:
        """Wall time of the fit."""
        return self.embedding.fit_seconds

    @property
    def predicted(self) -> np.ndarray:
        """(n,) the model's class at each point's pixel (the classes the points were sampled with)."""
        return self.pixels.sample.classes

    def point_of(self, row: int, col: int) -> int:
        """The map point of feature cell (row, col): the cell itself, or the nearest map cell for stride > 1."""
        i = int(np.abs(self.grid_rows - row).argmin())
        j = int(np.abs(self.grid_cols - col).argmin())
        return i * self.grid_cols.size + j

    def correct(self) -> np.ndarray | None:
        """(n,) bool predicted == label, or None without a ground truth (unlabelled pixels count as wrong
        here and are told apart by :meth:`correct_words`)."""
        return None if self.label is None else self.predicted == self.label

    def correct_words(self) -> np.ndarray:
        """(n,) "yes" / "no" / "unlabelled" / "unknown (no ground truth)" for hover text."""
        if self.label is None:
            return np.full(len(self), "unknown (no ground truth)", dtype=object)
        out = np.where(self.predicted == self.label, "yes", "no").astype(object)
        out[self.label == IGNORE_INDEX] = "unlabelled"
        return out


def map_stride(feature_size: tuple[int, int], max_cells: int) -> int:
    """The smallest stride s with ⌈h/s⌉·⌈w/s⌉ <= max_cells (1 = every cell)."""
    h, w = feature_size
    s = max(1, math.ceil(math.sqrt(h * w / max(max_cells, 1))))
    while math.ceil(h / s) * math.ceil(w / s) > max_cells:
        s += 1
    return s


def fit_image_map(
    p: ImageProbe, method: str, max_points: int, why: str = "", n_epochs: int | None = None, seed: int = 0
) -> ImageMap:
    """Fit the joint map of one image's cells (see the module docstring).

    Args:
        p: a probe with ``features`` and ``class_embed`` (and ``refined_features``, ``refined_class_embed``
            for an offset model).
        method: "umap" or "pca"; max_points: points the fit may use (E and E′ each count).
        why: the sentence saying why this method was chosen (kept for the page).
    """
    p.require("features", "class_embed")
    per_cell = 2 if p.is_offset_model else 1
    stride = map_stride(p.feature_size, max_points // per_cell)
    h, w = p.feature_size
    grid_rows = np.arange(stride // 2, h, stride, dtype=np.int64)
    grid_cols = np.arange(stride // 2, w, stride, dtype=np.int64)
    rows = np.repeat(grid_rows, grid_cols.size)  # row-major product (a*b,)
    cols = np.tile(grid_cols, grid_rows.size)
    x, y = cell_to_pixel(rows, cols, p.feature_size, p.padded_size, p.input_size)
    predicted = p.prediction[y, x]
    sample = PixelSample(
        image_index=np.zeros(rows.size, np.int64), rows=rows, cols=cols, classes=predicted, label_source="prediction"
    )
    pixels = gather_pixel_features([p], sample)
    emb = fit_joint_umap(pixels, seed=seed, method=method, n_epochs=n_epochs, n_arrows=0)
    label = None if p.label is None else p.label[y, x]
    return ImageMap(grid_rows, grid_cols, stride, x, y, pixels, emb, label, why)


@dataclass
class Scores:
    """One model's class scores at one feature cell.

    Attributes:
        model: who scored ("Offset Learning", "before the offsets (ablation)", "per-pixel twin").
        scores: (K,) the classifier's logits at the cell; probabilities: (K,) their softmax.
        predicted: the class id at the clicked pixel: argmax of the logits upsampled to the image, i.e. the
            segmentation's (``prediction``, or ``prediction_before_offsets`` for the ablation). At object
            borders it can differ from the argmax of the cell's own scores.
    """

    model: str
    scores: np.ndarray
    probabilities: np.ndarray
    predicted: int

    def top(self, k: int = TOP_K) -> list[int]:
        """The k best classes, best first (ties: lower id first)."""
        order = np.lexsort((np.arange(self.scores.size), -self.scores))
        return [int(c) for c in order[:k]]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def cell_scores(p: ImageProbe, row: int, col: int, x: int, y: int, name: str, before_offsets: bool = False) -> Scores:
    """The scores of ``p`` at cell (row, col) (``logits`` or ``logits_without_offsets``), with the class the
    model predicts at pixel (x, y)."""
    field, pred = (
        ("logits_without_offsets", p.prediction_before_offsets) if before_offsets else ("logits", p.prediction)
    )
    p.require(field)
    logits = np.asarray(getattr(p, field)[:, row, col], dtype=np.float64)  # (K,)
    return Scores(name, logits, _softmax(logits), int(pred[y, x]))


@dataclass
class PixelReport:
    """What one click shows.

    Attributes:
        x, y: the clicked pixel; row, col: its feature cell; point: its map point (the snapped cell when the
            map uses a stride); neighbours: {"E": Neighbours, "E'": Neighbours} over the map's points.
        scores: the chosen model's :class:`Scores`; ablation: scores with ΔW = ΔE = 0 (offset models);
        twin: the twin's scores, or None; position_attention: (K,) softmax over classes of E·Wᵀ at the
            cell (offset models), or None; label: ground-truth class at (y, x), or None.
    """

    x: int
    y: int
    row: int
    col: int
    point: int
    neighbours: dict[str, Neighbours]
    scores: Scores
    ablation: Scores | None
    twin: Scores | None
    position_attention: np.ndarray | None
    label: int | None


def pixel_report(
    p: ImageProbe,
    image_map: ImageMap | None,
    x: int,
    y: int,
    twin: ImageProbe | None = None,
    names: tuple[str, str] = ("Offset Learning", "per-pixel twin"),
    k: int = NEIGHBOURS,
) -> PixelReport:
    """Everything about pixel (x, y) of probe ``p`` (a probe with logits; E/E′ when ``image_map`` is given).

    Raises:
        InputError: (x, y) outside the image.
    """
    row, col = pixel_cell(p, x, y)
    point, found = -1, {}
    if image_map is not None:
        point = image_map.point_of(row, col)
        found["E"] = nearest_pixels(image_map.pixels.before, point, k)
        if image_map.pixels.after is not None:
            found["E'"] = nearest_pixels(image_map.pixels.after, point, k)
    scores = cell_scores(p, row, col, x, y, names[0])
    ablation = attention = None
    if p.is_offset_model:
        ablation = cell_scores(p, row, col, x, y, "before the offsets (ablation)", before_offsets=True)
        p.require("position_attention")
        attention = np.asarray(p.position_attention[row, col], dtype=np.float64)  # (K,)
    twin_scores = None if twin is None else cell_scores(twin, row, col, x, y, names[1])
    label = None if p.label is None else int(p.label[y, x])
    return PixelReport(int(x), int(y), row, col, point, found, scores, ablation, twin_scores, attention, label)


def check_click(p: ImageProbe, x, y) -> tuple[int, int]:
    """(x, y) as ints inside the image, or a sentence."""
    try:
        xi, yi = int(round(float(x))), int(round(float(y)))
    except (TypeError, ValueError):
        raise InputError(f"A pixel needs numeric x and y, got x={x!r}, y={y!r}.") from None
    pixel_cell(p, xi, yi)  # raises the outside-the-image sentence
    return xi, yi


# ----------------------------------------------------------------------------------------------------
# what the plots show (pandas frames for gradio's native plots)

OTHER = "other classes"
MARK_COLOURS = {
    OTHER: "#d9d9d9",
    "W (class embeddings)": "#6a3d9a",
    "W′ (after ΔW)": "#6a3d9a",
    "nearest 20 in E": "#00b4e6",
    "nearest 20 in E′": "#ff8c00",
    "arrow E → E′": "#e6007e",
    "clicked pixel: E": "#e6007e",
    "clicked pixel: E′": "#e6007e",
}
ARROW_DOTS = 12
RING_DOTS = 8  # a clicked point is drawn as its dot plus a ring of dots (the native plot has no size channel)
RING_RADIUS = 0.02  # of the map's larger span
DARK_AS = "#8c8c8c"  # near-black class colours are drawn gray in the maps, so black-ish marks stay visible
MAP_COLUMNS = ("u", "v", "kind", "class", "predicted", "pixel", "correct")
SPACE_LABEL = {"E": "E", "E'": "E′"}


def map_colours(class_names, palette: np.ndarray) -> dict[str, str]:
    """Colour of every category the maps use: the classes' palette colours (near-black ones drawn gray, so
    the markers stand out), then the markers'."""
    colours = {}
    for i, name in enumerate(class_names):
        rgb = [int(v) for v in palette[i][:3]]
        colours[str(name)] = DARK_AS if max(rgb) < 48 else "#{:02x}{:02x}{:02x}".format(*rgb)
    return {**colours, **MARK_COLOURS}


def map_frame(
    image_map: ImageMap,
    space: str,
    class_names,
    report: PixelReport | None = None,
    chosen: int | None = None,
):
    """The points of one map ("E" or "E'") and its markers as a DataFrame with ``MAP_COLUMNS``.

    Points are coloured (``kind``) by their ground-truth class (the prediction without one); with a
    ``chosen`` class the others turn gray. Markers come last (drawn on top): W (E map) or W′ (E′ map) —
    only W_k / W′_k of the chosen class when there is one —, and for a clicked pixel its 20 neighbours in
    this space, its E and E′ (each a dot in a ring of dots) and the arrow between them (dots from E to E′).
    """
    import pandas as pd  # gradio's native plots take pandas frames (a gradio dependency)

    if space not in SPACE_LABEL or (space == "E'" and image_map.embedding.after is None):
        raise InputError(f"There is no {space} map for this model.")
    coords = image_map.embedding.before if space == "E" else image_map.embedding.after  # (n, 2)
    names = np.asarray(class_names, dtype=object)
    shown = image_map.predicted.copy() if image_map.label is None else image_map.label.copy()
    unlabelled = shown == IGNORE_INDEX
    shown[unlabelled] = image_map.predicted[unlabelled]
    kind = names[shown]
    if chosen is not None:
        kind = np.where(shown == chosen, kind, OTHER)
    pixel = [f"({a}, {b})" for a, b in zip(image_map.x.tolist(), image_map.y.tolist())]
    truth = np.full(len(image_map), "—", dtype=object) if image_map.label is None else names[shown]
    base = pd.DataFrame(
        {
            "u": coords[:, 0],
            "v": coords[:, 1],
            "kind": kind,
            "class": truth,
            "predicted": names[image_map.predicted],
            "pixel": pixel,
            "correct": image_map.correct_words(),
        }
    )
    marks = _markers(image_map, space, names, report, chosen)
    return pd.concat([base, pd.DataFrame(marks, columns=list(MAP_COLUMNS))], ignore_index=True)


def _markers(image_map: ImageMap, space: str, names: np.ndarray, report: PixelReport | None, chosen: int | None):
    """Marker rows [u, v, kind, class, predicted, pixel, correct] of one map."""
    emb = image_map.embedding
    rows: list[list] = []
    if space == "E":
        w, kind = emb.class_embed, "W (class embeddings)"
    else:
        w, kind = emb.refined_class_embed[0], "W′ (after ΔW)"
    classes = range(len(names)) if chosen is None else [chosen]
    rows += [[float(w[k, 0]), float(w[k, 1]), kind, names[k], "", "", ""] for k in classes]
    if report is None or report.point < 0:
        return rows
    coords = emb.before if space == "E" else emb.after
    found = report.neighbours.get(space)
    if found is not None:
        label = f"nearest {found.flat.size} in {SPACE_LABEL[space]}"
        for j, sim in zip(found.flat, found.similarity):
            rows.append(_point_row(image_map, names, coords, int(j), label, f"cosine {sim:.3f}"))
    j = report.point
    start = emb.before[j]
    if emb.after is not None:
        end = emb.after[j]
        for t in np.linspace(0.0, 1.0, ARROW_DOTS + 2)[1:-1]:
            u, v = (1 - t) * start + t * end
            rows.append([float(u), float(v), "arrow E → E′", "", "", "", ""])
        rows += _ring(_point_row(image_map, names, emb.after, j, "clicked pixel: E′", ""), image_map)
    rows += _ring(_point_row(image_map, names, emb.before, j, "clicked pixel: E", ""), image_map)
    return rows


def _ring(row: list, image_map: ImageMap) -> list[list]:
    """A point's row followed by ``RING_DOTS`` copies on a small circle around it (a bigger marker)."""
    x_lim, y_lim = map_limits(image_map, pad=0.0)
    radius = RING_RADIUS * max(x_lim[1] - x_lim[0], y_lim[1] - y_lim[0])
    angles = np.linspace(0.0, 2 * np.pi, RING_DOTS, endpoint=False)
    return [row] + [[row[0] + radius * np.cos(a), row[1] + radius * np.sin(a), *row[2:]] for a in angles]


def _point_row(image_map: ImageMap, names, coords, j: int, kind: str, note: str) -> list:
    truth = "—" if image_map.label is None or image_map.label[j] == IGNORE_INDEX else names[image_map.label[j]]
    pixel = f"({image_map.x[j]}, {image_map.y[j]})" + (f" {note}" if note else "")
    correct = image_map.correct_words()[j]
    return [float(coords[j, 0]), float(coords[j, 1]), kind, truth, names[image_map.predicted[j]], pixel, correct]


def map_limits(image_map: ImageMap, pad: float = 0.05) -> tuple[list[float], list[float]]:
    """Shared x and y limits of both maps and the class markers (so E and E′ are drawn in one frame)."""
    emb = image_map.embedding
    parts = [emb.before, emb.class_embed]
    if emb.after is not None:
        parts += [emb.after, emb.refined_class_embed.reshape(-1, 2)]
    allxy = np.concatenate(parts)
    lo, hi = allxy.min(0), allxy.max(0)
    span = np.maximum(hi - lo, 1e-9)
    lo, hi = lo - pad * span, hi + pad * span
    return [float(lo[0]), float(hi[0])], [float(lo[1]), float(hi[1])]


def zoom_limits(frames, x_range) -> tuple[list[float], list[float]]:
    """The y range of the points of ``frames`` whose u lies in ``x_range`` (a brushed interval), padded."""
    lo, hi = sorted(float(v) for v in x_range)
    vs = np.concatenate([f["v"].to_numpy()[(f["u"].to_numpy() >= lo) & (f["u"].to_numpy() <= hi)] for f in frames])
    if vs.size == 0:
        raise InputError("No point lies in the selected range; drag over some points to zoom.")
    pad = 0.05 * max(float(vs.max() - vs.min()), 1e-9)
    return [lo, hi], [float(vs.min() - pad), float(vs.max() + pad)]


def score_frame(report: PixelReport, class_names, max_classes: int = 12):
    """Rows (class, score, series) of the dot chart: the scores after the offsets, before them (ablation)
    and the twin's, for the ``max_classes`` best classes after the offsets."""
    import pandas as pd

    classes = report.scores.top(max_classes)
    rows = []
    for s in (report.scores, report.ablation, report.twin):
        if s is not None:
            rows += [[class_names[c], float(s.scores[c]), s.model] for c in classes]
    return pd.DataFrame(rows, columns=["class", "score", "series"])


def attention_frame(report: PixelReport, class_names, max_classes: int = 12):
    """Rows (class, attention) of the position attention (softmax over classes of E·Wᵀ at the cell), best
    first; empty for a per-pixel model."""
    import pandas as pd

    if report.position_attention is None:
        return pd.DataFrame({"class": [], "attention": []})
    att = report.position_attention
    order = np.lexsort((np.arange(att.size), -att))[:max_classes]
    return pd.DataFrame({"class": [class_names[c] for c in order], "attention": att[order]})
