"""Every plot returns a Figure, draws without pyplot, and shows the numbers it is given."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from offseg_vis.analysis import offsets, plots
from offseg_vis.analysis.compare import OUTCOME_COLORS, compare_to_baseline
from offseg_vis.analysis.corrections import CODE_COLORS, correction_map
from offseg_vis.analysis.embedding import embed_pixels
from offseg_vis.analysis.misalignment import misalignment, misalignment_suite
from offseg_vis.analysis.synthetic import make_probe
from offseg_vis.errors import InputError

K, C = 3, 5
NAMES = ["sky", "cat", "hat"]
PALETTE = [(10, 20, 30), (200, 0, 0), (0, 200, 0)]


def _probe(seed=0, offset=True):
    rng = np.random.default_rng(seed)
    lab = np.zeros((8, 8), dtype=np.int64)
    lab[:, 4:] = 1
    lab[:2, :2] = 2
    feats = rng.normal(size=(8, 8, C)) + 2 * np.eye(C)[lab]
    d_e = rng.normal(size=feats.shape) if offset else None
    return make_probe(feats, rng.normal(size=(K, C)), lab, d_e, 0.2 * rng.normal(size=(K, C)) if offset else None)


@pytest.fixture(scope="module")
def probes():
    return [_probe(i) for i in range(3)]


@pytest.fixture(autouse=True)
def _no_pyplot_figures():
    """No plot may leave a figure in pyplot's global list (a leak in a long-running app)."""
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before


def _check(fig):
    """The figure renders to RGB without pyplot (the drawn values are checked by each test)."""
    assert isinstance(fig, Figure)
    rgb = plots.figure_to_array(fig)
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
    return rgb


def _drawn(ax, n=0):
    """The array given to the n-th imshow of ``ax``."""
    return np.asarray(ax.images[n].get_array())


def test_colorize_and_overlay():
    mask = np.array([[0, 1], [2, 255]])
    rgb = plots.colorize(mask, PALETTE)
    np.testing.assert_array_equal(rgb[0, 1], PALETTE[1])
    np.testing.assert_array_equal(rgb[1, 1], [0, 0, 0])
    img = np.full((2, 2, 3), 100, dtype=np.uint8)
    over = plots.overlay(img, mask, PALETTE, alpha=1.0)
    np.testing.assert_array_equal(over[1, 0], PALETTE[2])
    np.testing.assert_array_equal(over[1, 1], [100, 100, 100])  # ignore pixels keep the image
    with pytest.raises(InputError, match="palette"):
        plots.colorize(mask, PALETTE[:2])


def test_prediction_overlay_legend_lists_present_classes(probes):
    p = probes[0]
    image = np.random.default_rng(0).integers(0, 256, (*p.label.shape, 3), dtype=np.uint8)
    fig = plots.plot_prediction_overlay(image, p.prediction, NAMES, PALETTE, label=p.label, title="x")
    _check(fig)
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_texts == NAMES  # all three classes appear in the label
    # panels: the input itself, the ground-truth overlay, the prediction overlay
    np.testing.assert_array_equal(_drawn(fig.axes[0]), image)
    np.testing.assert_array_equal(_drawn(fig.axes[1]), plots.overlay(image, p.label, PALETTE, 0.55))
    np.testing.assert_array_equal(_drawn(fig.axes[2]), plots.overlay(image, p.prediction, PALETTE, 0.55))
    # alpha = 1 overlay = the colourised mask
    np.testing.assert_array_equal(plots.overlay(image, p.label, PALETTE, 1.0), plots.colorize(p.label, PALETTE))
    grid = plots.plot_segmentation_grid(probes, NAMES, PALETTE)
    _check(grid)
    for r, q in enumerate(probes):
        np.testing.assert_array_equal(_drawn(grid.axes[3 * r]), q.image)
        np.testing.assert_array_equal(_drawn(grid.axes[3 * r + 1]), plots.overlay(q.image, q.label, PALETTE, 0.55))
        np.testing.assert_array_equal(_drawn(grid.axes[3 * r + 2]), plots.overlay(q.image, q.prediction, PALETTE, 0.55))


def test_cosine_heatmaps_follow_fig3_conventions(probes):
    rep = misalignment(probes, class_names=NAMES, min_pixels=1)
    fig = plots.plot_cosine_heatmaps(rep, classes=[0, 1])
    _check(fig)
    mesh = fig.axes[0].collections[0]
    assert mesh.get_cmap().name == "coolwarm" and mesh.get_clim() == (-1, 1)
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(3, 3), rep.cosine_matrices[0])
    with pytest.raises(InputError, match="cosine matrix"):
        plots.plot_cosine_heatmaps(rep, classes=[7])


def test_misalignment_summary_and_offset_plots(probes):
    reports = misalignment_suite(probes, [_probe(9, offset=False)], NAMES, min_pixels=1)
    fig = plots.plot_misalignment_summary(reports)
    _check(fig)
    grid = plots.plot_cosine_heatmap_comparison(reports)
    _check(grid)
    meshes = [ax for ax in grid.axes if ax.collections and ax.get_aspect() == 1.0]
    assert len(meshes) == 3 * 3  # 3 reports x 3 classes (the colourbar axis is not square)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == 3 and labels[0].startswith("offset: before")
    bars = [b.get_height() for b in fig.axes[0].patches]
    expected = [reports[name].consistency[c] for c in range(K) for name in reports]
    np.testing.assert_allclose(sorted(bars), sorted(np.nan_to_num(expected)), atol=1e-12)
    p = probes[0]
    fig = plots.plot_feature_offset_magnitude(p)
    _check(fig)
    np.testing.assert_array_equal(_drawn(fig.axes[0]), p.image)
    np.testing.assert_allclose(_drawn(fig.axes[1]), offsets.feature_offset_ratio(p), rtol=1e-6)
    fig = plots.plot_position_entropy(p)
    _check(fig)
    np.testing.assert_allclose(_drawn(fig.axes[1]), offsets.position_entropy(p), rtol=1e-6)
    fig = plots.plot_class_attention(p, classes=[0, 2], class_names=NAMES)
    _check(fig)
    np.testing.assert_allclose(_drawn(fig.axes[0], 1), p.class_attention[0], rtol=1e-6)
    np.testing.assert_allclose(_drawn(fig.axes[1], 1), p.class_attention[2], rtol=1e-6)
    fig = plots.plot_class_offset_norms(probes, NAMES, PALETTE)
    _check(fig)
    heights = [b.get_height() for b in fig.axes[0].patches]
    from offseg_vis.analysis.offsets import mean_class_offset_ratio

    np.testing.assert_allclose(heights, mean_class_offset_ratio(probes), rtol=1e-6)
    with pytest.raises(InputError, match="Offset Learning"):
        plots.plot_feature_offset_magnitude(_probe(1, offset=False))


def test_correction_map_plot_uses_code_colours(probes):
    cm = correction_map(probes[0])
    fig = plots.plot_correction_map(cm, probes[0].image, NAMES)
    _check(fig)
    image_axes = [ax for ax in fig.axes if ax.images]
    drawn = _drawn(image_axes[-1])
    expected = np.zeros((*cm.codes.shape, 3), np.uint8)
    for code, rgb in CODE_COLORS.items():
        expected[cm.codes == code] = rgb
    np.testing.assert_array_equal(drawn, expected)
    assert "ablation: offsets switched off" in image_axes[-1].get_title()
    _check(plots.plot_correction_map(correction_map((probes[0].prediction, probes[1].prediction))))


def test_twin_comparison_plot_shows_codes_and_class_counts():
    label = np.array([[0, 1, 2, 2], [255, 1, 0, 0]])
    ol_pred = np.array([[0, 1, 0, 1], [2, 2, 0, 0]])
    twin_pred = np.array([[1, 0, 2, 0], [2, 1, 0, 0]])
    feats = np.zeros((2, 4, C))
    ol = make_probe(feats, np.eye(K, C), label, class_offset=np.zeros((K, C)), prediction=ol_pred)
    twin = make_probe(feats, np.eye(K, C), label, prediction=twin_pred)
    comp = compare_to_baseline([ol], [twin], NAMES)
    image = np.full((2, 4, 3), 7, np.uint8)
    fig = plots.plot_twin_comparison(comp, 0, image)
    _check(fig)
    np.testing.assert_array_equal(_drawn(fig.axes[0]), image)
    expected = np.zeros((2, 4, 3), np.uint8)
    for code, rgb in OUTCOME_COLORS.items():
        expected[comp.codes[0] == code] = rgb
    np.testing.assert_array_equal(_drawn(fig.axes[1]), expected)
    # stacked bars: fixed, broken, both wrong per ground-truth class, in that order
    widths = np.array([b.get_width() for b in fig.axes[2].patches]).reshape(3, K)
    np.testing.assert_array_equal(widths, comp.class_counts[:, :3].T)
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert legend[0] == "fixed (twin wrong, OL right): 2" and legend[-1] == "ignored (unlabelled): 1"
    with pytest.raises(InputError, match="not among"):
        plots.plot_twin_comparison(comp, 3)


def test_joint_embedding_plot_filters_classes(probes):
    emb = embed_pixels(probes, max_points=120, method="pca", n_arrows=10)
    fig = plots.plot_joint_embedding(emb, NAMES, PALETTE, classes=[1])
    _check(fig)
    scatter = fig.axes[0].collections[0]
    assert scatter.get_offsets().shape[0] == int((emb.classes == 1).sum())
    _check(plots.plot_joint_embedding(emb, NAMES, PALETTE, images=[0], show_arrows=False))
    lin = embed_pixels([_probe(4, offset=False)], max_points=50, method="pca")
    _check(plots.plot_joint_embedding(lin, NAMES, PALETTE))


def test_confusion_iou_and_training_curves():
    conf = np.array([[5, 1, 0], [0, 4, 2], [0, 0, 3]])
    fig = plots.plot_confusion_matrix(conf, NAMES)
    _check(fig)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array()[0], [5 / 6, 1 / 6, 0])
    fig = plots.plot_iou_bars({"offset": np.array([0.5, 0.7, np.nan]), "linear": np.array([0.4, 0.6, 0.2])}, NAMES)
    _check(fig)
    assert "mIoU 60.0" in fig.axes[0].get_legend().get_texts()[0].get_text()
    fig = plots.plot_training_curves(
        {
            "offset": {"step": [1, 2, 3], "loss": [3.0, 2.0, 1.5], "eval_step": [2, 3], "mIoU": [0.1, 0.3]},
            "linear": {"loss": [3, 2.5], "mIoU": []},
        }
    )
    _check(fig)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "mIoU"]
    np.testing.assert_array_equal(fig.axes[1].lines[0].get_xdata(), [2, 3])  # mIoU against eval_step
    with pytest.raises(InputError, match="no metric"):
        plots.plot_training_curves({"a": {"step": [1]}})


def test_default_palette_sizes():
    assert plots.default_palette(5).shape == (5, 3)
    assert len({tuple(c) for c in plots.default_palette(40)}) == 40
