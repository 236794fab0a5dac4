"""The paper's "ideal class representation mining" (spec §5, Fig. 3), measured before and after offsets.

For one image with features E (N, C) at the classifier's grid and its one-hot ground truth M (K, N)
(ignore pixels removed), the class representations that would reproduce the ground truth best in the
least-squares sense are

    W* = M · (Eᵀ)⁺                                   (K, C)   Moore–Penrose pseudo-inverse

Row k of W* is the image's own ideal prototype of class k. The paper's argument: if one fixed W suited
every image, the W*_k of different images would point the same way. This module measures

* the sanity check: mIoU of argmax_k(W*·Eᵀ) against M (how well a per-image linear classifier can fit
  the ground truth at all; the paper reports about 95 % on ADE20K);
* per class, the cross-image cosine-similarity matrix of W*_k (the Fig. 3 heatmaps);
* per class and overall, **consistency** = mean off-diagonal cosine of W*_k across images (1 = one
  prototype fits all) and **alignment** = mean cos(W_k, W*_k) (how well the classifier's prototype, fixed
  W or image-specific W', points at the image's ideal one).

Cosines are taken on class-centred prototypes by default (W_k minus the mean over classes, same for W*):
the shared component changes every class score of a pixel equally, so no classifier can use it (argmax,
softmax and the LayerNorm over classes all remove it), yet it would dominate raw cosines.
``center=False`` gives the paper's literal raw-W* cosines.

``stage="before"`` uses (E, W), ``stage="after"`` uses (E', W') of an Offset Learning model; the linear
baseline only has "before". Pseudo-inverse cut-off: singular values below ``rcond`` × the largest are
treated as zero (default 1e-5: float32 features carry ~7 significant digits, and this keeps noise
directions from dominating W*).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from offseg_vis.analysis.probe import IGNORE_INDEX, ImageProbe, label_probe_at_features
from offseg_vis.analysis.scores import confusion_matrix, iou_from_confusion, mean_iou
from offseg_vis.errors import InputError

DEFAULT_RCOND = 1e-5
STAGES = ("before", "after")


METHODS = ("pinv", "ridge", "class_mean")


def ideal_class_embed(
    features: np.ndarray,
    label: np.ndarray,
    num_classes: int,
    rcond: float = DEFAULT_RCOND,
    ignore_index: int = IGNORE_INDEX,
    method: str = "pinv",
    ridge: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ideal class prototypes W* of one image.

    Args:
        features: E, (N, C) or (h, w, C).
        label: ground truth at the same grid, (N,) or (h, w); ``ignore_index`` pixels are removed.
        num_classes: K.
        rcond: ``method="pinv"``: relative singular-value cut-off of the pseudo-inverse.
        method: "pinv" — W* = M·(Eᵀ)⁺ with singular values below rcond·s_max dropped (the paper's);
            "ridge" — W* = M·E·(EᵀE + λ·s_max²·I)⁻¹ (Tikhonov; λ relative to the largest squared singular
            value, so it does not depend on the features' scale); "class_mean" — W*_k = the mean feature of
            class k's pixels (no knob: the nearest-class-mean prototype).
        ridge: λ of ``method="ridge"``.

    Returns:
        (W* (K, C) float64, prediction (N,) int64): prediction = argmax_k (W*·Eᵀ) for every pixel
        (ignored ones included), the sanity-check segmentation. Rows of absent classes are zero.
    """
    setting = _setting(method, rcond if method == "pinv" else ridge)
    # One BLAS thread: these matrices are small, and multi-threaded BLAS on cores shared with other jobs
    # was measured 100x slower (threads spin-waiting for each other).
    with threadpool_limits(limits=1, user_api="blas"):
        e, lab, valid = _image_arrays(features, label, num_classes, ignore_index)
        (w_star,) = _ideal_for_settings(e, lab, valid, num_classes, [setting])
    return w_star, (e @ w_star.T).argmax(1).astype(np.int64)


def _setting(method: str, value: float | None) -> tuple[str, float | None]:
    if method not in METHODS:
        raise InputError(f"Unknown W* method {method!r}; use one of {', '.join(METHODS)}.")
    if method == "class_mean":
        return (method, None)
    if value is None or not (value >= 0):
        knob = "rcond" if method == "pinv" else "ridge"
        raise InputError(f"W* method {method!r} needs {knob} >= 0, got {value!r}.")
    return (method, float(value))


def _image_arrays(features, label, num_classes, ignore_index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(E (N, C) float64, label (N,), valid (N,) bool)."""
    c = features.shape[-1]
    e = np.asarray(features, dtype=np.float64).reshape(-1, c)  # (N, C)
    lab = np.asarray(label).reshape(-1)
    if lab.shape[0] != e.shape[0]:
        raise InputError(f"Features have {e.shape[0]} pixels but the label has {lab.shape[0]}; they must match.")
    valid = (lab != ignore_index) & (lab >= 0) & (lab < num_classes)
    return e, lab, valid


def _ideal_for_settings(
    e: np.ndarray, lab: np.ndarray, valid: np.ndarray, k: int, settings: Sequence[tuple[str, float | None]]
) -> list[np.ndarray]:
    """W* (K, C) of one image for each (method, value) setting; one SVD serves every pinv/ridge setting."""
    c = e.shape[1]
    if not valid.any():
        return [np.zeros((k, c)) for _ in settings]
    e_valid = e[valid]  # (n, C)
    m = np.eye(k)[lab[valid]].T  # (K, n) one-hot
    svd = None
    out = []
    for method, value in settings:
        if method == "class_mean":
            counts = m.sum(1, keepdims=True)  # (K, 1)
            out.append((m @ e_valid) / np.maximum(counts, 1))  # absent classes stay zero
            continue
        if svd is None:
            # E = U S Vᵀ  =>  (Eᵀ)⁺ = U S⁻¹ Vᵀ, and the ridge solution M E (EᵀE + λI)⁻¹ = M U S/(S² + λ) Vᵀ.
            u, sv, vt = np.linalg.svd(e_valid, full_matrices=False)  # (n, r), (r,), (r, C)
            svd = (m @ u, sv, vt)  # M·U (K, r) is shared by every setting
        mu, sv, vt = svd
        if sv.size == 0 or sv[0] <= 0:
            out.append(np.zeros((k, c)))
        elif method == "pinv":
            keep = sv > value * sv[0]
            out.append((mu[:, keep] / sv[keep]) @ vt[keep])  # (K, C)
        else:
            out.append((mu * (sv / (sv**2 + value * sv[0] ** 2))) @ vt)  # (K, C)
    return out


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows of (n, C) -> (n, n); zero rows give 0."""
    v = np.asarray(vectors, dtype=np.float64)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    unit = v / np.where(norm > 0, norm, 1.0)
    return unit @ unit.T


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """cos(a, b) of two vectors (0 when either is zero)."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def _mean_off_diagonal(matrix: np.ndarray) -> float:
    n = matrix.shape[0]
    if n < 2:
        return float("nan")
    return float((matrix.sum() - np.trace(matrix)) / (n * (n - 1)))


@dataclass
class MisalignmentReport:
    """Result of :func:`misalignment` for one model and one stage.

    Attributes:
        name: a label for tables ("offset: before" ...).
        stage: "before" (E, W) or "after" (E', W').
        class_names: K names.
        pixel_counts: (I, K) labelled pixels of each class per image at the feature grid.
        ideal: (I, K, C) W* per image (zero rows for absent classes).
        centered: whether the cosines were taken on class-centred prototypes (see :func:`misalignment`).
        sanity_iou: (K,) IoU of argmax(W*·Eᵀ) against the ground truth, over all images (NaN if unseen).
        sanity_miou: mean of ``sanity_iou``.
        consistency: (K,) mean off-diagonal cosine of W*_k across the images containing class k.
        alignment: (K,) mean cos(W_k, W*_k) over those images (W_k = the image's W' for "after").
        embed_consistency: (K,) mean off-diagonal cosine across images of the classifier's own W_k
            (1 for a fixed W; lower when W' adapts per image).
        cosine_matrices: class k -> (n, n) cosine matrix of W*_k over its first ``images_per_class``
            images (the Fig. 3 heatmap); ``matrix_images`` gives those image indices.
    """

    name: str
    stage: str
    class_names: list[str]
    pixel_counts: np.ndarray
    ideal: np.ndarray
    centered: bool
    sanity_iou: np.ndarray
    sanity_miou: float
    consistency: np.ndarray
    alignment: np.ndarray
    embed_consistency: np.ndarray
    cosine_matrices: dict[int, np.ndarray]
    matrix_images: dict[int, list[int]]

    @classmethod
    def from_mined(
        cls,
        name: str,
        stage: str,
        class_names: Sequence[str],
        pixel_counts: np.ndarray,
        ideal: np.ndarray,
        class_embeds: np.ndarray,
        confusion: np.ndarray,
        centered: bool,
        min_pixels: int,
        images_per_class: int,
    ) -> MisalignmentReport:
        """Score mined W* ``ideal`` (I, K, C) against the classifier's prototypes ``class_embeds`` (I, K, C),
        given the pixel counts (I, K) and the sanity-check confusion (K, K) of the same images."""
        cosines = _class_cosines(ideal, class_embeds, pixel_counts, centered, min_pixels, images_per_class)
        sanity = {"sanity_iou": iou_from_confusion(confusion), "sanity_miou": mean_iou(confusion)}
        return cls(name, stage, list(class_names), pixel_counts, ideal, centered, **sanity, **cosines)

    @property
    def overall_consistency(self) -> float:
        """Mean of ``consistency`` over classes seen in at least two images."""
        return _nanmean(self.consistency)

    @property
    def overall_alignment(self) -> float:
        """Mean of ``alignment`` over classes seen in at least one image."""
        return _nanmean(self.alignment)

    def frequent_classes(self, n: int = 6, exclude: Sequence[int] = ()) -> list[int]:
        """The ``n`` classes with a heatmap that appear in the most images (ties: lower id first)."""
        images = (self.pixel_counts > 0).sum(0)
        ranked = sorted((c for c in self.cosine_matrices if c not in exclude), key=lambda c: (-images[c], c))
        return ranked[:n]

    def rows(self) -> list[dict]:
        """One dict per class plus an "overall" row: class, images, consistency, alignment, sanity IoU."""
        images = (self.pixel_counts > 0).sum(0)
        out = [
            {
                "class": name,
                "images": int(images[k]),
                "consistency": float(self.consistency[k]),
                "alignment": float(self.alignment[k]),
                "sanity_iou": float(self.sanity_iou[k]),
            }
            for k, name in enumerate(self.class_names)
        ]
        out.append(
            {
                "class": "overall",
                "images": int(self.pixel_counts.shape[0]),
                "consistency": self.overall_consistency,
                "alignment": self.overall_alignment,
                "sanity_iou": self.sanity_miou,
            }
        )
        return out


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def _stage_arrays(p: ImageProbe, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """(E (h, w, C), W (K, C)) of the requested stage."""
    if stage == "before":
        return p.features, p.class_embed
    if not p.is_offset_model:
        raise InputError(
            "stage=\"after\" needs an Offset Learning model (E', W'); this probe comes from a per-pixel "
            'classifier, which has only stage="before".'
        )
    return p.refined_features, p.refined_class_embed


def misalignment(
    probes: Sequence[ImageProbe],
    stage: str = "before",
    class_names: Sequence[str] | None = None,
    name: str | None = None,
    rcond: float = DEFAULT_RCOND,
    images_per_class: int = 10,
    min_pixels: int = 4,
    center: bool = True,
    ignore_index: int = IGNORE_INDEX,
    method: str = "pinv",
    ridge: float | None = None,
) -> MisalignmentReport:
    """Mine W* for every labelled probe and summarise how consistent and how aligned it is.

    Args:
        probes: from :func:`offseg_vis.analysis.probe.probe` with labels.
        stage: "before" (E, W) or "after" (E', W'; Offset Learning only).
        class_names: K names (default "class k").
        name: label of the report (default the stage).
        rcond: pseudo-inverse cut-off (see module docstring); used by ``method="pinv"``.
        method, ridge: how W* is mined (see :func:`ideal_class_embed`): "pinv" (rcond), "ridge" (ridge λ)
            or "class_mean" (no knob).
        images_per_class: images per Fig. 3 heatmap (the paper uses 10).
        min_pixels: a class counts as present in an image when it covers at least this many cells of
            the feature grid (smaller fragments give unstable W*).
        center: compare prototypes after subtracting their mean over the K classes (W_k - mean_j W_j, and
            the same for W*). The classifier cannot see that shared component: adding one vector to every
            class representation adds the same score to every class of a pixel, which argmax, softmax and
            Offset Learning's LayerNorm over classes all ignore. False = the paper's literal raw W*.

    Returns:
        a :class:`MisalignmentReport`.
    """
    if stage not in STAGES:
        raise InputError(f"stage must be one of {STAGES}, got {stage!r}.")
    labelled, k, names = _labelled_probes(probes, class_names, "misalignment")
    setting = _setting(method, rcond if method == "pinv" else ridge)
    counts, embeds, ((ideal, confusion),) = _mine(labelled, stage, k, [setting], ignore_index)
    return MisalignmentReport.from_mined(
        name or stage, stage, names, counts, ideal, embeds, confusion, center, min_pixels, images_per_class
    )


def _labelled_probes(
    probes: Sequence[ImageProbe], class_names: Sequence[str] | None, caller: str
) -> tuple[list[ImageProbe], int, list[str]]:
    """The probes with ground truth, their class count K and K class names (``class i`` when none are
    given); ``caller`` names the function in the errors."""
    labelled = [p for p in probes if p.label is not None]
    if not labelled:
        raise InputError(f"{caller} needs ground truth: pass labels to probe(model, images, labels).")
    k = labelled[0].num_classes
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(k)]
    if len(names) != k:
        raise InputError(f"Got {len(names)} class names for a model with {k} classes.")
    return labelled, k, names


def _mine(
    labelled: Sequence[ImageProbe], stage: str, k: int, settings: Sequence[tuple[str, float | None]], ignore_index: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Pixel counts (I, K), the classifier's prototypes (I, K, C) and, per setting, (W* (I, K, C), the sanity
    confusion (K, K)); each image's SVD is computed once for all settings."""
    ideal = [[] for _ in settings]
    confusion = [np.zeros((k, k), dtype=np.int64) for _ in settings]
    embeds, counts = [], []
    with threadpool_limits(limits=1, user_api="blas"):  # see ideal_class_embed
        for p in labelled:
            e, w = _stage_arrays(p, stage)
            lab = label_probe_at_features(p, ignore_index).reshape(-1)  # (N,)
            e_flat, lab, valid = _image_arrays(e, lab, k, ignore_index)
            for s, w_star in enumerate(_ideal_for_settings(e_flat, lab, valid, k, settings)):
                pred = (e_flat @ w_star.T).argmax(1)  # (N,) sanity-check segmentation
                confusion[s] += confusion_matrix(pred, lab, k, ignore_index)
                ideal[s].append(w_star)
            counts.append(np.bincount(lab[valid], minlength=k)[:k])
            embeds.append(np.asarray(w, dtype=np.float64))
    return np.stack(counts), np.stack(embeds), [(np.stack(i), c) for i, c in zip(ideal, confusion)]


def _class_cosines(
    ideal: np.ndarray,
    class_embeds: np.ndarray,
    pixel_counts: np.ndarray,
    center: bool,
    min_pixels: int,
    images_per_class: int,
) -> dict:
    """The report's per-class cosine scores, computed together: ``consistency``, ``alignment`` and
    ``embed_consistency`` (K,) (NaN for classes in no image with ``min_pixels`` cells), ``cosine_matrices``
    and ``matrix_images`` (see :class:`MisalignmentReport`), from W* (I, K, C), the classifier's prototypes
    (I, K, C) and the pixel counts (I, K)."""
    k = pixel_counts.shape[1]
    if center:
        ideal = ideal - ideal.mean(axis=1, keepdims=True)
        class_embeds = class_embeds - class_embeds.mean(axis=1, keepdims=True)
    out = {name: np.full(k, np.nan) for name in ("consistency", "alignment", "embed_consistency")}
    matrices, matrix_images = {}, {}
    for c in range(k):
        present = np.flatnonzero(pixel_counts[:, c] >= min_pixels)
        if present.size == 0:
            continue
        out["consistency"][c] = _mean_off_diagonal(cosine_matrix(ideal[present, c]))
        out["embed_consistency"][c] = _mean_off_diagonal(cosine_matrix(class_embeds[present, c]))
        out["alignment"][c] = float(np.mean([cosine(class_embeds[i, c], ideal[i, c]) for i in present]))
        shown = present[:images_per_class]
        matrices[c] = cosine_matrix(ideal[shown, c])
        matrix_images[c] = [int(i) for i in shown]
    return {**out, "cosine_matrices": matrices, "matrix_images": matrix_images}


def misalignment_suite(
    offset_probes: Sequence[ImageProbe] | None = None,
    linear_probes: Sequence[ImageProbe] | None = None,
    class_names: Sequence[str] | None = None,
    **options,
) -> dict[str, MisalignmentReport]:
    """The three reports the notebooks compare: offset model before and after, and the linear baseline.

    Returns an ordered dict name -> report with the keys that apply among
    "offset: before (E, W)", "offset: after (E', W')" and "linear (E, W)". ``options`` go to
    :func:`misalignment`.
    """
    reports: dict[str, MisalignmentReport] = {}
    if offset_probes is not None:
        for stage, key in (("before", "offset: before (E, W)"), ("after", "offset: after (E', W')")):
            reports[key] = misalignment(offset_probes, stage, class_names, name=key, **options)
    if linear_probes is not None:
        key = "linear (E, W)"
        reports[key] = misalignment(linear_probes, "before", class_names, name=key, **options)
    return reports


def summary_table(reports: dict[str, MisalignmentReport]) -> str:
    """A plain-text table: one row per report with overall consistency, alignment and sanity mIoU."""
    width = max([len(n) for n in reports] + [6])
    lines = [f"{'model':<{width}}  consistency  alignment  sanity mIoU"]
    for n, r in reports.items():
        lines.append(
            f"{n:<{width}}  {r.overall_consistency:11.3f}  {r.overall_alignment:9.3f}  {100 * r.sanity_miou:10.1f}%"
        )
    return "\n".join(lines)


def per_class_table(reports: dict[str, MisalignmentReport], metric: str = "consistency") -> str:
    """A plain-text table: classes as rows, reports as columns, values of ``metric``
    ("consistency", "alignment", "embed_consistency" or "sanity_iou")."""
    if metric not in ("consistency", "alignment", "embed_consistency", "sanity_iou"):
        raise InputError(f"Unknown metric {metric!r}; use consistency, alignment, embed_consistency or sanity_iou.")
    names = next(iter(reports.values())).class_names
    width = max(len(n) for n in names + ["overall"])
    cols = list(reports)
    lines = [f"{'class':<{width}}  " + "  ".join(f"{c:>22}" for c in cols)]
    for k, cname in enumerate(names):
        lines.append(f"{cname:<{width}}  " + "  ".join(f"{getattr(reports[c], metric)[k]:22.3f}" for c in cols))
    overall = [_nanmean(getattr(reports[c], metric)) for c in cols]
    lines.append(f"{'overall':<{width}}  " + "  ".join(f"{v:22.3f}" for v in overall))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the regulariser sweep

SCORE_LABELS = {
    "consistency": (
        "W* consistency: mean cosine, across images, of one class's class-centred ideal prototype W*_k "
        "(1 = one prototype would fit every image)"
    ),
    "alignment": (
        "W-W* alignment: mean cosine of the classifier's class-centred prototype (W, or the image's W') "
        "with the image's W*_k"
    ),
    "sanity_miou": "W* sanity mIoU: how well argmax(W*·Eᵀ) reproduces the ground truth W* was mined from",
}
SWEEP_METRICS = tuple(SCORE_LABELS)
DEFAULT_RCONDS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
DEFAULT_RIDGES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class SweepSetting:
    """One way of mining W*: ``method`` "pinv" (value = rcond), "ridge" (value = λ) or "class_mean"."""

    method: str
    value: float | None = None

    @property
    def label(self) -> str:
        if self.method == "class_mean":
            return "class means"
        return f"{'rcond' if self.method == 'pinv' else 'ridge λ'} {self.value:.0e}"


@dataclass
class SweepTable:
    """Every score of every model at every W* setting.

    Attributes:
        settings: S settings, in sweep order.
        models: M report names (e.g. "offset: before (E, W)", "offset: after (E', W')", "linear (E, W)").
        consistency, alignment, sanity_miou: (S, M) float64 overall scores (see ``SCORE_LABELS``).
        images: labelled images the scores were computed on.
        reports: (setting label, model) -> the full :class:`MisalignmentReport`.
    """

    settings: list[SweepSetting]
    models: list[str]
    consistency: np.ndarray
    alignment: np.ndarray
    sanity_miou: np.ndarray
    images: int = 0
    reports: dict = field(default_factory=dict, repr=False)

    def values(self, metric: str) -> np.ndarray:
        """(S, M) scores of ``metric`` ("consistency", "alignment" or "sanity_miou")."""
        if metric not in SWEEP_METRICS:
            raise InputError(f"Unknown sweep metric {metric!r}; use one of {', '.join(SWEEP_METRICS)}.")
        return getattr(self, metric)

    def rows(self) -> list[dict]:
        """One flat dict per (setting, model)."""
        return [
            {
                "method": st.method,
                "value": st.value,
                "setting": st.label,
                "model": m,
                **{metric: float(self.values(metric)[i, j]) for metric in SWEEP_METRICS},
            }
            for i, st in enumerate(self.settings)
            for j, m in enumerate(self.models)
        ]

    def markdown(self) -> str:
        """A Markdown table: one row per setting, consistency / alignment / sanity mIoU of every model."""
        head = "| W* setting | " + " | ".join(f"{m}: consistency / alignment / sanity mIoU %" for m in self.models)
        lines = [head + " |", "|---" * (len(self.models) + 1) + "|"]
        for i, st in enumerate(self.settings):
            cells = [
                f"{self.consistency[i, j]:.3f} / {self.alignment[i, j]:.3f} / {100 * self.sanity_miou[i, j]:.1f}"
                for j in range(len(self.models))
            ]
            lines.append(f"| {st.label} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


@dataclass(frozen=True)
class OrderingCheck:
    """Whether ``first`` scores above (or below) ``second`` on ``metric`` at every setting considered.

    differences: (S,) first − second per setting; holds: one strict sign throughout; statement: a sentence.
    """

    metric: str
    first: str
    second: str
    settings: tuple[str, ...]
    differences: tuple[float, ...]
    holds: bool
    statement: str


def misalignment_sweep(
    offset_probes: Sequence[ImageProbe] | None = None,
    linear_probes: Sequence[ImageProbe] | None = None,
    class_names: Sequence[str] | None = None,
    rconds: Sequence[float] = DEFAULT_RCONDS,
    ridges: Sequence[float] = DEFAULT_RIDGES,
    class_mean: bool = True,
    min_pixels: int = 4,
    center: bool = True,
    images_per_class: int = 10,
    ignore_index: int = IGNORE_INDEX,
) -> SweepTable:
    """The reports of :func:`misalignment_suite` at every W* setting: the pseudo-inverse over ``rconds``, ridge
    over ``ridges`` and (``class_mean``) the knob-free class-mean prototypes. Each image's SVD is computed once
    per model and stage and serves every setting.

    Returns:
        a :class:`SweepTable`; check which statements survive with :func:`stable_orderings`.
    """
    settings = [SweepSetting("pinv", float(r)) for r in rconds] + [SweepSetting("ridge", float(r)) for r in ridges]
    settings += [SweepSetting("class_mean")] if class_mean else []
    if not settings:
        raise InputError("misalignment_sweep needs at least one setting (rconds, ridges or class_mean).")
    raw = [_setting(st.method, st.value) for st in settings]  # validates the values
    jobs = []
    if offset_probes is not None:
        jobs += [("offset: before (E, W)", offset_probes, "before"), ("offset: after (E', W')", offset_probes, "after")]
    if linear_probes is not None:
        jobs.append(("linear (E, W)", linear_probes, "before"))
    if not jobs:
        raise InputError("misalignment_sweep needs offset_probes, linear_probes or both.")
    shape = (len(settings), len(jobs))
    table = SweepTable(settings, [j[0] for j in jobs], np.zeros(shape), np.zeros(shape), np.zeros(shape))
    for j, (model, probes, stage) in enumerate(jobs):
        labelled, k, names = _labelled_probes(probes, class_names, "misalignment_sweep")
        counts, embeds, mined = _mine(labelled, stage, k, raw, ignore_index)
        table.images = len(labelled)
        for i, (st, (ideal, confusion)) in enumerate(zip(settings, mined)):
            rep = MisalignmentReport.from_mined(
                model, stage, names, counts, ideal, embeds, confusion, center, min_pixels, images_per_class
            )
            table.reports[(st.label, model)] = rep
            table.consistency[i, j] = rep.overall_consistency
            table.alignment[i, j] = rep.overall_alignment
            table.sanity_miou[i, j] = rep.sanity_miou
    return table


def stable_orderings(
    table: SweepTable, metric: str, methods: Sequence[str] | None = None, tolerance: float = 0.0
) -> list[OrderingCheck]:
    """For every pair of models, does one score above the other on ``metric`` at every setting?

    Args:
        methods: restrict to settings of these methods (e.g. ("pinv",)); default all settings.
        tolerance: differences with |d| <= tolerance count as ties, which break an ordering.

    Returns:
        one :class:`OrderingCheck` per model pair (in table order), with a sentence saying whether it holds.
    """
    values = table.values(metric)
    rows = [i for i, st in enumerate(table.settings) if methods is None or st.method in methods]
    if not rows:
        raise InputError(f"No setting of the sweep uses the methods {list(methods or [])}.")
    labels = tuple(table.settings[i].label for i in rows)
    out = []
    for a in range(len(table.models)):
        for b in range(a + 1, len(table.models)):
            d = values[rows, a] - values[rows, b]  # (S',)
            first, second = table.models[a], table.models[b]
            above, below = bool(np.all(d > tolerance)), bool(np.all(d < -tolerance))
            if above or below:
                word = "above" if above else "below"
                statement = (
                    f"{metric}: {first} is {word} {second} at all {len(rows)} settings ({labels[0]} … {labels[-1]})."
                )
            else:
                flips = (
                    [lab for lab, v in zip(labels, d) if not v > tolerance]
                    if d[0] > tolerance
                    else [lab for lab, v in zip(labels, d) if not v < -tolerance]
                )
                statement = (
                    f"{metric}: the order of {first} and {second} does NOT hold across the sweep "
                    f"(it changes or ties at {', '.join(flips)})."
                )
            out.append(
                OrderingCheck(metric, first, second, labels, tuple(float(v) for v in d), above or below, statement)
            )
    return out
