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
