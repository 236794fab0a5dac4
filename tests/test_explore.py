"""Linked pixel <-> embedding exploration (offseg_vis.analysis.explore): known answers, no browser."""

from __future__ import annotations

import numpy as np
import pytest

from offseg_vis.analysis import explore
from offseg_vis.analysis.compare import BOTH_RIGHT, BOTH_WRONG, BROKEN, FIXED
from offseg_vis.analysis.probe import probe
from offseg_vis.analysis.synthetic import make_probe
from offseg_vis.errors import InputError

K, C = 4, 6


def _probes(n=3, seed=0, same_features_rows=()):
    """Offset probes (stride 1) with labels, a chosen prediction, and per-pixel twins' probes."""
    rng = np.random.default_rng(seed)
    probes, twins = [], []
    for _ in range(n):
        lab = rng.integers(0, K, size=(9, 11))
        lab[0, :4] = 255  # unlabelled pixels are never sampled
        pred = np.where(rng.random(lab.shape) < 0.7, lab, (lab + 1) % K)
        twin = np.where(rng.random(lab.shape) < 0.6, lab, (lab + 2) % K)
        feats = rng.normal(size=(9, 11, C))
        d_e = 0.5 * rng.normal(size=feats.shape)
        for r, c in same_features_rows:
            d_e[r, c] = 0.0  # E' == E at this pixel
        probes.append(make_probe(feats, rng.normal(size=(K, C)), lab, d_e, 0.1 * rng.normal(size=(K, C)), pred))
        twins.append(make_probe(feats, rng.normal(size=(K, C)), lab, prediction=twin))
    return probes, twins


def test_table_columns_equal_the_probes_at_each_pixel():
    probes, twins = _probes()
    t = explore.pixel_table(probes, max_pixels=120, twin_probes=twins, class_names=list("abcd"), seed=3)
    assert len(t) == 120 and t.dropped == 0  # stride 1: the centre pixel is the cell itself
    for j in range(len(t)):
        p, tw = probes[t.image[j]], twins[t.image[j]]
        y, x = t.y[j], t.x[j]
        assert (y, x) == (t.row[j], t.col[j])
        assert t.label[j] == p.label[y, x] != 255
        assert t.predicted[j] == p.prediction[y, x]
        assert t.correct[j] == (p.prediction[y, x] == p.label[y, x])
        ol_ok, tw_ok = p.prediction[y, x] == p.label[y, x], tw.prediction[y, x] == p.label[y, x]
        want = {(True, True): BOTH_RIGHT, (True, False): FIXED, (False, True): BROKEN, (False, False): BOTH_WRONG}
        assert t.outcome[j] == want[(bool(ol_ok), bool(tw_ok))]
        assert t.twin_predicted[j] == tw.prediction[y, x]
    cols = t.columns()
    assert list(cols["class_name"][:5]) == [list("abcd")[c] for c in t.label[:5]]
    assert set(cols["outcome"]) <= {"fixed", "broken", "both wrong", "both right"}
    # stratified: 4 classes share 120 rows equally (each class has far more than 30 pixels)
    np.testing.assert_array_equal(np.bincount(t.label, minlength=K), [30, 30, 30, 30])


def test_table_on_the_shipped_model_uses_the_cell_centre_pixel():
    """Stride 4 on a real probe: (x, y) is the centre of the sampled cell, class/predicted/correct are the
    label and the upsampled argmax there (reference: float arithmetic on the centre, per row)."""
    from offseg_vis.analysis import notebook_support as ns

    model = ns.load_or_train("offset").model
    images, labels, _ = ns.val_samples(2)
    probes = probe(model, images, labels, need={"features", "refined_features", "class_embed"})
    t = explore.pixel_table(probes, max_pixels=400, seed=0)
    p = probes[0]
    h, w = p.feature_size
    stride_y, stride_x = p.padded_size[0] / h, p.padded_size[1] / w
    assert stride_y == stride_x == 4.0
    for j in range(len(t)):
        p = probes[t.image[j]]
        y_ref, x_ref = int((t.row[j] + 0.5) * stride_y), int((t.col[j] + 0.5) * stride_x)
        assert (t.y[j], t.x[j]) == (y_ref, x_ref)
        assert t.label[j] == p.label[y_ref, x_ref]
        assert t.predicted[j] == p.prediction[y_ref, x_ref]
        assert t.correct[j] == (p.prediction[y_ref, x_ref] == p.label[y_ref, x_ref])
    # and back: the pixel falls in its own cell
    r, c = explore.pixel_to_cell(t.x, t.y, p.feature_size, p.padded_size)
    np.testing.assert_array_equal(r, t.row)
    np.testing.assert_array_equal(c, t.col)
    assert explore.pixel_cell(p, 5, 9) == (2, 1)
    with pytest.raises(InputError, match="outside the image"):
        explore.pixel_cell(p, 128, 3)


def test_table_needs_labels_and_matching_twin():
    probes, twins = _probes(2)
    no_label = [make_probe(np.zeros((3, 3, C)), np.ones((K, C)), None, np.zeros((3, 3, C)))]
    with pytest.raises(InputError, match="no ground truth"):
        explore.pixel_table(no_label)
    with pytest.raises(InputError):
        explore.pixel_table(probes, twin_probes=twins[:1])


def test_e_and_e_prime_share_one_fit():
    """PCA map: identical features land at identical coordinates in E and E′, and the coordinates are
    those of one PCA of the stacked, L2-normalised E and E′ (float64 SVD reference, up to axis sign)."""
    same = [(r, c) for r in range(1, 9) for c in range(0, 11, 3)]
    probes, _ = _probes(2, same_features_rows=same)
    t = explore.pixel_table(probes, max_pixels=150, seed=1)
    m = explore.pixel_map(probes, t, method="pca")
    assert m.embedding.method == "pca" and m.embedding.params["points"] == 2 * len(t.sample)
    np.testing.assert_array_equal(m.before, m.embedding.before[t.sample_index])
    np.testing.assert_array_equal(m.after, m.embedding.after[t.sample_index])
    unchanged = np.array([(t.row[j], t.col[j]) in same for j in range(len(t))])
    assert unchanged.sum() > 10 and (~unchanged).sum() > 10
    scale = np.abs(m.before).max()
    np.testing.assert_allclose(m.after[unchanged], m.before[unchanged], rtol=0, atol=1e-6 * scale)
    assert np.abs(m.after[~unchanged] - m.before[~unchanged]).max() > 1e-2 * scale
    # independent reference: PCA by float64 SVD of the stacked normalised rows
    e = np.stack([probes[i].features[r, c] for i, r, c in zip(t.image, t.row, t.col)]).astype(np.float64)
    e2 = np.stack([probes[i].refined_features[r, c] for i, r, c in zip(t.image, t.row, t.col)]).astype(np.float64)
    full_e = np.stack([probes[i].features[r, c] for i, r, c in zip(t.sample.image_index, t.sample.rows, t.sample.cols)])
    full_e2 = np.stack(
        [probes[i].refined_features[r, c] for i, r, c in zip(t.sample.image_index, t.sample.rows, t.sample.cols)]
    )
    data = np.concatenate([full_e, full_e2]).astype(np.float64)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    mean = data.mean(0)
    _, _, vt = np.linalg.svd(data - mean, full_matrices=False)

    def ref(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True) - mean) @ vt[:2].T

    for got, want in ((m.before, ref(e)), (m.after, ref(e2))):
        signs = np.sign((got * want).sum(0))  # PCA axes are defined up to sign
        np.testing.assert_allclose(got * signs, want, rtol=0, atol=1e-5)  # float32 fit of unit vectors
    np.testing.assert_allclose(m.between(0.0), m.before)
    np.testing.assert_allclose(m.between(1.0), m.after)
    np.testing.assert_allclose(m.between(0.25), 0.75 * m.before + 0.25 * m.after)


def test_selection_to_masks_is_true_exactly_at_the_selected_pixels():
    probes, _ = _probes(3)
    t = explore.pixel_table(probes, max_pixels=200, seed=2)
    rng = np.random.default_rng(5)
    sel = rng.choice(len(t), size=37, replace=False)
    masks = explore.selection_to_masks(t, sel, [p.label.shape for p in probes])
    want = {(int(t.image[j]), int(t.y[j]), int(t.x[j])) for j in sel}
    got = {(i, int(y), int(x)) for i, m in enumerate(masks) for y, x in np.argwhere(m)}
    assert got == want
    assert all(not m.any() for m in explore.selection_to_masks(t, []))
    with pytest.raises(InputError, match="must lie in"):
        explore.selection_to_masks(t, [len(t)])
    strip, shown = explore.selection_overlay([p.image for p in probes], masks, cell=1, colour=(255, 0, 255))
    first = shown[0]
    assert masks[first].sum() == max(m.sum() for m in masks)
    marked = np.all(strip[:, : masks[first].shape[1]] == (255, 0, 255), axis=-1)
    np.testing.assert_array_equal(marked, masks[first])
    assert "37 point(s)" in explore.selection_summary(t, sel)


def test_points_in_polygon_is_a_lasso():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-2, 2, size=(500, 2))
    square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])
    want = np.flatnonzero((np.abs(pts) < 1).all(1))
    np.testing.assert_array_equal(explore.points_in_polygon(pts, square), want)


def test_nearest_pixels_equal_a_float64_brute_force_ranking():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(8, 7, 5)).astype(np.float32)
    flat = feats.reshape(-1, 5).astype(np.float64)
    for q in (0, 23, 55):
        sims = []
        for j in range(flat.shape[0]):
            if j != q:
                a, b = flat[q], flat[j]
                sims.append((-(a @ b) / np.sqrt((a @ a) * (b @ b)), j))
        sims.sort()
        nn = explore.nearest_pixels(feats, (q // 7, q % 7), k=20)
        assert nn.query == q
        np.testing.assert_array_equal(nn.flat, [j for _, j in sims[:20]])
        np.testing.assert_allclose(nn.similarity, [-s for s, _ in sims[:20]], rtol=1e-12)
        np.testing.assert_array_equal(nn.rows * 7 + nn.cols, nn.flat)
    # ties go to the lower index; k larger than the image gives every other pixel
    tied = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    nn = explore.nearest_pixels(tied, 0, k=10)
    np.testing.assert_array_equal(nn.flat, [1, 3, 2])
    with pytest.raises(InputError):
        explore.nearest_pixels(feats, (8, 0))


def test_colourings():
    probes, twins = _probes(2)
    t = explore.pixel_table(probes, max_pixels=80, twin_probes=twins, class_names=list("abcd"))
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 2, 3]], np.uint8)
    labels, cmap = explore.colour_by(t, "class", palette)
    assert list(labels) == [list("abcd")[c] for c in t.label]
    assert cmap == {"a": "#ff0000", "b": "#00ff00", "c": "#0000ff", "d": "#010203"}
    labels, cmap = explore.colour_by(t, "correct")
    np.testing.assert_array_equal(labels == "correct", t.correct)
    labels, cmap = explore.colour_by(t, "twin")
    assert set(cmap) == {"fixed", "broken", "both wrong", "both right"}
    np.testing.assert_array_equal(labels == "fixed", t.outcome == FIXED)
    no_twin = explore.pixel_table(probes, max_pixels=80)
    with pytest.raises(InputError, match="needs the twin"):
        explore.colour_by(no_twin, "twin")
    with pytest.raises(InputError):
        explore.colour_by(t, "size")


def test_widget_callbacks_without_a_browser():
    """The notebook's callbacks: the scatter frame's rows are table rows with both coordinate sets, a
    selection gives masks at the selected pixels, one point gives its neighbours in E and E′."""
    import io

    from PIL import Image

    probes, twins = _probes(3)
    t = explore.pixel_table(probes, max_pixels=90, twin_probes=twins, class_names=list("abcd"))
    m = explore.pixel_map(probes, t, method="pca")
    frame = explore.scatter_frame(t, m)
    np.testing.assert_array_equal(frame[["ex", "ey"]].to_numpy(), m.before)
    np.testing.assert_array_equal(frame[["e2x", "e2y"]].to_numpy(), m.after)
    np.testing.assert_array_equal(frame["image"].to_numpy(), t.image)
    assert list(frame["by_twin"]) == list(explore.outcome_names(t.outcome))
    sel = np.flatnonzero(t.label == 2)[:7]
    view = explore.selection_view(t, [p.image for p in probes], sel, scale=3)
    for mask, want in zip(view.masks, explore.selection_to_masks(t, sel)):
        np.testing.assert_array_equal(mask, want)
    png = np.asarray(Image.open(io.BytesIO(view.png)))
    assert png.shape[0] == 3 * 9  # three-fold enlarged 9-pixel-high scenes
    _, text, found = explore.neighbours_view(t, probes, int(sel[0]), k=5)
    p = probes[t.image[sel[0]]]
    for name, feats in (("E", p.features), ("E'", p.refined_features)):
        want = explore.nearest_pixels(feats, (t.row[sel[0]], t.col[sel[0]]), 5)
        np.testing.assert_array_equal(found[name].flat, want.flat)
    assert "5 nearest pixels" in text


def test_scatter_frame_colour_columns_keep_the_colour_maps_order():
    probes, twins = _probes(2)
    t = explore.pixel_table(probes, max_pixels=60, twin_probes=twins, class_names=list("dcba"))
    frame = explore.scatter_frame(t, explore.pixel_map(probes, t, method="pca"))
    for by in explore.COLOUR_BY:
        labels, cmap = explore.colour_by(t, by)
        assert list(frame[f"by_{by}"].cat.categories) == list(cmap)  # not alphabetical
        assert list(frame[f"by_{by}"].astype(str)) == list(labels)
