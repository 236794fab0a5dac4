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


def ideal_class_embed(
    features: np.ndarray,
    label: np.ndarray,
    num_classes: int,
    rcond: float = DEFAULT_RCOND,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """W* = M·(Eᵀ)⁺ for one image.

    Args:
        features: E, (N, C) or (h, w, C).
        label: ground truth at the same grid, (N,) or (h, w); ``ignore_index`` pixels are removed.
        num_classes: K.
        rcond: relative singular-value cut-off of the pseudo-inverse.

    Returns:
        (W* (K, C) float64, prediction (N,) int64): prediction = argmax_k (W*·Eᵀ) for every pixel
        (ignored ones included), the sanity-check segmentation. Rows of absent classes are zero.
    """
    # One BLAS thread: these matrices are small, and multi-threaded BLAS on cores shared with other jobs
    # was measured 100x slower (threads spin-waiting for each other).
    with threadpool_limits(limits=1, user_api="blas"):
        return _ideal_class_embed(features, label, num_classes, rcond, ignore_index)


def _ideal_class_embed(features, label, num_classes, rcond, ignore_index) -> tuple[np.ndarray, np.ndarray]:
    c = features.shape[-1]
    e = np.asarray(features, dtype=np.float64).reshape(-1, c)  # (N, C)
    lab = np.asarray(label).reshape(-1)
    if lab.shape[0] != e.shape[0]:
        raise InputError(f"Features have {e.shape[0]} pixels but the label has {lab.shape[0]}; they must match.")
    valid = (lab != ignore_index) & (lab >= 0) & (lab < num_classes)
    if not valid.any():
        return np.zeros((num_classes, c)), np.zeros(e.shape[0], dtype=np.int64)
    e_valid = e[valid]  # (n, C)
    m = np.eye(num_classes)[lab[valid]].T  # (K, n) one-hot
    # E = U S Vᵀ  =>  (Eᵀ)⁺ = U S⁻¹ Vᵀ  and  W* = M U S⁻¹ Vᵀ.
    u, s, vt = np.linalg.svd(e_valid, full_matrices=False)  # (n, r), (r,), (r, C)
    keep = s > rcond * s[0] if s.size and s[0] > 0 else np.zeros_like(s, dtype=bool)
    w_star = (m @ u[:, keep]) / s[keep] @ vt[keep]  # (K, C)
    prediction = (e @ w_star.T).argmax(1)  # (N,)
    return w_star, prediction.astype(np.int64)


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
        sanity_iou: (K,) IoU of argmax(W*·Eᵀ) against the ground truth, over all images (NaN if unseen).
        sanity_miou: mean of ``sanity_iou``.
        consistency: (K,) mean off-diagonal cosine of W*_k across the images containing class k.
        alignment: (K,) mean cos(W_k, W*_k) over those images (W_k = the image's W' for "after").
        embed_consistency: (K,) mean off-diagonal cosine across images of the classifier's own W_k
            (1 for a fixed W; lower when W' adapts per image).
        cosine_matrices: class k -> (n, n) cosine matrix of W*_k over its first ``images_per_class``
            images (the Fig. 3 heatmap); ``matrix_images`` gives those image indices.
        centered: whether the cosines were taken on class-centred prototypes (see :func:`misalignment`).
    """

    name: str
    stage: str
    class_names: list[str]
    pixel_counts: np.ndarray
    ideal: np.ndarray
    sanity_iou: np.ndarray
    sanity_miou: float
    consistency: np.ndarray
    alignment: np.ndarray
    embed_consistency: np.ndarray
    cosine_matrices: dict[int, np.ndarray] = field(default_factory=dict)
    matrix_images: dict[int, list[int]] = field(default_factory=dict)
    centered: bool = True

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
) -> MisalignmentReport:
    """Mine W* for every labelled probe and summarise how consistent and how aligned it is.

    Args:
        probes: from :func:`offseg_vis.analysis.probe.probe` with labels.
        stage: "before" (E, W) or "after" (E', W'; Offset Learning only).
        class_names: K names (default "class k").
        name: label of the report (default the stage).
        rcond: pseudo-inverse cut-off (see module docstring).
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
    labelled = [p for p in probes if p.label is not None]
    if not labelled:
        raise InputError("misalignment needs ground truth: pass labels to probe(model, images, labels).")
    k = labelled[0].num_classes
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(k)]
    if len(names) != k:
        raise InputError(f"Got {len(names)} class names for a model with {k} classes.")

    ideal, embeds, counts = [], [], []
    confusion = np.zeros((k, k), dtype=np.int64)
    for p in labelled:
        e, w = _stage_arrays(p, stage)
        lab = label_probe_at_features(p, ignore_index).reshape(-1)  # (N,)
        w_star, pred = ideal_class_embed(e, lab, k, rcond=rcond, ignore_index=ignore_index)
        confusion += confusion_matrix(pred, lab, k, ignore_index)
        valid = (lab != ignore_index) & (lab < k)
        counts.append(np.bincount(lab[valid], minlength=k)[:k])
        ideal.append(w_star)
        embeds.append(np.asarray(w, dtype=np.float64))
    counts_arr = np.stack(counts)  # (I, K)
    ideal_arr = np.stack(ideal)  # (I, K, C)
    embeds_arr = np.stack(embeds)  # (I, K, C)
    ideal_cmp, embeds_cmp = ideal_arr, embeds_arr
    if center:
        ideal_cmp = ideal_arr - ideal_arr.mean(axis=1, keepdims=True)
        embeds_cmp = embeds_arr - embeds_arr.mean(axis=1, keepdims=True)

    consistency = np.full(k, np.nan)
    alignment = np.full(k, np.nan)
    embed_consistency = np.full(k, np.nan)
    matrices, matrix_images = {}, {}
    for c in range(k):
        present = np.flatnonzero(counts_arr[:, c] >= min_pixels)
        if present.size == 0:
            continue
        vectors = ideal_cmp[present, c]  # (n, C)
        consistency[c] = _mean_off_diagonal(cosine_matrix(vectors))
        embed_consistency[c] = _mean_off_diagonal(cosine_matrix(embeds_cmp[present, c]))
        alignment[c] = float(np.mean([cosine(embeds_cmp[i, c], ideal_cmp[i, c]) for i in present]))
        shown = present[:images_per_class]
        matrices[c] = cosine_matrix(ideal_cmp[shown, c])
        matrix_images[c] = [int(i) for i in shown]

    sanity_iou = iou_from_confusion(confusion)
    return MisalignmentReport(
        name=name or stage,
        stage=stage,
        class_names=names,
        pixel_counts=counts_arr,
        ideal=ideal_arr,
        sanity_iou=sanity_iou,
        sanity_miou=mean_iou(confusion),
        consistency=consistency,
        alignment=alignment,
        embed_consistency=embed_consistency,
        cosine_matrices=matrices,
        matrix_images=matrix_images,
        centered=center,
    )


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
            f"{n:<{width}}  {r.overall_consistency:11.3f}  {r.overall_alignment:9.3f}"
            f"  {100 * r.sanity_miou:10.1f}%"
        )
    return "\n".join(lines)


def per_class_table(reports: dict[str, MisalignmentReport], metric: str = "consistency") -> str:
    """A plain-text table: classes as rows, reports as columns, values of ``metric``
    ("consistency", "alignment", "embed_consistency" or "sanity_iou")."""
    if metric not in ("consistency", "alignment", "embed_consistency", "sanity_iou"):
        raise InputError(
            f"Unknown metric {metric!r}; use consistency, alignment, embed_consistency or sanity_iou."
        )
    names = next(iter(reports.values())).class_names
    width = max(len(n) for n in names + ["overall"])
    cols = list(reports)
    lines = [f"{'class':<{width}}  " + "  ".join(f"{c:>22}" for c in cols)]
    for k, cname in enumerate(names):
        lines.append(
            f"{cname:<{width}}  " + "  ".join(f"{getattr(reports[c], metric)[k]:22.3f}" for c in cols)
        )
    overall = [_nanmean(getattr(reports[c], metric)) for c in cols]
    lines.append(f"{'overall':<{width}}  " + "  ".join(f"{v:22.3f}" for v in overall))
    return "\n".join(lines)
