"""Pixel sampling, the joint before/after map and its cache."""

from __future__ import annotations

import numpy as np
import pytest

from offseg_vis.analysis.embedding import (
    JointEmbedding,
    _water_fill,
    embed_pixels,
    fit_joint_umap,
    gather_pixel_features,
    sample_pixels,
)
from offseg_vis.analysis.synthetic import make_probe
from offseg_vis.errors import InputError

K, C = 3, 6


def _probes(n=2, offset=True, seed=0, with_label=True):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lab = np.zeros((10, 10), dtype=np.int64)
        lab[:, 6:] = 1
        lab[0, :3] = 2  # a small class: 3 pixels per image
        lab[9, :] = 255
        feats = rng.normal(size=(10, 10, C)) + 3 * np.eye(C)[np.minimum(lab, K - 1) % C]
        d_e = 0.5 * rng.normal(size=feats.shape) if offset else None
        d_w = 0.1 * rng.normal(size=(K, C)) if offset else None
        out.append(make_probe(feats, rng.normal(size=(K, C)), lab if with_label else None, d_e, d_w))
    return out


def test_water_fill_is_as_equal_as_class_sizes_allow():
    np.testing.assert_array_equal(_water_fill(np.array([100, 5, 100]), 60), [28, 5, 27])
    np.testing.assert_array_equal(_water_fill(np.array([3, 4]), 100), [3, 4])
    np.testing.assert_array_equal(_water_fill(np.array([0, 50]), 10), [0, 10])


def test_sample_pixels_is_stratified_seeded_and_drops_ignore():
    probes = _probes()
    s = sample_pixels(probes, max_pixels=30, seed=1)
    counts = np.bincount(s.classes, minlength=K)
    np.testing.assert_array_equal(counts, [12, 12, 6])  # class 2 has only 6 pixels: all taken
    assert len(s) == 30 and s.label_source == "label"
    # every sampled cell is labelled with the class recorded for it
    for i, r, c, k in zip(s.image_index, s.rows, s.cols, s.classes):
        assert probes[i].label[r, c] == k
    assert (s.rows < 9).all()  # row 9 is ignore
    again = sample_pixels(probes, max_pixels=30, seed=1)
    np.testing.assert_array_equal(s.rows, again.rows)
    other = sample_pixels(probes, max_pixels=30, seed=2)
    assert not np.array_equal(np.c_[s.image_index, s.rows, s.cols], np.c_[other.image_index, other.rows, other.cols])
    only = sample_pixels(probes, max_pixels=1000, classes=[2])
    assert set(only.classes.tolist()) == {2} and len(only) == 6


def test_sample_without_labels_uses_predictions():
    probes = _probes(with_label=False)
    s = sample_pixels(probes, max_pixels=50)
    assert s.label_source == "prediction"
    for i, r, c, k in zip(s.image_index, s.rows, s.cols, s.classes):
        assert probes[i].prediction[r, c] == k
    with pytest.raises(InputError, match="no label"):
        sample_pixels(probes, label_source="label")


def test_gather_pixel_features_picks_the_right_vectors():
    probes = _probes()
    s = sample_pixels(probes, max_pixels=20)
    px = gather_pixel_features(probes, s)
    for j in range(len(s)):
        p = probes[s.image_index[j]]
        np.testing.assert_allclose(px.before[j], p.features[s.rows[j], s.cols[j]])
        np.testing.assert_allclose(px.after[j], p.refined_features[s.rows[j], s.cols[j]])
    assert px.refined_class_embed.shape == (2, K, C)
    lin = gather_pixel_features(_probes(offset=False), s)
    assert lin.after is None and lin.refined_class_embed is None


def test_pca_map_shapes_and_zero_offsets_put_after_on_before():
    probes = _probes()
    emb = embed_pixels(probes, max_points=60, method="pca", n_arrows=5)
    n = 30
    assert emb.before.shape == (n, 2) and emb.after.shape == (n, 2)
    assert emb.class_embed.shape == (K, 2) and emb.refined_class_embed.shape == (2, K, 2)
    assert emb.arrow_index.shape == (5,) and emb.params["points"] == 60
    # ΔE = 0, ΔW = 0: after coincides with before, W' with W
    zero = [make_probe(p.features, p.class_embed, p.label, np.zeros_like(p.features)) for p in probes]
    emb0 = embed_pixels(zero, max_points=60, method="pca")
    np.testing.assert_allclose(emb0.after, emb0.before, atol=1e-5)
    np.testing.assert_allclose(emb0.refined_class_embed[0], emb0.class_embed, atol=1e-5)
    lin = embed_pixels(_probes(offset=False), max_points=60, method="pca")
    assert lin.after is None and lin.before.shape == (60, 2)  # a linear model: one point per pixel


@pytest.mark.slow  # numba compiles UMAP's kernels in every fresh process (~15-60 s on 2 busy cores)
def test_umap_map_is_seeded_and_places_class_embeddings():
    pytest.importorskip("umap")
    probes = _probes(n=3)
    a = embed_pixels(probes, max_points=200, seed=0, n_epochs=30, n_neighbors=8)
    b = embed_pixels(probes, max_points=200, seed=0, n_epochs=30, n_neighbors=8)
    assert a.method == "umap" and a.before.shape == (a.classes.shape[0], 2)
    np.testing.assert_allclose(a.before, b.before)  # same seed, same map
    assert np.isfinite(a.class_embed).all() and np.isfinite(a.refined_class_embed).all()


def test_cache_round_trip(tmp_path):
    probes = _probes()
    first = embed_pixels(probes, max_points=40, method="pca", cache_dir=tmp_path, seed=3)
    assert not first.from_cache and len(list(tmp_path.glob("embedding-*.npz"))) == 1
    second = embed_pixels(probes, max_points=40, method="pca", cache_dir=tmp_path, seed=3)
    assert second.from_cache
    for name in JointEmbedding._ARRAYS:
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    embed_pixels(probes, max_points=40, method="pca", cache_dir=tmp_path, seed=4)  # other seed, other key
    embed_pixels(probes, max_points=40, method="pca", cache_dir=tmp_path, seed=3, model_key="ckpt-b")
    assert len(list(tmp_path.glob("embedding-*.npz"))) == 3


def test_fit_errors():
    probes = _probes()
    px = gather_pixel_features(probes, sample_pixels(probes, max_pixels=2))
    with pytest.raises(InputError, match="at least 3"):
        fit_joint_umap(px, method="pca")
    with pytest.raises(InputError, match="method"):
        fit_joint_umap(gather_pixel_features(probes, sample_pixels(probes, 20)), method="tsne")
    with pytest.raises(InputError, match="at least one"):
        embed_pixels([])


def _planted(shared: float, seed: int = 0):
    """Pixels of class k = μ_k + noise with Σ_k μ_k = 0; W_k = μ_k + a large shared vector (class-common)."""
    rng = np.random.default_rng(seed)
    k, c = 4, 8
    mu = 3.0 * (np.eye(c)[:k] - np.eye(c)[:k].mean(0))  # (K, C), zero mean over classes
    lab = np.repeat(np.arange(k), 25).reshape(10, 10)
    feats = mu[lab] + 0.3 * rng.normal(size=(10, 10, c))
    common = shared * np.eye(c)[k + 1]  # (C,) in a direction no class uses
    w = mu + common
    d_w = 0.1 * rng.normal(size=(k, c)) + common  # W' = W + ΔW: even more class-common
    return make_probe(feats, w, lab, np.zeros_like(feats), d_w), k


def _nearest_class(emb, points):
    """For each (2,) point, the class whose sampled pixels (before) have the nearest centroid."""
    centroids = np.stack([emb.before[emb.classes == c].mean(0) for c in range(points.shape[0])])
    return [int(np.argmin(np.linalg.norm(centroids - p, axis=1))) for p in points]


def test_centred_class_embeddings_land_on_their_own_class():
    p, k = _planted(shared=20.0)
    emb = embed_pixels([p], max_points=400, method="pca")
    assert emb.params["center_class_embed"] is True
    assert _nearest_class(emb, emb.class_embed) == list(range(k))
    assert _nearest_class(emb, emb.refined_class_embed[0]) == list(range(k))
    # Uncentred, the shared vector dominates and the markers do not land on their classes (the old bug).
    raw = embed_pixels([p], max_points=400, method="pca", center_class_embed=False)
    assert _nearest_class(raw, raw.class_embed) != list(range(k))


def test_pca_placement_equals_a_numpy_projection():
    """Pairwise distances of the placed W equal those of the centred, normalised W projected on the top two
    principal axes of the normalised pixel features (computed here by SVD; distances ignore axis signs)."""
    p, k = _planted(shared=5.0, seed=1)
    emb = embed_pixels([p], max_points=400, method="pca")
    feats = np.concatenate([p.features.reshape(-1, 8), p.refined_features.reshape(-1, 8)]).astype(np.float64)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    mean = feats.mean(0)
    _, _, vt = np.linalg.svd(feats - mean, full_matrices=False)
    w = p.class_embed.astype(np.float64) - p.class_embed.mean(0)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    placed = (w - mean) @ vt[:2].T  # (K, 2)
    dist = lambda x: np.linalg.norm(x[:, None] - x[None], axis=-1)  # noqa: E731
    # float32 data through sklearn's PCA: coordinates of size ~1, agreement to ~1e-5
    np.testing.assert_allclose(dist(emb.class_embed), dist(placed), atol=1e-4)
