"""The app's linked pixel <-> embedding view, without a browser: what a click shows equals what the
analysis computes (scores = the probe's logits at the clicked cell, neighbours = a brute-force cosine
ranking, W markers = centred W placed by an independent PCA fit), the map is fitted once per image, and
bad clicks get sentences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.decomposition import PCA

from offseg_vis.analysis.probe import IGNORE_INDEX, probe
from offseg_vis.app import callbacks, pixels, render
from offseg_vis.app.callbacks import AppContext, AppSettings
from offseg_vis.app.examples import example_images, mask_path
from offseg_vis.app.testing import checkpoints_or_untrained
from offseg_vis.errors import InputError

CLICKS = [(70, 41), (5, 120), (127, 0), (64, 64)]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    torch.set_flush_denormal(True)
    try:
        paths = checkpoints_or_untrained(tmp_path_factory.mktemp("checkpoints"))
        yield AppContext.from_checkpoints(paths, AppSettings(warm_up_umap=False))  # PCA maps: deterministic
    finally:
        torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def scene():
    path = example_images()[0]
    return path, np.asarray(Image.open(path).convert("RGB")), np.asarray(Image.open(mask_path(path)), np.int64)


@pytest.fixture()
def analysis(ctx, scene):
    a = callbacks.segment(ctx, scene[0]).analysis
    callbacks.map_panel(ctx, a, "auto")
    return a


def _cell(p, x, y):
    """Image pixel -> feature cell, written out: row ⌊y·h/Hp⌋, column ⌊x·w/Wp⌋."""
    (h, w), (hp, wp) = p.feature_size, p.padded_size
    return (y * h) // hp, (x * w) // wp


def _cosine_ranking(feats: np.ndarray, q: int, k: int) -> list[int]:
    """Brute force in float64: every other point's cosine similarity to point q, best first."""
    f = feats.astype(np.float64)
    sims = []
    for j in range(f.shape[0]):
        if j != q:
            sims.append((-(f[j] @ f[q]) / (np.linalg.norm(f[j]) * np.linalg.norm(f[q])), j))
    return [j for _, j in sorted(sims)[:k]]


def test_click_scores_equal_the_probe_logits_at_the_clicked_cell(ctx, analysis, scene):
    offset = ctx.registry.get(None)
    twin, _ = ctx.registry.twin_for(offset)
    p = callbacks.full_probe(ctx, analysis)
    lin = probe(twin.model, [scene[1]], [scene[2]], need={"prediction", "logits"})[0]
    for x, y in CLICKS:
        panel = callbacks.pixel_panel(ctx, analysis, x, y)
        r, c = _cell(p, x, y)
        rep = panel.report
        assert (rep.row, rep.col) == (r, c)
        np.testing.assert_array_equal(rep.scores.scores, p.logits[:, r, c].astype(np.float64))
        np.testing.assert_array_equal(rep.ablation.scores, p.logits_without_offsets[:, r, c].astype(np.float64))
        np.testing.assert_array_equal(rep.position_attention, p.position_attention[r, c].astype(np.float64))
        # the twin was run by the app on the same image: equal to a run here up to float32 rounding
        # (logits ~10, a 1x1 conv over ~100 channels: 1e-4 is far below any score gap that matters)
        np.testing.assert_allclose(rep.twin.scores, lin.logits[:, r, c], atol=1e-4)
        names = offset.class_names
        info = panel.info
        assert info["offset_learning"]["predicted"] == names[p.prediction[y, x]]
        assert info["per_pixel_twin"]["predicted"] == names[lin.prediction[y, x]]
        assert info["ground_truth"] == (None if scene[2][y, x] == IGNORE_INDEX else names[scene[2][y, x]])
        best = np.argsort(-p.logits[:, r, c].astype(np.float64), kind="stable")[:5]
        assert [t["class"] for t in info["offset_learning"]["top5"]] == [names[k] for k in best]
        probs = np.exp(p.logits[:, r, c] - p.logits[:, r, c].max())
        probs /= probs.sum()
        np.testing.assert_allclose([t["probability"] for t in info["offset_learning"]["top5"]], probs[best], atol=6e-5)
        # the chart holds the three score series of the same cell, labelled
        frame = panel.scores
        after = frame[frame.series == "Offset Learning"].set_index("class")["score"]
        ablation = frame[frame.series == "before the offsets (ablation)"].set_index("class")["score"]
        assert set(frame.series) == {"Offset Learning", "before the offsets (ablation)", "per-pixel twin"}
        for k, name in enumerate(names):
            assert after[name] == pytest.approx(float(p.logits[k, r, c]), abs=0)
            assert ablation[name] == pytest.approx(float(p.logits_without_offsets[k, r, c]), abs=0)
        att = panel.attention.set_index("class")["attention"]
        assert att.to_dict() == pytest.approx(
            {names[k]: float(p.position_attention[r, c, k]) for k in range(len(names))}
        )


def test_neighbours_are_the_brute_force_cosine_ranking_in_e_and_e_prime(ctx, analysis):
    p = callbacks.full_probe(ctx, analysis)
    m = analysis.image_map
    assert m.stride == 1 and len(m) == p.feature_size[0] * p.feature_size[1]  # every cell of the scene
    for x, y in CLICKS[:2]:
        rep = callbacks.pixel_panel(ctx, analysis, x, y).report
        r, c = _cell(p, x, y)
        q = r * p.feature_size[1] + c
        assert rep.point == q and (m.pixels.sample.rows[q], m.pixels.sample.cols[q]) == (r, c)
        for space, grid in (("E", p.features), ("E'", p.refined_features)):
            flat = grid.reshape(-1, grid.shape[-1])  # (h*w, C), row-major like the map's points
            assert rep.neighbours[space].flat.tolist() == _cosine_ranking(flat, q, 20)


def test_maps_mark_the_pixel_its_arrow_its_neighbours_and_centred_w(ctx, analysis):
    p = callbacks.full_probe(ctx, analysis)
    m = analysis.image_map
    x, y = CLICKS[0]
    panel = callbacks.pixel_panel(ctx, analysis, x, y)
    rep = panel.report
    before, after = panel.maps.before, panel.maps.after
    emb = m.embedding
    j = rep.point
    for frame in (before, after):
        e_mark = frame[frame.kind == "clicked pixel: E"][["u", "v"]].to_numpy()
        e2_mark = frame[frame.kind == "clicked pixel: E′"][["u", "v"]].to_numpy()
        assert len(e_mark) == len(e2_mark) == 1 + pixels.RING_DOTS  # the point, then a ring around it
        e, e2 = e_mark[:1], e2_mark[:1]
        np.testing.assert_array_equal(e, emb.before[j : j + 1].astype(np.float64))
        np.testing.assert_array_equal(e2, emb.after[j : j + 1].astype(np.float64))
        for mark in (e_mark, e2_mark):
            radii = np.linalg.norm(mark[1:] - mark[0], axis=1)
            np.testing.assert_allclose(radii, radii[0], rtol=1e-9)  # a circle centred on the point
            np.testing.assert_allclose(mark[1:].mean(0), mark[0], atol=1e-9 + 1e-9 * radii[0])
        arrow = frame[frame.kind == "arrow E → E′"][["u", "v"]].to_numpy()
        assert len(arrow) == pixels.ARROW_DOTS
        # the dots lie on the segment from E to E′, in order
        d = (e2 - e)[0]
        t = (arrow - e) @ d / float(d @ d)  # (12,) position along the segment
        np.testing.assert_allclose(arrow, e + t[:, None] * d, atol=1e-6)
        assert np.all(np.diff(t) > 0) and 0 < t.min() and t.max() < 1
    for frame, space, coords in ((before, "E", emb.before), (after, "E'", emb.after)):
        label = "nearest 20 in E" if space == "E" else "nearest 20 in E′"
        marked = frame[frame.kind == label][["u", "v"]].to_numpy()
        np.testing.assert_array_equal(marked, coords[rep.neighbours[space].flat].astype(np.float64))
    # W and W′ are centred over the classes, then placed by the map's PCA: an independent PCA fit on the
    # same rows (L2-normalised E and E′ of every cell) places them at the same points.
    flat = lambda g: g.reshape(-1, g.shape[-1]).astype(np.float32)  # noqa: E731
    unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    data = unit(np.concatenate([flat(p.features), flat(p.refined_features)]))
    pca = PCA(n_components=2, random_state=0).fit(data)
    w = p.class_embed.astype(np.float64)
    w_ref = p.refined_class_embed.astype(np.float64)
    want_w = pca.transform(unit((w - w.mean(0)).astype(np.float32)))
    want_w2 = pca.transform(unit((w_ref - w_ref.mean(0)).astype(np.float32)))
    got_w = before[before.kind == "W (class embeddings)"][["u", "v"]].to_numpy()
    got_w2 = after[after.kind == "W′ (after ΔW)"][["u", "v"]].to_numpy()
    np.testing.assert_allclose(got_w, want_w, atol=1e-4)  # float32 PCA on ~2k rows: |coords| < 1
    np.testing.assert_allclose(got_w2, want_w2, atol=1e-4)
    uncentred = pca.transform(unit(w.astype(np.float32)))
    assert np.abs(uncentred - got_w).max() > 1e-2  # the check can tell centred from raw W
    # hover: class, pixel and whether it is right, for every point
    points = before.iloc[: len(m)]
    names = np.asarray(ctx.registry.get(None).class_names, dtype=object)
    assert points["pixel"].tolist() == [f"({a}, {b})" for a, b in zip(m.x, m.y)]
    truth = p.label[m.y, m.x]
    right = np.where(p.prediction[m.y, m.x] == truth, "yes", "no")
    right[truth == IGNORE_INDEX] = "unlabelled"
    assert points["correct"].tolist() == right.tolist()
    assert points["predicted"].tolist() == names[p.prediction[m.y, m.x]].tolist()


def test_clicks_never_refit_the_map_and_a_class_choice_marks_w_k(ctx, analysis, monkeypatch):
    fitted = analysis.image_map
    calls = []
    monkeypatch.setattr(pixels, "fit_image_map", lambda *a, **k: calls.append(a))
    for x, y in CLICKS:
        callbacks.pixel_panel(ctx, analysis, x, y)
    names = ctx.registry.get(None).class_names
    labels = fitted.label[fitted.label != IGNORE_INDEX]
    present = int(np.bincount(labels).argsort()[-2])  # the second most common ground-truth class in the map
    panel = callbacks.class_panel(ctx, analysis, names[present])
    assert calls == [] and analysis.image_map is fitted
    before, after = panel.maps.before, panel.maps.after
    w = before[before.kind == "W (class embeddings)"]
    w2 = after[after.kind == "W′ (after ΔW)"]
    assert w["class"].tolist() == [names[present]] and w2["class"].tolist() == [names[present]]
    np.testing.assert_array_equal(w[["u", "v"]].to_numpy()[0], fitted.embedding.class_embed[present])
    np.testing.assert_array_equal(w2[["u", "v"]].to_numpy()[0], fitted.embedding.refined_class_embed[0, present])
    points = before.iloc[: len(fitted)]
    shown = np.where(fitted.label == IGNORE_INDEX, fitted.predicted, fitted.label)
    assert (points.kind == names[present]).to_numpy().tolist() == (shown == present).tolist()
    assert set(points.kind) == {names[present], pixels.OTHER}
    # on the image: pixels of other classes are gray, the class keeps its colour
    pic = panel.picture
    f = pic.shape[0] // analysis.probe.input_size[0]
    small = pic[::f, ::f].astype(int)
    other = analysis.probe.prediction != present
    far = other.copy()
    far[max(0, CLICKS[-1][1] - 6) : CLICKS[-1][1] + 6, max(0, CLICKS[-1][0] - 6) : CLICKS[-1][0] + 6] = False
    rep = panel.report
    for space in rep.neighbours:
        for j in rep.neighbours[space].flat:
            far[max(0, fitted.y[j] - 3) : fitted.y[j] + 3, max(0, fitted.x[j] - 3) : fitted.x[j] + 3] = False
    assert np.all(small[far][:, 0] == small[far][:, 1]) and np.all(small[far][:, 1] == small[far][:, 2])
    assert callbacks.class_panel(ctx, analysis, callbacks.ALL_CLASSES).maps.before.kind.nunique() > 2
    with pytest.raises(InputError, match="Unknown class"):
        callbacks.class_panel(ctx, analysis, "unicorn")


def test_picture_marks_the_click_and_the_neighbours(ctx, analysis):
    x, y = CLICKS[0]
    panel = callbacks.pixel_panel(ctx, analysis, x, y)
    m, rep, p = analysis.image_map, panel.report, analysis.probe
    pic = panel.picture
    f = pic.shape[0] // p.input_size[0]
    assert pic.shape == (f * p.input_size[0], f * p.input_size[1], 3) and f == 3  # 128 px scene -> 384
    e2 = set(rep.neighbours["E'"].flat.tolist())
    for space in ("E", "E'"):
        for j in rep.neighbours[space].flat:
            if max(abs(int(m.x[j]) - x), abs(int(m.y[j]) - y)) <= 4:
                continue  # under the click's ring, which is drawn last
            colour = render.NEIGHBOUR_RGB["E'" if j in e2 else space]  # E′ is drawn on top
            assert tuple(pic[f * m.y[j], f * m.x[j]]) == colour
    cell = p.padded_size[0] // p.feature_size[0]
    ring_y, ring_x = y - (cell + 4) // 2, x - (cell + 4) // 2  # the ring's top-left corner
    assert tuple(pic[f * ring_y, f * ring_x]) == render.CLICKED_RGB
    # a click on the enlarged picture maps back to image pixels
    assert callbacks.display_to_image(analysis, (f * x + 1, f * y + 2), "picture") == (x, y)
    assert callbacks.display_to_image(analysis, (x, y), "input") == (x, y)  # the gallery file is not scaled


def test_bad_clicks_get_sentences(ctx, analysis):
    with pytest.raises(InputError, match="Segment an image first"):
        callbacks.pixel_panel(ctx, None, 1, 1)
    with pytest.raises(InputError, match="Segment an image first"):
        callbacks.pixel_info(ctx, None, 1, 1)
    with pytest.raises(InputError, match="outside the image, which is 128 wide and 128 high"):
        callbacks.pixel_panel(ctx, analysis, 128, 3)
    with pytest.raises(InputError, match="outside the image"):
        callbacks.pixel_info(ctx, analysis, 3, -1)
    with pytest.raises(InputError, match="numeric x and y"):
        callbacks.pixel_info(ctx, analysis, None, 3)
    with pytest.raises(InputError, match="Unknown embedding method"):
        callbacks.map_panel(ctx, analysis, "tsne")


def test_map_stride_keeps_the_budget_and_snaps_clicks():
    assert pixels.map_stride((32, 32), 3000) == 1
    assert pixels.map_stride((32, 32), 750) == 2  # 16 x 16 = 256 <= 750 < 1024
    assert pixels.map_stride((128, 128), 3000) == 3  # 43 x 43 = 1849
    for h, w, budget in ((128, 128, 3000), (50, 77, 100), (7, 3, 1)):
        s = pixels.map_stride((h, w), budget)
        assert -(-h // s) * -(-w // s) <= budget
        assert s == 1 or -(-h // (s - 1)) * -(-w // (s - 1)) > budget  # the smallest such stride
