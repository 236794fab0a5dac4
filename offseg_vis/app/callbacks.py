"""What each button of the app does, as plain functions (no gradio here, so they are unit-testable).

One upload is decoded and run through the model (:func:`segment`, via ``analysis.probe`` asking only for
the prediction, so the segmentation panel never pays for attention maps); the resulting :class:`Analysis`
is kept in the user's session. The twin comparison runs the twin model on the same image; the panels that
look inside Offset Learning (the offsets-switched-off ablation, offset magnitudes, class attention,
embedding) ask for the intermediates once (:func:`full_probe`) and share them. Bad input raises
:class:`~offseg_vis.errors.InputError` with a sentence for the user.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from offseg_vis.analysis import offsets
from offseg_vis.analysis.compare import TwinComparison, compare_to_baseline
from offseg_vis.analysis.corrections import correction_map
from offseg_vis.analysis.embedding import embed_pixels
from offseg_vis.analysis.probe import ImageProbe, probe
from offseg_vis.app import render
from offseg_vis.app.embedding_budget import EmbeddingSettings, UmapTimer
from offseg_vis.app.examples import EXAMPLES_DIR, ExampleMasks
from offseg_vis.app.inputs import InputLimits, load_image
from offseg_vis.app.models import AppModel, ModelRegistry
from offseg_vis.errors import InputError

EMBEDDING_METHODS = ("auto", "umap", "pca")
SEGMENT_OUTPUTS = frozenset({"prediction"})  # the segmentation panel shows the prediction only


@dataclass(frozen=True)
class AppSettings:
    """Everything the app's behaviour depends on besides the checkpoints.

    Attributes:
        limits: what uploads are accepted (size, sides).
        embedding: the embedding panel's budget and sizes.
        examples_dir: gallery folder (``NAME.png`` + ``NAME.mask.png``).
        warm_up_umap: compile and time UMAP in the background at start (off in tests: PCA then).
    """

    limits: InputLimits = field(default_factory=InputLimits)
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    examples_dir: Path = EXAMPLES_DIR
    warm_up_umap: bool = True


class AppContext:
    """The loaded models and settings shared by every request."""

    def __init__(self, registry: ModelRegistry, settings: AppSettings | None = None) -> None:
        self.registry = registry
        self.settings = settings or AppSettings()
        self.examples = ExampleMasks(self.settings.examples_dir)
        self.umap = UmapTimer(self.settings.embedding)
        if self.settings.warm_up_umap:
            self.umap.start_warm_up()

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], settings: AppSettings | None = None) -> AppContext:
        """Load checkpoint files or folders of them (see :meth:`ModelRegistry.from_paths`)."""
        return cls(ModelRegistry.from_paths(paths), settings)


@dataclass
class Analysis:
    """What one segmentation leaves in the session for the other panels.

    Attributes:
        model_label: which model produced it.
        probe: the :class:`ImageProbe` of the image (prediction, E, E', W, W', attentions; label if known).
        notices: sentences about the input (downscaled, alpha removed, ...).
        seconds: wall time of decoding + the model run.
        status: Markdown sentences for the user (timing, ground truth known, notices).
    """

    model_label: str
    probe: ImageProbe
    notices: list[str]
    seconds: float
    status: str = ""

    def __repr__(self) -> str:  # keep logs and API errors short: no arrays
        return f"Analysis({self.model_label!r}, image {self.probe.input_size}, {self.seconds:.2f} s)"

    @property
    def has_label(self) -> bool:
        return self.probe.label is not None


@dataclass
class SegmentResult:
    """Output of :func:`segment`.

    annotated: (image (H, W, 3) uint8, [(mask (H, W) float 0/1, class name), ...]) for gr.AnnotatedImage;
    shares: rows [class, share %, pixels] of the present classes; analysis: kept in the session;
    status: Markdown sentences for the user.
    """

    annotated: tuple[np.ndarray, list[tuple[np.ndarray, str]]]
    shares: list[list]
    analysis: Analysis
    status: str


def _known_mask(ctx: AppContext, entry: AppModel, image: np.ndarray) -> np.ndarray | None:
    """The gallery mask of this exact image, when the model speaks FashionScenes' classes."""
    from offseg_vis.data.fashion_scenes import CLASSES

    if list(entry.class_names) != list(CLASSES):
        return None
    return ctx.examples.lookup(image)


def segment(ctx: AppContext, image_path: str | Path | None, model_label: str | None = None) -> SegmentResult:
    """Decode the upload, run the chosen model once with its intermediates, and describe the result.

    Args:
        image_path: the uploaded file (None when nothing was uploaded).
        model_label: a label of ``ctx.registry`` (None = the default model).

    Raises:
        InputError: no file, or a file that is not a usable image (see :func:`load_image`).
    """
    if image_path is None or str(image_path) == "":
        raise InputError("Please upload an image (or click an example) before pressing Segment.")
    start = time.perf_counter()
    entry = ctx.registry.get(model_label)
    loaded = load_image(image_path, ctx.settings.limits)
    label = _known_mask(ctx, entry, loaded.image)
    with entry.lock:
        p = probe(entry.model, [loaded.image], None if label is None else [label], need=SEGMENT_OUTPUTS)[0]
    seconds = time.perf_counter() - start
    analysis = Analysis(entry.label, p, list(loaded.notices), seconds)
    h, w = loaded.image.shape[:2]
    lines = [f"Segmented a {w}×{h} image with {entry.model_name} ({entry.classifier}) in {seconds:.2f} s."]
    if label is not None:
        lines.append(
            "This is a gallery scene, so its ground truth is known: the twin comparison shows what Offset "
            "Learning fixed and broke."
        )
    lines += loaded.notices
    analysis.status = "\n\n".join(lines)
    return SegmentResult(
        annotated=(loaded.image, render.annotations(p.prediction, entry.class_names)),
        shares=render.class_shares(p.prediction, entry.class_names),
        analysis=analysis,
        status=analysis.status,
    )


def _need(analysis: Analysis | None) -> Analysis:
    if analysis is None:
        raise InputError("Segment an image first; this panel explains the last segmentation.")
    return analysis


def full_probe(ctx: AppContext, analysis: Analysis) -> ImageProbe:
    """The analysis's probe with every intermediate (E, E', W, W', attentions, the offsets-off prediction),
    computed on first use by the panels that show them and kept in the analysis for the others."""
    p = analysis.probe
    if "features" in p.computed:
        return p
    entry = ctx.registry.get(analysis.model_label)
    with entry.lock:
        full = probe(entry.model, [p.image], None if p.label is None else [p.label])[0]
    analysis.probe = full
    return full


@dataclass
class OffsetPanels:
    """Output of :func:`offset_panels` (images None for a per-pixel model, with ``note`` saying why).

    correction: (f*H, f*W, 3) uint8; magnitude: (f*H + 34, f*W, 3) uint8 with its colour bar (f enlarges
    small images for display, see :func:`offseg_vis.app.render.enlarge`);
    class_offsets: rows [class, ‖ΔW‖/‖W‖] of the present classes; attention_classes: names for the
    attention dropdown; attention_default: the one shown first.
    """

    correction: np.ndarray | None
    correction_text: str
    magnitude: np.ndarray | None
    magnitude_text: str
    class_offsets: list[list]
    attention_classes: list[str]
    attention_default: str | None
    note: str = ""


def _present_classes(p: ImageProbe) -> list[int]:
    """Classes in the prediction (and in the ground truth when known), by pixel count."""
    counts = render.class_pixel_counts(p.prediction, p.num_classes)
    if p.label is not None:
        valid = (p.label >= 0) & (p.label < p.num_classes)
        counts = counts + np.bincount(p.label[valid].reshape(-1), minlength=p.num_classes)[: p.num_classes]
    return [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]


def offset_panels(ctx: AppContext, analysis: Analysis | None) -> OffsetPanels:
    """Ablation map (offsets switched off), ‖ΔE‖/‖E‖ heatmap and ‖ΔW‖/‖W‖ of the present classes."""
    analysis = _need(analysis)
    entry = ctx.registry.get(analysis.model_label)
    if not analysis.probe.is_offset_model:
        note = "This is the per-pixel baseline: it has no offsets. Choose an Offset Learning model to see them."
        return OffsetPanels(None, note, None, note, [], [], None, note)
    p = full_probe(ctx, analysis)
    names = entry.class_names
    cmap = correction_map(p)
    legend = ", ".join(f"{name} {count:,} px" for name, _, count in render.correction_legend(cmap))
    changed = 100 * cmap.changed_fraction()
    ablation = (
        "**Ablation: offsets switched off.** This compares the model with ΔW = ΔE = 0 — a classifier nobody "
        "trained, which scores far below both real models — with the model itself; it shows how much the "
        "predictions lean on the offsets, not what Offset Learning gains over a per-pixel model (that is the "
        "twin comparison above). "
    )
    if cmap.has_label:
        text = ablation + (
            f"Switching the offsets on changes the class of {changed:.1f} % of the pixels — green: wrong → right, "
            f"red: right → wrong, orange: changed but still wrong; net {cmap.net_fixed():+,} pixels ({legend})."
        )
    else:
        text = ablation + (
            f"Switching the offsets on changes the class of {changed:.1f} % of the pixels (blue; {legend}). "
            "Without a ground truth, right and wrong cannot be told apart — try a gallery scene."
        )
    ratio = offsets.feature_offset_ratio(p)  # (h, w)
    magnitude = render.heatmap_overlay(
        p.image, ratio, p.input_size, p.padded_size, cmap="magma", label="|dE| / |E|", vmin=0.0
    )
    in_image = render.grid_to_image(ratio, p.input_size, p.padded_size)
    magnitude_text = (
        f"How far Offset Learning moves each pixel's feature, ‖ΔE‖/‖E‖: mean {in_image.mean():.3f}, "
        f"max {in_image.max():.3f} (bright = moved more)."
    )
    present = _present_classes(p)
    class_ratio = offsets.class_offset_ratio(p)  # (K,)
    rows = [[names[c], round(float(class_ratio[c]), 4)] for c in present]
    foreground = [c for c in present if names[c] != "background"]
    default = names[(foreground or present)[0]]
    return OffsetPanels(
        correction=render.correction_overlay(p.image, cmap),
        correction_text=text,
        magnitude=magnitude,
        magnitude_text=magnitude_text,
        class_offsets=rows,
        attention_classes=[names[c] for c in present],
        attention_default=default,
    )


def attention_panel(ctx: AppContext, analysis: Analysis | None, class_name: str | None) -> tuple[np.ndarray, str]:
    """Class attention softmax_pixels(E·W_kᵀ) of one class over the image.

    Returns ((f*H + 34, f*W, 3) uint8 picture with its colour bar, text).
    """
    analysis = _need(analysis)
    entry = ctx.registry.get(analysis.model_label)
    if not analysis.probe.is_offset_model:
        raise InputError("The per-pixel baseline has no class attention; choose an Offset Learning model.")
    p = full_probe(ctx, analysis)
    if class_name not in entry.class_names:
        raise InputError(f"Unknown class {class_name!r}; pick one of the classes in the list.")
    k = entry.class_names.index(class_name)
    att = p.class_attention[k]  # (h, w), sums to 1 over the grid
    uniform = 1.0 / att.size
    image = render.heatmap_overlay(
        p.image, att, p.input_size, p.padded_size, cmap="inferno", label=f"attention: {class_name}", vmin=0.0
    )
    text = (
        f"Where the class embedding of **{class_name}** looks when it gathers its offset ΔW: softmax over "
        f"pixels of E·Wᵀ. Peak {att.max():.2g} ({att.max() / uniform:.0f}× a uniform spread)."
    )
    return image, text


@dataclass
class ComparePanels:
    """Output of :func:`compare`: Offset Learning vs its per-pixel twin on the uploaded image.

    offset_overlay, baseline_overlay: each model's prediction over the image; disagreement: where they
    differ (magenta); outcome: the twin comparison's codes (fixed green, broken red, both wrong orange,
    both right gray) when the ground truth is known, else None; all (f*H, f*W, 3) uint8 or None when no
    twin is loaded. comparison: the :class:`TwinComparison` (None without ground truth or twin); text: the
    sentences for the page.
    """

    offset_overlay: np.ndarray | None
    baseline_overlay: np.ndarray | None
    disagreement: np.ndarray | None
    text: str
    outcome: np.ndarray | None = None
    comparison: TwinComparison | None = None


def compare(ctx: AppContext, analysis: Analysis | None) -> ComparePanels:
    """What Offset Learning changed: the chosen model against its twin (same recipe, data and seed per the
    checkpoint cards, other classifier) on the same image, against the ground truth when it is known."""
    analysis = _need(analysis)
    entry = ctx.registry.get(analysis.model_label)
    twin, how = ctx.registry.twin_for(entry)
    if twin is None:
        return ComparePanels(None, None, None, how)
    p = analysis.probe
    start = time.perf_counter()
    with twin.lock:
        other = probe(twin.model, [p.image], None if p.label is None else [p.label], need=SEGMENT_OUTPUTS)[0]
    seconds = time.perf_counter() - start
    (ol, ol_entry), (lin, lin_entry) = ((p, entry), (other, twin)) if entry.is_offset else ((other, twin), (p, entry))
    differ = ol.prediction != lin.prediction
    text = (
        f"Compared with {how}. The two disagree on {100 * differ.mean():.1f} % of the pixels (magenta); "
        f"{twin.model_name} ({twin.classifier}) ran in {seconds:.2f} s."
    )
    comparison, outcome = None, None
    if p.label is not None:
        comparison = compare_to_baseline([ol], [lin], entry.class_names)
        t = comparison.totals()
        acc_ol, acc_lin = comparison.accuracies()
        text = (
            f"**What Offset Learning changed** against its per-pixel twin on {comparison.labelled_pixels:,} labelled "
            f"pixels: fixed {t['fixed']:,} (green: twin wrong, OL right), broke {t['broken']:,} (red: twin right, "
            f"OL wrong), net {comparison.net_fixed:+,}; both wrong {t['both_wrong']:,} (orange), both right "
            f"{t['both_right']:,} (gray). Pixel accuracy {100 * acc_ol:.1f} % (Offset Learning) vs "
            f"{100 * acc_lin:.1f} % (twin). " + text
        )
        outcome = render.twin_overlay(p.image, comparison.codes[0])
    else:
        text += " Without a ground truth, fixed and broken cannot be told apart — try a gallery scene."
    return ComparePanels(
        render.segmentation_overlay(p.image, ol.prediction, ol_entry.palette),
        render.segmentation_overlay(p.image, lin.prediction, lin_entry.palette),
        render.disagreement_overlay(p.image, ol.prediction, lin.prediction),
        text,
        outcome,
        comparison,
    )


def embedding_panel(ctx: AppContext, analysis: Analysis | None, method: str = "auto") -> tuple[np.ndarray, str]:
    """This image's pixel features before (E) and after (E') the offsets in one 2-D map, with W and W'.

    ``method`` is "auto" (UMAP when it fits the time budget, else PCA), "umap" or "pca".
    Returns (the figure as (H, W, 3) uint8, a sentence on the method and its timing).
    """
    from offseg_vis.analysis.plots import figure_to_array, plot_joint_embedding

    analysis = _need(analysis)
    if method not in EMBEDDING_METHODS:
        raise InputError(f"Unknown embedding method {method!r}; choose one of {', '.join(EMBEDDING_METHODS)}.")
    entry = ctx.registry.get(analysis.model_label)
    settings = ctx.settings.embedding
    start = time.perf_counter()
    chosen, why = ctx.umap.choose(method, settings.umap_points)
    points = settings.umap_points if chosen == "umap" else settings.pca_points
    try:
        emb = embed_pixels(
            [full_probe(ctx, analysis)],
            max_points=points,
            seed=0,
            method=chosen,
            n_epochs=settings.n_epochs,
            n_arrows=settings.n_arrows,
        )
    except InputError as err:
        raise InputError(f"The embedding could not be computed for this image: {err}") from None
    if chosen == "umap":
        ctx.umap.record(int(emb.params["points"]), emb.fit_seconds)
    fig = plot_joint_embedding(emb, entry.class_names, entry.palette, point_size=5.0)
    picture = figure_to_array(fig)
    total = time.perf_counter() - start
    source = "ground-truth" if analysis.has_label else "predicted"
    text = (
        f"{why} {emb.params['points']:,} points (pixels coloured by {source} class) fitted in "
        f"{emb.fit_seconds:.2f} s; panel ready in {total:.2f} s. Stars: class embeddings W; diamonds: W' for "
        "this image (both centred over the classes: the part shared by every class cannot change a prediction)."
    )
    return picture, text
