"""Matplotlib figures for the notebooks, the app and the docs.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (its canvas is Agg), so
it never opens a window, never calls ``plt.show()``, never touches pyplot's global figure list (no leak
in a long-running app, safe from threads) and works the same headless or under ``%matplotlib inline``
(Jupyter shows a returned Figure). Save with ``fig.savefig(path)``; :func:`figure_to_array` gives RGB.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from offseg_vis.analysis import offsets
from offseg_vis.analysis.compare import OUTCOME_CODES, OUTCOME_COLORS, OUTCOME_LABELS, OUTCOMES, TwinComparison
from offseg_vis.analysis.corrections import CODE_COLORS, CODE_NAMES, IGNORED, CorrectionMap
from offseg_vis.analysis.embedding import JointEmbedding
from offseg_vis.analysis.misalignment import SCORE_LABELS, MisalignmentReport, SweepTable
from offseg_vis.analysis.probe import IGNORE_INDEX, ImageProbe
from offseg_vis.errors import InputError


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A Figure with an Agg canvas, outside pyplot."""
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an (H, W, 3) uint8 array."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def default_palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 distinct colours (tab20, then hsv) for when a dataset has no palette."""
    base = (np.array(colormaps["tab20"].colors) * 255).astype(np.uint8)
    if num_classes <= len(base):
        return base[:num_classes]
    hsv = (colormaps["hsv"](np.linspace(0, 1, num_classes, endpoint=False))[:, :3] * 255).astype(np.uint8)
    return hsv


def _palette(palette, k: int) -> np.ndarray:
    if palette is None:
        return default_palette(k)
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if pal.shape[0] < k:
        raise InputError(f"The palette has {pal.shape[0]} colours but there are {k} classes.")
    return pal


def _names(class_names, k: int) -> list[str]:
    return list(class_names) if class_names is not None else [f"class {i}" for i in range(k)]


def colorize(mask: np.ndarray, palette, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; ignore pixels black."""
    mask = np.asarray(mask)
    valid = mask != ignore_index
    k = int(mask[valid].max()) + 1 if valid.any() else 1
    pal = _palette(palette, k)
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    out[valid] = pal[mask[valid]]
    return out


def overlay(
    image: np.ndarray, mask: np.ndarray, palette, alpha: float = 0.5, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Blend class colours over an (H, W, 3) uint8 image -> (H, W, 3) uint8 (ignore pixels untouched)."""
    colours = colorize(mask, palette, ignore_index).astype(np.float32)
    img = np.asarray(image, dtype=np.float32)
    blend = (1 - alpha) * img + alpha * colours
    blend[np.asarray(mask) == ignore_index] = img[np.asarray(mask) == ignore_index]
    return np.clip(blend, 0, 255).astype(np.uint8)


def _legend_handles(classes: Sequence[int], class_names, palette) -> list[Patch]:
    return [Patch(facecolor=np.asarray(palette[c]) / 255, edgecolor="k", label=class_names[c]) for c in classes]


def _present(*masks, k: int, ignore_index: int = IGNORE_INDEX) -> list[int]:
    seen = set()
    for m in masks:
        if m is None:
            continue
        vals = np.unique(np.asarray(m))
        seen.update(int(v) for v in vals if v != ignore_index and 0 <= v < k)
    return sorted(seen)


def plot_prediction_overlay(
    image: np.ndarray,
    prediction: np.ndarray,
    class_names: Sequence[str] | None = None,
    palette=None,
    label: np.ndarray | None = None,
    alpha: float = 0.55,
    title: str | None = None,
) -> Figure:
    """Image | (ground truth) | prediction overlays, with a legend of the class names and colours present."""
    k = len(class_names) if class_names is not None else max(_present(prediction, label, k=1 << 30) or [0]) + 1
    names, pal = _names(class_names, k), _palette(palette, k)
    panels = [("image", image)]
    if label is not None:
        panels.append(("ground truth", overlay(image, label, pal, alpha)))
    panels.append(("prediction", overlay(image, prediction, pal, alpha)))
    fig = new_figure(3.2 * len(panels) + 1.8, 3.4)
    axes = fig.subplots(1, len(panels))
    for ax, (name, img) in zip(np.atleast_1d(axes), panels):
        ax.imshow(img)
        ax.set_title(name)
        ax.axis("off")
    fig.legend(
        handles=_legend_handles(_present(prediction, label, k=k), names, pal),
        loc="outside right center",
        fontsize=8,
        frameon=False,
    )
    if title:
        fig.suptitle(title)
    return fig


def plot_segmentation_grid(
    probes: Sequence[ImageProbe], class_names: Sequence[str] | None = None, palette=None, alpha: float = 0.55
) -> Figure:
    """One row per probe: image, ground truth overlay (if any), prediction overlay; one shared legend."""
    if not probes:
        raise InputError("plot_segmentation_grid needs at least one probe.")
    k = probes[0].num_classes
    names, pal = _names(class_names, k), _palette(palette, k)
    has_label = any(p.label is not None for p in probes)
    cols = 3 if has_label else 2
    fig = new_figure(2.6 * cols + 1.8, 2.5 * len(probes))
    axes = np.asarray(fig.subplots(len(probes), cols)).reshape(len(probes), cols)
    for r, p in enumerate(probes):
        row = [("image", p.image)]
        if has_label:
            row.append(("ground truth", overlay(p.image, p.label, pal, alpha) if p.label is not None else p.image))
        row.append(("prediction", overlay(p.image, p.prediction, pal, alpha)))
        for ax, (name, img) in zip(axes[r], row):
            ax.imshow(img)
            ax.axis("off")
            if r == 0:
                ax.set_title(name)
    present = _present(*[p.prediction for p in probes], *[p.label for p in probes], k=k)
    fig.legend(handles=_legend_handles(present, names, pal), loc="outside right center", fontsize=8, frameon=False)
    return fig


def _paint_codes(codes: np.ndarray, colours: Mapping[int, Sequence[int]]) -> np.ndarray:
    """(H, W) integer codes -> (H, W, 3) uint8 colours from a code -> RGB table; codes not in it stay black."""
    out = np.zeros((*codes.shape, 3), dtype=np.uint8)
    for code, rgb in colours.items():
        out[codes == code] = rgb
    return out


def _map_and_bars_figure(image: np.ndarray | None, height: float):
    """The (image,) code map, per-class bars layout: returns (figure, map axes, bar axes); the image, when
    given, is drawn in the first panel."""
    n_img = 2 if image is not None else 1
    fig = new_figure(3.3 * n_img + 4.5, height)
    axes = fig.subplots(1, n_img + 1, width_ratios=[1] * n_img + [1.4])
    if image is not None:
        axes[0].imshow(image)
        axes[0].set_title("image")
        axes[0].axis("off")
    return fig, axes[n_img - 1], axes[-1]


def _stacked_class_bars(bar_ax, columns, colours, labels, class_names) -> None:
    """Horizontal bars stacked per class: ``columns`` are K-long pixel counts, one per (colour, label)."""
    y = np.arange(len(class_names))
    left = np.zeros(len(class_names))
    for vals, rgb, label in zip(columns, colours, labels, strict=True):
        bar_ax.barh(y, vals, left=left, color=np.array(rgb) / 255, label=label)
        left += vals
    bar_ax.set_yticks(y, class_names, fontsize=8)
    bar_ax.invert_yaxis()
    bar_ax.set_xlabel("pixels")
    bar_ax.legend(fontsize=7, frameon=False)


def plot_correction_map(
    cmap: CorrectionMap, image: np.ndarray | None = None, class_names: Sequence[str] | None = None
) -> Figure:
    """Ablation, offsets switched off: the offset model with ΔW = ΔE = 0 vs with its offsets — (image,) the
    per-pixel code map and per-class counts of changed pixels. Not a comparison with a trained baseline: for
    that, see :func:`plot_twin_comparison`."""
    names = _names(class_names, cmap.num_classes)
    fig, ax, bar_ax = _map_and_bars_figure(image, height=3.6)
    ax.imshow(_paint_codes(cmap.codes, CODE_COLORS))
    counts = cmap.counts()
    ax.set_title("ablation: offsets switched off\n(ΔW = ΔE = 0 → with offsets)", fontsize=9)
    ax.axis("off")
    shown = [c for c in cmap.code_order] + ([IGNORED] if (cmap.codes == IGNORED).any() else [])
    handles = [
        Patch(
            facecolor=np.array(CODE_COLORS[c]) / 255,
            edgecolor="k",
            label=f"{CODE_NAMES[c]} ({counts.get(CODE_NAMES[c], int((cmap.codes == c).sum()))})",
        )
        for c in shown
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=7, frameon=False, ncol=2)
    # Per-class counts of pixels whose class changed (UNCHANGED omitted: it dwarfs the rest).
    changed_codes = [c for c in cmap.code_order if CODE_NAMES[c] != "unchanged"]
    _stacked_class_bars(
        bar_ax,
        [cmap.class_counts[:, cmap.code_order.index(c)] for c in changed_codes],
        [CODE_COLORS[c] for c in changed_codes],
        [CODE_NAMES[c] for c in changed_codes],
        names,
    )
    bar_ax.set_title("changed pixels per class" + (" (ground truth)" if cmap.has_label else " (after)"))
    return fig


def twin_code_colours(codes: np.ndarray) -> np.ndarray:
    """(H, W) twin-comparison codes -> (H, W, 3) uint8 colours (``OUTCOME_COLORS``)."""
    return _paint_codes(codes, OUTCOME_COLORS)


def plot_twin_comparison(comparison: TwinComparison, index: int = 0, image: np.ndarray | None = None) -> Figure:
    """What Offset Learning changed against its per-pixel twin: (image,) the outcome map of image ``index``
    and per-ground-truth-class pixel counts of fixed / broken / both wrong summed over every compared image
    (both right omitted: it dwarfs the rest)."""
    if not 0 <= index < len(comparison.codes):
        raise InputError(f"Image {index} is not among the {len(comparison.codes)} compared images.")
    codes = comparison.codes[index]
    fig, ax, bar_ax = _map_and_bars_figure(image, height=3.8)
    ax.imshow(twin_code_colours(codes))
    ax.set_title("Offset Learning vs its per-pixel twin", fontsize=9)
    ax.axis("off")
    counts = comparison.image_totals(index)
    shown = list(OUTCOME_CODES) + ([255] if (codes == 255).any() else [])
    handles = []
    for code in shown:
        n = counts[OUTCOMES[OUTCOME_CODES.index(code)]] if code in OUTCOME_CODES else int((codes == code).sum())
        handles.append(
            Patch(facecolor=np.array(OUTCOME_COLORS[code]) / 255, edgecolor="k", label=f"{OUTCOME_LABELS[code]}: {n}")
        )
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=7, frameon=False)
    table, where = comparison.class_counts, f"{len(comparison.codes)} image(s)"
    shown_bars = OUTCOME_CODES[:3]  # fixed, broken, both wrong
    _stacked_class_bars(
        bar_ax,
        [table[:, j] for j in range(len(shown_bars))],
        [OUTCOME_COLORS[code] for code in shown_bars],
        OUTCOMES[: len(shown_bars)],
        comparison.class_names,
    )
    bar_ax.set_title(f"per ground-truth class, {where}", fontsize=9)
    return fig


def _feature_map(ax, fig, values: np.ndarray, image: np.ndarray | None, cmap: str, label: str, vmin=None, vmax=None):
    """Draw an (h, w) map stretched over the image's extent, with a colourbar."""
    if image is not None:
        ax.imshow(image, extent=(0, image.shape[1], image.shape[0], 0))
        extent = (0, image.shape[1], image.shape[0], 0)
        im = ax.imshow(values, cmap=cmap, alpha=0.65, extent=extent, vmin=vmin, vmax=vmax, interpolation="nearest")
    else:
        im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.axis("off")
    fig.colorbar(im, ax=ax, shrink=0.8, label=label)


def _crop_to_image(values: np.ndarray, p: ImageProbe) -> np.ndarray:
    """Drop feature cells that only cover backbone padding, (h, w) -> (h', w')."""
    h, w = values.shape[:2]
    rows = int(np.ceil(h * p.input_size[0] / p.padded_size[0]))
    cols = int(np.ceil(w * p.input_size[1] / p.padded_size[1]))
    return values[:rows, :cols]


def _image_and_map(p: ImageProbe, values: np.ndarray, cmap: str, label: str, title: str, vmin=None, vmax=None):
    """The probe's image beside an (h, w) per-cell map with a colourbar (``label``) titled ``title``."""
    fig = new_figure(8.0, 3.6)
    a0, a1 = fig.subplots(1, 2)
    a0.imshow(p.image)
    a0.set_title("image")
    a0.axis("off")
    _feature_map(a1, fig, values, None, cmap, label, vmin=vmin, vmax=vmax)
    a1.set_title(title)
    return fig


def plot_feature_offset_magnitude(p: ImageProbe) -> Figure:
    """Image and ‖ΔE‖/‖E‖ per pixel (how far Offset Learning moves each pixel's feature)."""
    ratio = _crop_to_image(offsets.feature_offset_ratio(p), p)
    return _image_and_map(p, ratio, "magma", "‖ΔE‖ / ‖E‖", f"feature offset magnitude (mean {ratio.mean():.3f})")


def plot_position_entropy(p: ImageProbe) -> Figure:
    """Image and the normalised entropy of each pixel's position attention (0 = one class, 1 = uniform)."""
    ent = _crop_to_image(offsets.position_entropy(p), p)
    return _image_and_map(p, ent, "viridis", "entropy / log K", "position-attention entropy", vmin=0, vmax=1)


def plot_class_offset_norms(
    probes: ImageProbe | Sequence[ImageProbe], class_names: Sequence[str] | None = None, palette=None
) -> Figure:
    """Per class ‖ΔW‖/‖W‖: bars = mean over the images, whiskers = min..max."""
    probes = [probes] if isinstance(probes, ImageProbe) else list(probes)
    ratios = np.stack([offsets.class_offset_ratio(p) for p in probes])  # (I, K)
    k = ratios.shape[1]
    names, pal = _names(class_names, k), _palette(palette, k)
    mean = ratios.mean(0)
    fig = new_figure(max(5.0, 0.5 * k + 2), 3.4)
    ax = fig.subplots()
    x = np.arange(k)
    ax.bar(x, mean, color=pal / 255, edgecolor="k")
    if len(probes) > 1:
        ax.errorbar(x, mean, yerr=[mean - ratios.min(0), ratios.max(0) - mean], fmt="none", ecolor="k", capsize=3)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("‖ΔW‖ / ‖W‖")
    ax.set_title(f"class offset magnitude ({len(probes)} image{'s' if len(probes) > 1 else ''})")
    return fig


def plot_class_attention(
    p: ImageProbe,
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    ncols: int = 4,
) -> Figure:
    """Class attention maps softmax_pixels(E·Wᵀ)[k] over the image, one panel per class."""
    offsets._need_offsets(p)
    k = p.num_classes
    names = _names(class_names, k)
    classes = list(range(k)) if classes is None else list(classes)
    if not classes:
        raise InputError("plot_class_attention needs at least one class.")
    ncols = min(ncols, len(classes))
    nrows = int(np.ceil(len(classes) / ncols))
    fig = new_figure(3.0 * ncols, 2.8 * nrows)
    axes = np.asarray(fig.subplots(nrows, ncols)).reshape(-1)
    for ax, c in zip(axes, classes):
        att = _crop_to_image(p.class_attention[c], p)
        ax.imshow(p.image, extent=(0, p.image.shape[1], p.image.shape[0], 0))
        ax.imshow(
            att,
            cmap="inferno",
            alpha=0.7,
            extent=(0, p.image.shape[1], p.image.shape[0], 0),
            interpolation="nearest",
        )
        ax.set_title(f"{names[c]} (peak {att.max():.2g})", fontsize=9)
        ax.axis("off")
    for ax in axes[len(classes) :]:
        ax.axis("off")
    return fig


def plot_cosine_heatmaps(report: MisalignmentReport, classes: Sequence[int] | None = None, ncols: int = 3) -> Figure:
    """A class-centred analogue of the paper's Fig. 3: per class, the images × images cosine similarity of the
    ideal prototypes W*_k (class-centred unless the report was computed with ``center=False``).

    coolwarm, fixed to [-1, 1] with ticks every 0.25, thin white cell borders, one shared colourbar.
    """
    available = sorted(report.cosine_matrices)
    classes = available if classes is None else [c for c in classes if c in report.cosine_matrices]
    if not classes:
        raise InputError("No class has a cosine matrix; use labelled probes that contain the classes.")
    ncols = min(ncols, len(classes))
    nrows = int(np.ceil(len(classes) / ncols))
    fig = new_figure(3.0 * ncols + 0.8, 2.9 * nrows)
    axes = np.asarray(fig.subplots(nrows, ncols)).reshape(-1)
    im = None
    for ax, c in zip(axes, classes):
        m = report.cosine_matrices[c]
        n = m.shape[0]
        im = ax.pcolormesh(m, cmap="coolwarm", vmin=-1, vmax=1, edgecolors="white", linewidth=0.5)
        ax.set_xlim(0, n)
        ax.set_ylim(n, 0)
        ax.set_aspect("equal")
        ticks = np.arange(n) + 0.5
        ax.set_xticks(ticks, [str(i) for i in range(n)], fontsize=7)
        ax.set_yticks(ticks, [str(i) for i in range(n)], fontsize=7)
        ax.set_title(f"{report.class_names[c]} (mean off-diag {report.consistency[c]:.2f})", fontsize=9)
    for ax in axes[len(classes) :]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.tolist(), ticks=np.linspace(-1, 1, 9), shrink=0.8, label="cos(W*_k(i), W*_k(j))")
    kind = "class-centred analogue of the paper's Fig. 3" if report.centered else "the paper's Fig. 3 (raw W*)"
    fig.suptitle(f"{kind}: ideal class prototypes across images — {report.name}")
    return fig


def plot_cosine_heatmap_comparison(
    reports: Mapping[str, MisalignmentReport], classes: Sequence[int] | None = None
) -> Figure:
    """Fig. 3 side by side: one row per report (e.g. before, after, baseline), one column per class.

    classes: default the 6 most frequent classes of the first report that every report has a matrix for.
    """
    if not reports:
        raise InputError("plot_cosine_heatmap_comparison needs at least one report.")
    first = next(iter(reports.values()))
    if classes is None:
        classes = [
            c
            for c in first.frequent_classes(len(first.class_names))
            if all(c in r.cosine_matrices for r in reports.values())
        ][:6]
    classes = list(classes)
    if not classes:
        raise InputError("No class has a cosine matrix in every report; use more labelled images.")
    fig = new_figure(2.3 * len(classes) + 1.0, 2.4 * len(reports) + 0.4)
    axes = np.asarray(fig.subplots(len(reports), len(classes))).reshape(len(reports), len(classes))
    im = None
    for r, (name, rep) in enumerate(reports.items()):
        for j, c in enumerate(classes):
            ax = axes[r, j]
            if c not in rep.cosine_matrices:
                ax.axis("off")
                continue
            m = rep.cosine_matrices[c]
            im = ax.pcolormesh(m, cmap="coolwarm", vmin=-1, vmax=1, edgecolors="white", linewidth=0.4)
            ax.set_xlim(0, m.shape[0])
            ax.set_ylim(m.shape[0], 0)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{rep.class_names[c]}: {rep.consistency[c]:.2f}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), ticks=np.linspace(-1, 1, 9), shrink=0.8)
    centred = all(r.centered for r in reports.values())
    kind = "class-centred analogue of the paper's Fig. 3" if centred else "the paper's Fig. 3"
    fig.suptitle(f"{kind}: cosine of each image's ideal prototype W*_k (title: mean off-diagonal)", fontsize=9)
    return fig


def plot_misalignment_summary(
    reports: Mapping[str, MisalignmentReport], metrics: Sequence[str] = ("consistency", "alignment")
) -> Figure:
    """Grouped bars per class (one bar per report) for each metric, with the overall mean in the legend."""
    if not reports:
        raise InputError("plot_misalignment_summary needs at least one report.")
    names = next(iter(reports.values())).class_names
    k = len(names)
    fig = new_figure(max(6.0, 0.7 * k + 2.5), 3.2 * len(metrics))
    axes = np.atleast_1d(fig.subplots(len(metrics), 1, sharex=True))
    width = 0.8 / len(reports)
    x = np.arange(k)
    colours = colormaps["Set2"].colors
    for ax, metric in zip(axes, metrics):
        for j, (rname, rep) in enumerate(reports.items()):
            vals = np.asarray(getattr(rep, metric), dtype=float)
            overall = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
            ax.bar(
                x + (j - (len(reports) - 1) / 2) * width,
                np.nan_to_num(vals),
                width,
                color=colours[j % len(colours)],
                label=f"{rname}: {overall:.3f}",
            )
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7, frameon=False)
    axes[-1].set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    axes[0].set_title("ideal-prototype consistency across images / alignment with the classifier's prototypes")
    return fig


def plot_misalignment_sweep(table: SweepTable) -> Figure:
    """Every overall score of every model across the W* settings (x: settings in sweep order), one panel per
    score, so an ordering that flips inside the sweep shows as crossing lines."""
    x = np.arange(len(table.settings))
    metrics = ("consistency", "alignment", "sanity_miou")
    fig = new_figure(max(7.0, 0.55 * len(x) + 3.0), 2.6 * len(metrics))
    axes = np.atleast_1d(fig.subplots(len(metrics), 1, sharex=True))
    for ax, metric in zip(axes, metrics):
        values = table.values(metric)  # (S, M)
        for j, model in enumerate(table.models):
            ax.plot(x, values[:, j], marker="o", ms=4, label=model)
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(SCORE_LABELS[metric], fontsize=7, loc="left")
        # separate the methods (pinv | ridge | class means)
        for i in range(1, len(x)):
            if table.settings[i].method != table.settings[i - 1].method:
                ax.axvline(i - 0.5, color="0.6", lw=0.8, ls="--")
    axes[0].legend(fontsize=7, frameon=False)
    axes[-1].set_xticks(x, [st.label for st in table.settings], rotation=45, ha="right", fontsize=7)
    fig.suptitle(f"W* scores across the regulariser ({table.images} images)", fontsize=10)
    return fig


def _embedding_keep(emb: JointEmbedding, classes: Sequence[int] | None, images: Sequence[int] | None) -> np.ndarray:
    """bool (P,): the embedded pixels of the requested classes and images (all when None)."""
    keep = np.ones(len(emb.classes), dtype=bool)
    if classes is not None:
        keep &= np.isin(emb.classes, np.asarray(classes))
    if images is not None:
        keep &= np.isin(emb.image_index, np.asarray(images))
    return keep


def _draw_refined_prototypes(
    ax, emb: JointEmbedding, pal: np.ndarray, shown_classes: list[int], images: Sequence[int] | None
) -> None:
    """Each image's W' (diamonds) for the shown classes that image has pixels of; pal (K, 3) in [0, 1]."""
    img_ids = range(emb.refined_class_embed.shape[0]) if images is None else images
    for i in img_ids:
        for c in shown_classes:
            if np.any((emb.image_index == i) & (emb.classes == c)):
                ax.scatter(
                    *emb.refined_class_embed[i, c],
                    marker="D",
                    s=36,
                    color=pal[c],
                    edgecolors="k",
                    linewidths=0.8,
                    zorder=4,
                )


def _draw_offset_arrows(ax, emb: JointEmbedding, keep: np.ndarray) -> None:
    """Before → after arrows for the kept pixels among ``emb.arrow_index``; keep bool (P,)."""
    idx = emb.arrow_index[keep[emb.arrow_index]]
    start, end = emb.before[idx], emb.after[idx]
    ax.quiver(
        start[:, 0],
        start[:, 1],
        end[:, 0] - start[:, 0],
        end[:, 1] - start[:, 1],
        angles="xy",
        scale_units="xy",
        scale=1,
        width=0.002,
        color="0.25",
        alpha=0.5,
        zorder=3,
    )


def _embedding_legend(
    fig: Figure, ax, emb: JointEmbedding, shown_classes: list[int], names: list[str], pal: np.ndarray
) -> None:
    """Class patches, then the W star and (with offsets) the W' diamond markers, right of the panels."""
    centred = emb.params.get("center_class_embed", True)
    handles = _legend_handles(shown_classes, names, (pal * 255).astype(np.uint8))
    handles += [
        ax.scatter([], [], marker="*", s=120, color="w", edgecolors="k", label="W (class-centred)" if centred else "W"),
    ]
    if emb.after is not None:
        handles.append(
            ax.scatter(
                [],
                [],
                marker="D",
                s=30,
                color="w",
                edgecolors="k",
                label="W' per image (class-centred)" if centred else "W' per image",
            )
        )
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)


def plot_joint_embedding(
    emb: JointEmbedding,
    class_names: Sequence[str] | None = None,
    palette=None,
    classes: Sequence[int] | None = None,
    images: Sequence[int] | None = None,
    show_arrows: bool = True,
    point_size: float = 2.0,
) -> Figure:
    """Before / after pixel features in the joint map, coloured by class, with W (stars, both panels),
    each image's W' (diamonds, after panel) and before → after arrows for a subset of pixels."""
    k = emb.class_embed.shape[0]
    names, pal = _names(class_names, k), _palette(palette, k) / 255
    keep = _embedding_keep(emb, classes, images)
    shown_classes = sorted(set(np.unique(emb.classes[keep]).tolist())) if keep.any() else []
    panels = [("before offsets: E", emb.before)] + ([("after offsets: E'", emb.after)] if emb.after is not None else [])
    fig = new_figure(5.2 * len(panels) + 1.8, 5.0)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharex=True, sharey=True))
    for ax, (title, xy) in zip(axes, panels):
        ax.scatter(xy[keep, 0], xy[keep, 1], c=pal[emb.classes[keep]], s=point_size, linewidths=0, rasterized=True)
        for c in shown_classes:
            ax.scatter(*emb.class_embed[c], marker="*", s=260, color=pal[c], edgecolors="k", linewidths=1.2, zorder=5)
        ax.set_title(f"{title} ({emb.method})")
        ax.set_xticks([])
        ax.set_yticks([])
    if emb.after is not None:
        if emb.refined_class_embed is not None:
            _draw_refined_prototypes(axes[1], emb, pal, shown_classes, images)
        if show_arrows and emb.arrow_index.size:
            _draw_offset_arrows(axes[1], emb, keep)
    _embedding_legend(fig, axes[0], emb, shown_classes, names, pal)
    return fig


def plot_confusion_matrix(
    confusion: np.ndarray, class_names: Sequence[str] | None = None, normalize: bool = True
) -> Figure:
    """Confusion matrix (rows = ground truth, columns = prediction); row-normalised by default."""
    conf = np.asarray(confusion, dtype=np.float64)
    k = conf.shape[0]
    names = _names(class_names, k)
    if normalize:
        conf = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig = new_figure(0.45 * k + 3.0, 0.45 * k + 2.2)
    ax = fig.subplots()
    im = ax.imshow(conf, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if conf[i, j] > 0:
                    ax.text(
                        j,
                        i,
                        f"{conf[i, j]:.2f}" if normalize else f"{int(conf[i, j])}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="w" if conf[i, j] > 0.5 * conf.max() else "k",
                    )
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def plot_iou_bars(ious: Mapping[str, np.ndarray], class_names: Sequence[str] | None = None) -> Figure:
    """Per-class IoU (in %) of one or more models side by side; legend shows each mIoU."""
    if not ious:
        raise InputError("plot_iou_bars needs at least one model's IoU.")
    k = len(next(iter(ious.values())))
    names = _names(class_names, k)
    fig = new_figure(max(6.0, 0.7 * k + 2.5), 3.6)
    ax = fig.subplots()
    width = 0.8 / len(ious)
    colours = colormaps["Set2"].colors
    for j, (name, iou) in enumerate(ious.items()):
        iou = np.asarray(iou, dtype=float)
        ax.bar(
            np.arange(k) + (j - (len(ious) - 1) / 2) * width,
            100 * np.nan_to_num(iou),
            width,
            color=colours[j % len(colours)],
            label=f"{name}: mIoU {100 * np.nanmean(iou):.1f}",
        )
    ax.set_xticks(np.arange(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, frameon=False)
    return fig


def plot_training_curves(
    histories: Mapping[str, Mapping[str, Sequence[float]]], x_keys: Sequence[str] = ("step", "eval_step")
) -> Figure:
    """One panel per metric found in the histories (e.g. loss, mIoU), one line per run.

    histories: run name -> {"step": [...], "loss": [...], "eval_step": [...], "mIoU": [...]} (the engine's
    ``TrainResult.history``). Each metric is drawn against the first of ``x_keys`` with as many values,
    else against its index.
    """
    metrics = []
    for hist in histories.values():
        metrics += [m for m in hist if m not in x_keys and m not in metrics]
    if not metrics:
        raise InputError("plot_training_curves found no metric in the histories.")
    fig = new_figure(4.2 * len(metrics), 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, metric in zip(axes, metrics):
        for name, hist in histories.items():
            if metric not in hist or len(hist[metric]) == 0:
                continue
            y = np.asarray(hist[metric], dtype=float)
            x_name = next((k for k in x_keys if k in hist and len(hist[k]) == len(y)), None)
            x = np.asarray(hist[x_name]) if x_name else np.arange(len(y))
            ax.plot(x, y, marker="o" if len(y) < 30 else None, ms=3, label=name)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.legend(fontsize=8, frameon=False)
    return fig


def discrete_cmap(colours: np.ndarray) -> ListedColormap:
    """A ListedColormap from (K, 3) uint8 colours."""
    return ListedColormap(np.asarray(colours) / 255)
