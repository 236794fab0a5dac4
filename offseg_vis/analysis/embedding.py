"""Pixel features before and after the offsets in ONE 2-D map, with the class embeddings placed in it.

Pipeline (:func:`embed_pixels`):

1. :func:`sample_pixels` — stratified per-class sampling of feature-grid pixels (ignore dropped, seeded);
   classes come from the ground truth (majority vote per cell) or, without labels, the prediction.
2. :func:`gather_pixel_features` — E (and E' for Offset Learning) of the sampled pixels, W and each
   image's W'.
3. :func:`fit_joint_umap` — rows L2-normalised (the Offset Learning logits pass a LayerNorm over classes,
   which removes a pixel's overall feature scale, so direction is what classifies; the same holds for
   ranking with a linear classifier up to its bias), PCA to ``pca_dims``, then ONE UMAP fitted on
   before and after features together so both live in the same map. W and every W' are centred over the
   classes first (W_k − mean_j W_j, and per image W'_k − mean_j W'_j): a vector added to every class
   representation adds the same score to every class of a pixel, so no classifier can use it, yet it
   dominates the raw vectors (W' is about 94 % class-common on the shipped model, which put most W'
   markers inside the background cluster). Then they are L2-normalised and placed with the fitted map's
   ``transform``. ``method="pca"`` replaces UMAP by a 2-D PCA (well under a second, for
   the app's budget).
4. Results are cached as ``.npz`` keyed by the model, the data, the seed and every parameter.

``max_points`` counts the points the map is fitted on: for an offset model each sampled pixel gives two
(E and E'), so at most ``max_points // 2`` pixels are sampled.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from offseg_vis.analysis.cache import arrays_digest, params_digest, save_npz_atomic
from offseg_vis.analysis.probe import IGNORE_INDEX, ImageProbe, label_at_features
from offseg_vis.errors import InputError

METHODS = ("umap", "pca")


@dataclass
class PixelSample:
    """Which feature-grid pixels were sampled: parallel (n,) int64 arrays."""

    image_index: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    classes: np.ndarray
    label_source: str

    def __len__(self) -> int:
        return int(self.classes.shape[0])


def _class_grid(p: ImageProbe, label_source: str, ignore_index: int) -> np.ndarray:
    """(h, w) class per feature cell from the label or, failing that, the prediction."""
    use_label = label_source == "label" or (label_source == "auto" and p.label is not None)
    if use_label:
        if p.label is None:
            raise InputError('label_source="label" but a probe has no label; pass labels to probe().')
        source = p.label
    else:
        source = p.prediction
    return label_at_features(source, p.feature_size, p.padded_size, p.num_classes, ignore_index)


def _water_fill(counts: np.ndarray, budget: int) -> np.ndarray:
    """Per-class quotas (K,) summing to min(budget, total): as equal as the class sizes allow."""
    quota = np.zeros_like(counts)
    remaining = budget
    open_classes = counts > 0
    while remaining > 0 and open_classes.any():
        share = max(remaining // int(open_classes.sum()), 1)
        for c in np.flatnonzero(open_classes):
            take = min(share, counts[c] - quota[c], remaining)
            quota[c] += take
            remaining -= take
            if quota[c] >= counts[c]:
                open_classes[c] = False
            if remaining == 0:
                break
    return quota


def sample_pixels(
    probes: Sequence[ImageProbe],
    max_pixels: int = 25_000,
    seed: int = 0,
    classes: Sequence[int] | None = None,
    label_source: str = "auto",
    ignore_index: int = IGNORE_INDEX,
) -> PixelSample:
    """Stratified per-class sample of feature-grid pixels over all probes.

    Args:
        probes: from :func:`~offseg_vis.analysis.probe.probe`.
        max_pixels: upper bound on the number of pixels; every class gets an equal share, classes with
            fewer pixels give all of theirs and leave the rest to the others.
        seed: the sample is a pure function of (probes, seed).
        classes: restrict to these class ids (default all).
        label_source: "label", "prediction" or "auto" (the label when the probe has one).

    Returns:
        a :class:`PixelSample` sorted by class.
    """
    if label_source not in ("auto", "label", "prediction"):
        raise InputError(f"label_source must be auto, label or prediction, got {label_source!r}.")
    if not probes:
        raise InputError("sample_pixels needs at least one probe.")
    k = probes[0].num_classes
    per_image = []
    for i, p in enumerate(probes):
        grid = _class_grid(p, label_source, ignore_index).reshape(-1)  # (h*w,)
        keep = grid != ignore_index
        if classes is not None:
            keep &= np.isin(grid, np.asarray(classes))
        flat = np.flatnonzero(keep)
        per_image.append((np.full(flat.size, i), flat, grid[flat], p.feature_size[1]))
    image_index = np.concatenate([a for a, *_ in per_image])
    flat_index = np.concatenate([b for _, b, *_ in per_image])
    cls = np.concatenate([c for *_, c, _ in per_image])
    widths = np.concatenate([np.full(a.size, w) for a, _, _, w in per_image])
    counts = np.bincount(cls, minlength=k)
    quota = _water_fill(counts, max_pixels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.flatnonzero(quota):
        members = np.flatnonzero(cls == c)
        chosen.append(np.sort(rng.choice(members, size=int(quota[c]), replace=False)))
    sel = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    return PixelSample(
        image_index=image_index[sel].astype(np.int64),
        rows=(flat_index[sel] // widths[sel]).astype(np.int64),
        cols=(flat_index[sel] % widths[sel]).astype(np.int64),
        classes=cls[sel].astype(np.int64),
        label_source=label_source
        if label_source != "auto"
        else ("label" if probes[0].label is not None else "prediction"),
    )


@dataclass
class PixelFeatures:
    """Features of the sampled pixels and the class embeddings.

    Attributes:
        sample: which pixels.
        before: E of those pixels, (n, C).
        after: E' (n, C), or None for a per-pixel model.
        class_embed: W (K, C).
        refined_class_embed: W' per image (I, K, C), or None.
    """

    sample: PixelSample
    before: np.ndarray
    after: np.ndarray | None
    class_embed: np.ndarray
    refined_class_embed: np.ndarray | None


def gather_pixel_features(probes: Sequence[ImageProbe], sample: PixelSample) -> PixelFeatures:
    """Pick E (and E') at the sampled pixels; collect W and every image's W'."""
    before = np.zeros((len(sample), probes[0].embed_dims), dtype=np.float32)
    is_offset = probes[0].is_offset_model
    after = np.zeros_like(before) if is_offset else None
    for i, p in enumerate(probes):
        sel = np.flatnonzero(sample.image_index == i)
        before[sel] = p.features[sample.rows[sel], sample.cols[sel]]
        if after is not None:
            after[sel] = p.refined_features[sample.rows[sel], sample.cols[sel]]
    refined = np.stack([p.refined_class_embed for p in probes]) if is_offset else None
    return PixelFeatures(sample, before, after, probes[0].class_embed.astype(np.float32), refined)


@dataclass
class JointEmbedding:
    """2-D coordinates of one joint map.

    Attributes:
        before: (n, 2) pixels' E.
        after: (n, 2) pixels' E', or None.
        class_embed: (K, 2) W placed with the map's transform.
        refined_class_embed: (I, K, 2) each image's W', or None.
        classes: (n,) class of each pixel; image_index: (n,) its image.
        arrow_index: (m,) pixels for which a before -> after arrow is drawn.
        method: "umap" or "pca"; params: every parameter of the fit; fit_seconds: wall time of the fit
            (0 when loaded from the cache); from_cache: whether it was loaded.
    """

    before: np.ndarray
    after: np.ndarray | None
    class_embed: np.ndarray
    refined_class_embed: np.ndarray | None
    classes: np.ndarray
    image_index: np.ndarray
    arrow_index: np.ndarray
    method: str
    params: dict = field(default_factory=dict)
    fit_seconds: float = 0.0
    from_cache: bool = False

    _ARRAYS = (
        "before",
        "after",
        "class_embed",
        "refined_class_embed",
        "classes",
        "image_index",
        "arrow_index",
    )

    def save(self, path: str | Path) -> None:
        """Write to ``.npz`` (atomically)."""
        arrays = {n: getattr(self, n) for n in self._ARRAYS if getattr(self, n) is not None}
        meta = {"method": self.method, "params": self.params, "fit_seconds": self.fit_seconds}
        save_npz_atomic(path, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> JointEmbedding:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {n: (data[n] if n in data.files else None) for n in cls._ARRAYS}
        return cls(
            **arrays,
            method=meta["method"],
            params=meta["params"],
            fit_seconds=meta["fit_seconds"],
            from_cache=True,
        )


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class FitOptions:
    """Parameters of :func:`fit_joint_umap` (all enter the cache key).

    method: "umap" or "pca"; normalize: L2-normalise rows first; pca_dims: PCA size before UMAP
    (0 = none); n_neighbors, min_dist, n_epochs: UMAP's (None = UMAP's own choice, 200 for large data);
    n_arrows: pixels with a before -> after arrow; center_class_embed: subtract the mean over classes
    from W and from each image's W' before placing them (see the module docstring).

    Why n_epochs=100: a seeded UMAP runs its layout optimisation on one thread, and at 50k points its
    cost is proportional to the epochs; 100 epochs give a settled map in about half the time of UMAP's
    default 200 (measured with ``offseg bench umap``).
    """

    method: str = "umap"
    normalize: bool = True
    pca_dims: int = 50
    n_neighbors: int = 15
    min_dist: float = 0.1
    n_epochs: int | None = 100
    n_arrows: int = 300
    center_class_embed: bool = True


def fit_joint_umap(pixels: PixelFeatures, seed: int = 0, **options) -> JointEmbedding:
    """Fit one map on the before and after features together and place W and W' in it.

    Args:
        pixels: from :func:`gather_pixel_features`; ``after`` may be None (per-pixel model).
        seed: seeds PCA, UMAP (which then runs its optimisation single-threaded: reproducible) and the
            choice of arrow pixels.
        options: fields of :class:`FitOptions`.

    Returns:
        a :class:`JointEmbedding`.
    """
    opts = FitOptions(**options)
    if opts.method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {opts.method!r}.")
    n = pixels.before.shape[0]
    if n < 3:
        raise InputError(f"Only {n} pixels were sampled; a map needs at least 3. Use more images or classes.")
    start = time.perf_counter()
    data = pixels.before if pixels.after is None else np.concatenate([pixels.before, pixels.after])  # (n or 2n, C)
    k, c = pixels.class_embed.shape
    w, w_ref = pixels.class_embed.astype(np.float64), pixels.refined_class_embed
    if opts.center_class_embed:
        w = w - w.mean(0, keepdims=True)  # (K, C) minus the class-common part
        if w_ref is not None:
            w_ref = w_ref - w_ref.mean(1, keepdims=True)  # (I, K, C), per image
    extra = [w]
    if w_ref is not None:
        extra.append(w_ref.reshape(-1, c))  # (I*K, C)
    extra = np.concatenate(extra)
    data = data.astype(np.float32)
    extra = extra.astype(np.float32)
    if opts.normalize:
        data, extra = _l2_normalise(data), _l2_normalise(extra)
    coords, placed = _reduce(data, extra, opts, seed)
    rng = np.random.default_rng(seed)
    arrows = (
        np.sort(rng.choice(n, size=min(opts.n_arrows, n), replace=False))
        if pixels.after is not None
        else np.zeros(0, dtype=np.int64)
    )
    refined = placed[k:].reshape(-1, k, 2) if pixels.refined_class_embed is not None else None
    return JointEmbedding(
        before=coords[:n],
        after=coords[n:] if pixels.after is not None else None,
        class_embed=placed[:k],
        refined_class_embed=refined,
        classes=pixels.sample.classes,
        image_index=pixels.sample.image_index,
        arrow_index=arrows.astype(np.int64),
        method=opts.method,
        params={**asdict(opts), "seed": seed, "points": int(data.shape[0])},
        fit_seconds=time.perf_counter() - start,
    )


def _reduce(data: np.ndarray, extra: np.ndarray, opts: FitOptions, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit on ``data`` (M, C), return its 2-D coordinates and those of ``extra`` (E, C) via transform."""
    from sklearn.decomposition import PCA

    if opts.method == "pca":
        pca = PCA(n_components=2, random_state=seed).fit(data)
        return pca.transform(data), pca.transform(extra)
    dims = min(opts.pca_dims, data.shape[1], data.shape[0])
    if opts.pca_dims and dims < data.shape[1]:
        pca = PCA(n_components=dims, random_state=seed).fit(data)
        data, extra = pca.transform(data), pca.transform(extra)
    reducer = _make_umap(opts, seed, n_points=data.shape[0])
    with warnings.catch_warnings():
        # Seeding makes UMAP single-threaded, on purpose (reproducible maps and cache); silence its notice.
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="umap")
        coords = reducer.fit_transform(data)
        placed = reducer.transform(extra)
    return np.asarray(coords, dtype=np.float32), np.asarray(placed, dtype=np.float32)


def _make_umap(opts: FitOptions, seed: int, n_points: int):
    import umap  # slow import (numba); only when a map is really fitted

    return umap.UMAP(
        n_components=2,
        n_neighbors=min(opts.n_neighbors, max(n_points - 1, 2)),
        min_dist=opts.min_dist,
        n_epochs=opts.n_epochs,
        metric="euclidean",
        random_state=seed,
        transform_seed=seed,
        low_memory=True,
        verbose=False,
    )


def warm_up_umap(points: int = 5000) -> float:
    """Compile UMAP's numba kernels (incl. the NN-descent path, used from 4096 points on) on a small
    problem; returns the seconds it took. Only the first call in a process is slow."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    n = points // 2
    pixels = PixelFeatures(
        PixelSample(
            np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64), rng.integers(0, 3, n), "label"
        ),
        rng.normal(size=(n, 8)).astype(np.float32),
        rng.normal(size=(n, 8)).astype(np.float32),
        rng.normal(size=(3, 8)).astype(np.float32),
        rng.normal(size=(1, 3, 8)).astype(np.float32),
    )
    fit_joint_umap(pixels, n_epochs=5, pca_dims=0)
    return time.perf_counter() - start


def embedding_cache_key(
    probes: Sequence[ImageProbe], model_key: str | None, data_key: str | None, seed: int, params: dict
) -> str:
    """Key of a cached map: the model (given, or a digest of W and the first image's features — both a
    pure function of the weights), the data (given, or a digest of the images and labels), the seed and
    every parameter."""
    if model_key is None:
        model_key = arrays_digest([probes[0].class_embed, probes[0].features])
    if data_key is None:
        data_key = arrays_digest([a for p in probes for a in (p.image, p.label)])
    return params_digest({"model": model_key, "data": data_key, "seed": seed, **params})


def embed_pixels(
    probes: Sequence[ImageProbe],
    max_points: int = 50_000,
    seed: int = 0,
    classes: Sequence[int] | None = None,
    label_source: str = "auto",
    cache_dir: str | Path | None = None,
    model_key: str | None = None,
    data_key: str | None = None,
    **options,
) -> JointEmbedding:
    """Sample, gather and map pixel features in one call, with an optional ``.npz`` cache.

    Args:
        probes: from :func:`~offseg_vis.analysis.probe.probe` (offset or linear model).
        max_points: points the map is fitted on (E and E' both count; see module docstring).
        seed: sampling, PCA and UMAP seed.
        classes: restrict to these class ids.
        label_source: "auto", "label" or "prediction" (which classes stratify and colour the pixels).
        cache_dir: folder for ``embedding-<key>.npz``; None disables the cache.
        model_key: e.g. :func:`~offseg_vis.analysis.cache.file_digest` of the checkpoint
            (default: derived from the probes).
        data_key: a name for the data (default: a digest of the probes' images and labels).
        options: fields of :class:`FitOptions` (method="pca" for the fast fallback).

    Returns:
        a :class:`JointEmbedding` (``from_cache`` tells whether it was loaded).
    """
    if not probes:
        raise InputError("embed_pixels needs at least one probe.")
    opts = FitOptions(**options)
    per_point = 2 if probes[0].is_offset_model else 1
    params = {
        **asdict(opts),
        "max_points": max_points,
        "label_source": label_source,
        "classes": None if classes is None else sorted(int(c) for c in classes),
    }
    path = None
    if cache_dir is not None:
        key = embedding_cache_key(probes, model_key, data_key, seed, params)
        path = Path(cache_dir) / f"embedding-{key}.npz"
        if path.exists():
            return JointEmbedding.load(path)
    sample = sample_pixels(probes, max_points // per_point, seed, classes, label_source)
    result = fit_joint_umap(gather_pixel_features(probes, sample), seed=seed, **asdict(opts))
    if path is not None:
        result.save(path)
    return result
