"""Ideal class representation mining (W* = M·(Eᵀ)⁺) on inputs whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offseg_vis.analysis.misalignment import (
    cosine_matrix,
    ideal_class_embed,
    misalignment,
    misalignment_suite,
    per_class_table,
    summary_table,
)
from offseg_vis.analysis.synthetic import make_probe
from offseg_vis.errors import InputError

K, H, W = 3, 6, 8


pytestmark = pytest.mark.usefixtures("one_thread")  # small models on shared cores


def _label(seed: int = 0) -> np.ndarray:
    """(H, W) label using all K classes, in blocks."""
    lab = np.zeros((H, W), dtype=np.int64)
    lab[:, 3:6] = 1
    lab[:, 6:] = 2
    return np.roll(lab, seed, axis=1)


def _features_with_onehot(label: np.ndarray, sign: float = 1.0, extra: int = 5, seed: int = 0) -> np.ndarray:
    """E = [sign·Mᵀ | R] with R orthogonal to the one-hot columns, so W* = [sign·I | 0] exactly."""
    rng = np.random.default_rng(seed)
    m_t = np.eye(K)[label.reshape(-1)]  # (N, K)
    r = rng.normal(size=(m_t.shape[0], extra))
    r -= m_t @ np.linalg.lstsq(m_t, r, rcond=None)[0]  # project out the span of Mᵀ
    return np.concatenate([sign * m_t, r], axis=1).reshape(H, W, K + extra)


def test_ideal_embed_recovers_known_w_star_and_fits_labels_exactly():
    lab = _label()
    feats = _features_with_onehot(lab)
    w_star, pred = ideal_class_embed(feats, lab, K)
    expected = np.concatenate([np.eye(K), np.zeros((K, 5))], axis=1)
    np.testing.assert_allclose(w_star, expected, atol=1e-8)
    np.testing.assert_array_equal(pred, lab.reshape(-1))


def test_ideal_embed_matches_numpy_pinv_on_random_features():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(40, 7))
    lab = rng.integers(0, K, 40)
    w_star, _ = ideal_class_embed(feats, lab, K, rcond=1e-10)
    m = np.eye(K)[lab].T  # (K, N)
    np.testing.assert_allclose(w_star, m @ np.linalg.pinv(feats.T), rtol=1e-8, atol=1e-10)


def test_ignored_pixels_do_not_change_w_star():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(30, 6))
    lab = rng.integers(0, K, 30)
    w_ref, _ = ideal_class_embed(feats, lab, K)
    feats2 = np.concatenate([feats, 100 * rng.normal(size=(10, 6))])
    lab2 = np.concatenate([lab, np.full(10, 255)])
    w_ign, _ = ideal_class_embed(feats2, lab2, K)
    np.testing.assert_allclose(w_ign, w_ref, atol=1e-10)


def test_rcond_cuts_tiny_singular_directions():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(50, 4))
    feats = np.concatenate([base, 1e-9 * rng.normal(size=(50, 1))], axis=1)  # one near-null direction
    lab = rng.integers(0, K, 50)
    w_cut, _ = ideal_class_embed(feats, lab, K, rcond=1e-5)
    assert np.abs(w_cut[:, 4]).max() < 1e-6  # the noise direction gets no weight
    w_keep, _ = ideal_class_embed(feats, lab, K, rcond=1e-14)
    assert np.abs(w_keep[:, 4]).max() > 1e3  # without the cut-off it explodes


def test_report_consistency_alignment_and_sanity_on_known_case():
    # Two images with W* = [I|0] and one with W* = [-I|0]; W = [I|0] (perfectly aligned with the first two).
    w = np.concatenate([np.eye(K), np.zeros((K, 5))], axis=1)
    probes = [
        make_probe(_features_with_onehot(_label(0), 1.0, seed=0), w, _label(0)),
        make_probe(_features_with_onehot(_label(1), 1.0, seed=1), w, _label(1)),
        make_probe(_features_with_onehot(_label(2), -1.0, seed=2), w, _label(2)),
    ]
    rep = misalignment(probes, class_names=["a", "b", "c"], min_pixels=1)
    # cosines: (+1, -1, -1) off-diagonal pairs -> mean -1/3 for every class.
    np.testing.assert_allclose(rep.consistency, -1 / 3, atol=1e-9)
    np.testing.assert_allclose(rep.alignment, 1 / 3, atol=1e-9)  # mean of (1, 1, -1)
    np.testing.assert_allclose(rep.embed_consistency, 1.0)  # a fixed W
    np.testing.assert_allclose(rep.sanity_iou, 1.0)
    assert rep.sanity_miou == pytest.approx(1.0)
    m = rep.cosine_matrices[0]
    np.testing.assert_allclose(m, [[1, 1, -1], [1, 1, -1], [-1, -1, 1]], atol=1e-9)
    assert rep.matrix_images[0] == [0, 1, 2]
    assert rep.pixel_counts.shape == (3, K)
    assert rep.rows()[-1]["class"] == "overall"


def test_images_per_class_limits_the_heatmap_and_min_pixels_filters():
    w = np.concatenate([np.eye(K), np.zeros((K, 5))], axis=1)
    probes = [make_probe(_features_with_onehot(_label(i % 3), seed=i), w, _label(i % 3)) for i in range(5)]
    rep = misalignment(probes, images_per_class=2, min_pixels=1)
    assert rep.cosine_matrices[1].shape == (2, 2)
    rep_strict = misalignment(probes, min_pixels=1000)
    assert np.isnan(rep_strict.consistency).all() and not rep_strict.cosine_matrices


def test_after_stage_uses_refined_features_and_embeddings():
    lab = _label()
    feats = _features_with_onehot(lab)
    w = np.concatenate([np.eye(K), np.zeros((K, 5))], axis=1)
    # ΔE flips every feature: E' = -E, so W*' = -W*; ΔW = -2W gives W' = -W: aligned again.
    p = make_probe(feats, w, lab, feature_offset=-2 * feats, class_offset=-2 * w)
    before = misalignment([p, p], "before", min_pixels=1)
    after = misalignment([p, p], "after", min_pixels=1)
    np.testing.assert_allclose(after.ideal, -before.ideal, atol=1e-9)
    np.testing.assert_allclose(after.alignment, 1.0, atol=1e-9)


def test_zero_offsets_make_before_equal_after_on_a_real_model():
    from offseg_vis.analysis.probe import probe
    from offseg_vis.models import build_model

    model = build_model("offseg-mbv2", 4, "offset")
    with torch.no_grad():
        model.classifier.cls_offset_proj.weight.zero_()
        model.classifier.feat_offset_proj.weight.zero_()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    labels = [np.repeat(np.arange(4), 16)[None].repeat(64, 0) for _ in range(2)]
    probes = probe(model, images, labels)
    reports = misalignment_suite(probes, class_names=list("abcd"), min_pixels=1)
    before, after = reports["offset: before (E, W)"], reports["offset: after (E', W')"]
    np.testing.assert_allclose(after.ideal, before.ideal, atol=1e-9)
    np.testing.assert_allclose(after.consistency, before.consistency, atol=1e-9)
    np.testing.assert_allclose(after.alignment, before.alignment, atol=1e-9)
    assert "consistency" in summary_table(reports) and "overall" in per_class_table(reports, "alignment")


def test_errors_for_missing_labels_linear_after_and_bad_stage():
    w = np.eye(K)
    feats = np.random.default_rng(0).normal(size=(H, W, K))
    with pytest.raises(InputError, match="ground truth"):
        misalignment([make_probe(feats, w, None)])
    with pytest.raises(InputError, match="per-pixel"):
        misalignment([make_probe(feats, w, _label())], stage="after")
    with pytest.raises(InputError, match="stage"):
        misalignment([make_probe(feats, w, _label())], stage="middle")
    with pytest.raises(InputError, match="class names"):
        misalignment([make_probe(feats, w, _label())], class_names=["x"])
    with pytest.raises(InputError, match="metric"):
        per_class_table({"r": misalignment([make_probe(feats, w, _label())])}, "nope")


def test_cosine_matrix_handles_zero_rows():
    m = cosine_matrix(np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0]]))
    np.testing.assert_allclose(m, [[1, 0, 1], [0, 0, 0], [1, 0, 1]])


def test_centering_ignores_a_shift_shared_by_all_classes():
    # Adding one vector to every class representation changes no prediction; centred scores ignore it.
    rng = np.random.default_rng(5)
    lab = _label()
    feats = rng.normal(size=(H, W, 4))
    w = rng.normal(size=(K, 4))
    shifted = w + 10 * rng.normal(size=(1, 4))
    probes, probes_shifted = [make_probe(feats, w, lab)], [make_probe(feats, shifted, lab)]
    centred = misalignment(probes, min_pixels=1).alignment
    np.testing.assert_allclose(misalignment(probes_shifted, min_pixels=1).alignment, centred, atol=1e-5)
    raw = misalignment(probes, min_pixels=1, center=False).alignment
    raw_shifted = misalignment(probes_shifted, min_pixels=1, center=False).alignment
    assert np.abs(raw - raw_shifted).max() > 0.1


# ----------------------------------------------------------------------------- the regulariser sweep


def test_ridge_and_pinv_recover_planted_prototypes_at_small_regulariser():
    lab = _label()
    feats = _features_with_onehot(lab)
    expected = np.concatenate([np.eye(K), np.zeros((K, 5))], axis=1)  # the planted W*
    for method, knob in (("pinv", {"rcond": 1e-8}), ("ridge", {"ridge": 1e-10})):
        w_star, pred = ideal_class_embed(feats, lab, K, method=method, **knob)
        np.testing.assert_allclose(w_star, expected, atol=1e-8)
        np.testing.assert_array_equal(pred, lab.reshape(-1))


def test_ridge_closed_form_when_all_singular_values_are_equal():
    """E = s·Q with orthonormal columns Q: ridge W* = (M·Q/s) / (1 + λ) exactly (λ relative to s_max²)."""
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.normal(size=(40, 6)))  # (40, 6) orthonormal columns
    feats = 3.0 * q
    lab = rng.integers(0, K, 40)
    m = np.eye(K)[lab].T  # (K, N)
    exact = m @ q / 3.0
    for lam in (1e-4, 1e-2, 1e-1, 1.0):
        w_star, _ = ideal_class_embed(feats, lab, K, method="ridge", ridge=lam)
        np.testing.assert_allclose(w_star, exact / (1 + lam), rtol=1e-10, atol=1e-12)


def test_class_mean_prototypes_are_the_class_means():
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(H, W, 4))
    lab = _label()
    lab[0, 0] = 255
    w_star, _ = ideal_class_embed(feats, lab, K + 1, method="class_mean")  # class 3 absent -> zero row
    for k in range(K):
        sel = lab == k
        np.testing.assert_allclose(w_star[k], feats[sel].mean(0), rtol=1e-12)
    np.testing.assert_array_equal(w_star[K], 0)
    with pytest.raises(InputError, match="Unknown W\\* method"):
        ideal_class_embed(feats, lab, K, method="lasso")
    with pytest.raises(InputError, match="needs ridge"):
        ideal_class_embed(feats, lab, K, method="ridge")


def _sweep_probes(n=4, shift=0.0):
    """Offset probes whose E carries class structure plus noise, and linear ones on other features."""
    out_o, out_l = [], []
    for i in range(n):
        rng = np.random.default_rng(10 + i)
        lab = _label(i)
        feats = 2 * np.eye(6)[lab][..., :6] + rng.normal(size=(H, W, 6))
        out_o.append(
            make_probe(
                feats, rng.normal(size=(K, 6)), lab, rng.normal(size=feats.shape) * 0.3, 0.3 * rng.normal(size=(K, 6))
            )
        )
        out_l.append(make_probe(feats + shift * rng.normal(size=feats.shape), rng.normal(size=(K, 6)), lab))
    return out_o, out_l


def test_sweep_equals_direct_reports_at_every_setting():
    from offseg_vis.analysis.misalignment import misalignment_sweep

    off, lin = _sweep_probes(shift=0.5)
    table = misalignment_sweep(off, lin, rconds=(1e-5, 1e-1), ridges=(1e-3,), min_pixels=1)
    assert [s.label for s in table.settings] == ["rcond 1e-05", "rcond 1e-01", "ridge λ 1e-03", "class means"]
    assert table.models == ["offset: before (E, W)", "offset: after (E', W')", "linear (E, W)"]
    direct_kwargs = [
        {"rcond": 1e-5},
        {"rcond": 1e-1},
        {"method": "ridge", "ridge": 1e-3},
        {"method": "class_mean"},
    ]
    for i, kw in enumerate(direct_kwargs):
        for j, (probes, stage) in enumerate(((off, "before"), (off, "after"), (lin, "before"))):
            rep = misalignment(probes, stage, min_pixels=1, **kw)
            assert table.consistency[i, j] == pytest.approx(rep.overall_consistency, abs=1e-12)
            assert table.alignment[i, j] == pytest.approx(rep.overall_alignment, abs=1e-12)
            assert table.sanity_miou[i, j] == pytest.approx(rep.sanity_miou, abs=1e-12)
    assert len(table.rows()) == 4 * 3 and table.images == 4
    md = table.markdown().splitlines()
    assert len(md) == 2 + 4 and md[2].startswith("| rcond 1e-05 |")


def test_stable_orderings_flags_known_orderings():
    from offseg_vis.analysis.misalignment import SweepSetting, SweepTable, stable_orderings

    settings = [SweepSetting("pinv", 1e-5), SweepSetting("pinv", 1e-2), SweepSetting("ridge", 1e-3)]
    # model a > b everywhere; a vs c flips at the ridge setting; b vs c ties at rcond 1e-2
    cons = np.array([[0.5, 0.2, 0.1], [0.6, 0.3, 0.3], [0.4, 0.1, 0.7]])
    table = SweepTable(settings, ["a", "b", "c"], cons, cons.copy(), np.ones((3, 3)))
    checks = {(c.first, c.second): c for c in stable_orderings(table, "consistency")}
    assert checks[("a", "b")].holds and "a is above b at all 3 settings" in checks[("a", "b")].statement
    np.testing.assert_allclose(checks[("a", "b")].differences, [0.3, 0.3, 0.3])
    assert not checks[("a", "c")].holds and "ridge λ 1e-03" in checks[("a", "c")].statement
    assert not checks[("b", "c")].holds and "rcond 1e-02" in checks[("b", "c")].statement
    pinv_only = {(c.first, c.second): c.holds for c in stable_orderings(table, "consistency", ("pinv",))}
    assert pinv_only == {("a", "b"): True, ("a", "c"): True, ("b", "c"): False}
    below = stable_orderings(table, "alignment", ("ridge",))
    assert [c.holds for c in below] == [True, True, True]  # one setting: every strict sign holds
    assert "below" in below[1].statement  # a (0.4) below c (0.7)
    with pytest.raises(InputError, match="No setting"):
        stable_orderings(table, "consistency", ("class_mean",))
    with pytest.raises(InputError, match="Unknown sweep metric"):
        stable_orderings(table, "accuracy")


def test_sweep_page_and_figure_carry_every_score():
    from offseg_vis.analysis.commands import sweep_page
    from offseg_vis.analysis.misalignment import misalignment_sweep
    from offseg_vis.analysis.plots import plot_misalignment_sweep

    off, lin = _sweep_probes(shift=0.5)
    table = misalignment_sweep(off, lin, rconds=(1e-5, 1e-2), ridges=(1e-4,), min_pixels=1)
    page = sweep_page(table, "offseg analyse sweep X Y", "Used: test.", 1.0)
    assert table.markdown() in page and "`offseg analyse sweep X Y`" in page
    assert page.count("holds") >= 3 * 3 * 2  # 3 pairs x 3 setting groups x 2 metrics
    fig = plot_misalignment_sweep(table)
    for ax, metric in zip(fig.axes, ("consistency", "alignment", "sanity_miou")):
        for j, line in enumerate(ax.lines[: len(table.models)]):
            np.testing.assert_allclose(line.get_ydata(), table.values(metric)[:, j])
