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
from offseg_vis.analysis.probe import ImageProbe, complete_probe, probe
from offseg_vis.app import pixels, render
from offseg_vis.app.embedding_budget import EmbeddingSettings, UmapTimer
from offseg_vis.app.examples import EXAMPLES_DIR, ExampleMasks, example_label, scene_preset
from offseg_vis.app.inputs import InputLimits, load_image
from offseg_vis.app.models import AppModel, ModelRegistry
from offseg_vis.app.pixels import ImageMap
from offseg_vis.engine.checkpoint import card_scene_preset
from offseg_vis.errors import InputError

EMBEDDING_METHODS = ("auto", "umap", "pca")
ALL_CLASSES = "(all classes)"
SEGMENT_OUTPUTS = frozenset({"prediction"})  # the segmentation panel shows the prediction only
TWIN_OUTPUTS = frozenset({"prediction", "logits"})  # the comparison and the pixel panel's twin scores


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
        original_size: (H0, W0) of the uploaded file (clicks on the input image are scaled from it).
        twin_probe: the twin's probe of the same image (prediction and logits), once computed.
        image_map: the image's joint 2-D map, fitted once (see :mod:`offseg_vis.app.pixels`).
        map_request: the method the map was asked for ("auto", "umap", "pca").
        pixel: the last clicked (x, y); chosen: the class chosen for highlighting, or None.
    """

    model_label: str
    probe: ImageProbe
    notices: list[str]
    seconds: float
    status: str = ""
    original_size: tuple[int, int] | None = None
    twin_probe: ImageProbe | None = None
    image_map: ImageMap | None = None
    map_request: str | None = None
    pixel: tuple[int, int] | None = None
    chosen: int | None = None

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


def _gallery_sentence(ctx: AppContext, entry: AppModel, image: np.ndarray) -> str:
    """What the status says about a gallery scene: its ground truth is known, and which setting it is
    from when the model's card says it was trained on another one."""
    scene = ctx.examples.scene_of(image)
    text = (
        f"This is gallery scene {example_label(scene)}, so its ground truth is known: the twin comparison "
        "shows what Offset Learning fixed and broke."
    )
    scene_setting, model_setting = scene_preset(scene), card_scene_preset(entry.card)
    if model_setting is not None and model_setting != scene_setting:
        trained = f"+{model_setting}" if model_setting else "plain"
        shown = f"+{scene_setting}" if scene_setting else "plain"
        text += (
            f" Note: {entry.label} was trained and scored on {trained} scenes and this is a {shown} scene; "
            f"pick a model of the {shown} setting to see it on its own data."
        )
    return text


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
        p = probe(
            entry.model,
            [loaded.image],
            None if label is None else [label],
            need=SEGMENT_OUTPUTS,
            keep_classifier_input=True,  # the panels' intermediates then need only the classifier
        )[0]
    seconds = time.perf_counter() - start
    analysis = Analysis(entry.label, p, list(loaded.notices), seconds, original_size=tuple(loaded.original_size))
    h, w = loaded.image.shape[:2]
    lines = [f"Segmented a {w}×{h} image with {entry.model_name} ({entry.classifier}) in {seconds:.2f} s."]
    if label is not None:
        lines.append(_gallery_sentence(ctx, entry, loaded.image))
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
        full = complete_probe(entry.model, p)
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


def twin_probe(ctx: AppContext, analysis: Analysis) -> tuple[AppModel | None, ImageProbe | None]:
    """The twin model and its probe of the analysis's image (prediction and logits; computed once and kept),
    or (None, None) when no twin is loaded."""
    entry = ctx.registry.get(analysis.model_label)
    twin, _ = ctx.registry.twin_for(entry)
    if twin is None:
        return None, None
    if analysis.twin_probe is None:
        p = analysis.probe
        with twin.lock:
            analysis.twin_probe = probe(
                twin.model, [p.image], None if p.label is None else [p.label], need=TWIN_OUTPUTS
            )[0]
    return twin, analysis.twin_probe


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
    other = twin_probe(ctx, analysis)[1]
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


# ----------------------------------------------------------------------------------------------------
# the linked pixel <-> embedding view


def image_map(ctx: AppContext, analysis: Analysis, method: str = "auto") -> ImageMap:
    """The analysis's joint 2-D map of E and E′: fitted on the first call (or when another ``method`` is
    asked for) and kept; clicks and class choices only read it.

    Raises:
        InputError: unknown method, or a map that cannot be fitted.
    """
    if method not in EMBEDDING_METHODS:
        raise InputError(f"Unknown embedding method {method!r}; choose one of {', '.join(EMBEDDING_METHODS)}.")
    if analysis.image_map is not None and analysis.map_request == method:
        return analysis.image_map
    settings = ctx.settings.embedding
    p = full_probe(ctx, analysis)
    chosen, why = ctx.umap.choose(method, settings.umap_points)
    budget = settings.umap_points if chosen == "umap" else settings.pca_points
    try:
        fitted = pixels.fit_image_map(p, chosen, budget, why, n_epochs=settings.n_epochs)
    except InputError as err:
        raise InputError(f"The embedding could not be computed for this image: {err}") from None
    if chosen == "umap":
        ctx.umap.record(int(fitted.embedding.params["points"]), fitted.seconds)
    analysis.image_map, analysis.map_request = fitted, method
    return fitted


@dataclass
class MapPanel:
    """The two maps (E before, E′ after the offsets; ``after`` None for a per-pixel model) as frames for
    ``gr.ScatterPlot`` with shared limits, the class choices and a sentence."""

    before: object
    after: object | None
    x_lim: list[float]
    y_lim: list[float]
    classes: list[str]
    text: str


def _map_panel(ctx: AppContext, analysis: Analysis, report: pixels.PixelReport | None) -> MapPanel:
    entry = ctx.registry.get(analysis.model_label)
    m = image_map(ctx, analysis, analysis.map_request or "auto")
    names = entry.class_names
    before = pixels.map_frame(m, "E", names, report, analysis.chosen)
    after = pixels.map_frame(m, "E'", names, report, analysis.chosen) if m.embedding.after is not None else None
    x_lim, y_lim = pixels.map_limits(m)
    every = "every feature cell" if m.stride == 1 else f"every {m.stride}th row and column of feature cells"
    text = (
        f"{m.why} {len(m):,} pixels ({every}) of this image, E and E′ in one map, fitted once in "
        f"{m.seconds:.2f} s. Hover a point for its class, pixel and whether it is right; drag across a map "
        "to zoom, double-click to zoom out. Purple: W (left) and W′ (right), centred over the classes (the part "
        "shared by every class cannot change a prediction). Click a pixel in an image to follow it here."
    )
    present = [names[c] for c in _present_classes(analysis.probe)]
    return MapPanel(before, after, x_lim, y_lim, present, text)


def map_panel(ctx: AppContext, analysis: Analysis | None, method: str = "auto") -> PixelPanel:
    """Open the exploration panel: fit the image's map (once; a change of ``method`` refits, clicks never
    do) and draw it with the clickable segmentation (and the current pixel and class, if any)."""
    analysis = _need(analysis)
    image_map(ctx, analysis, method)
    return _pixel_panel(ctx, analysis)


@dataclass
class PixelPanel:
    """What a click (or a class choice) updates: the maps, the clickable segmentation with the marks
    (``picture`` (f*H, f*W, 3) uint8), the score and attention charts, the facts as a dict (the ``pixel``
    endpoint's answer) and a Markdown sentence. ``report`` is None when no pixel was clicked yet."""

    maps: MapPanel
    picture: np.ndarray
    scores: object | None
    attention: object | None
    info: dict | None
    text: str
    report: pixels.PixelReport | None = None


def _names(entry: AppModel) -> tuple[str, str]:
    return ("Offset Learning", "per-pixel twin") if entry.is_offset else ("per-pixel (linear)", "Offset Learning twin")


def _report(ctx: AppContext, analysis: Analysis, x, y, with_map: bool) -> pixels.PixelReport:
    p = full_probe(ctx, analysis)
    xi, yi = pixels.check_click(p, x, y)
    m = image_map(ctx, analysis, analysis.map_request or "auto") if with_map else None
    _, other = twin_probe(ctx, analysis)
    return pixels.pixel_report(p, m, xi, yi, other, _names(ctx.registry.get(analysis.model_label)))


def _top(s: pixels.Scores, names: list[str]) -> list[dict]:
    return [
        {"class": names[c], "score": round(float(s.scores[c]), 4), "probability": round(float(s.probabilities[c]), 4)}
        for c in s.top(pixels.TOP_K)
    ]


def pixel_info(ctx: AppContext, analysis: Analysis | None, x, y, report: pixels.PixelReport | None = None) -> dict:
    """The ``pixel`` endpoint: the pixel's predicted class from the Offset Learning model and from its twin
    and each one's top-5 classes with their scores (logits of the pixel's feature cell) and softmax
    probabilities, the ablation's (offsets switched off) and the ground truth when known.

    Raises:
        InputError: no segmentation yet, or (x, y) outside the image.
    """
    if analysis is None:
        raise InputError("Segment an image first; then click one of its pixels (or send its x and y).")
    entry = ctx.registry.get(analysis.model_label)
    twin, _ = ctx.registry.twin_for(entry)
    r = report or _report(ctx, analysis, x, y, with_map=False)
    names = entry.class_names

    def model(s: pixels.Scores | None, who: AppModel | None) -> dict | None:
        if s is None:
            return None
        return {"model": who.label, "predicted": names[s.predicted], "top5": _top(s, names)}

    mine, theirs = model(r.scores, entry), model(r.twin, twin)
    ol, per_pixel = (mine, theirs) if entry.is_offset else (theirs, mine)
    ablation = (
        None if r.ablation is None else {"predicted": names[r.ablation.predicted], "top5": _top(r.ablation, names)}
    )
    truth = None if r.label is None or not 0 <= r.label < len(names) else names[r.label]
    return {
        "x": r.x,
        "y": r.y,
        "cell": [r.row, r.col],
        "ground_truth": truth,
        "offset_learning": ol,
        "per_pixel_twin": per_pixel,
        "before_offsets_ablation": ablation,
    }


def _pixel_text(info: dict, report: pixels.PixelReport) -> str:
    ol, twin = info["offset_learning"], info["per_pixel_twin"]
    parts = [f"**Pixel (x={info['x']}, y={info['y']})**"]
    if info["ground_truth"]:
        parts.append(f"ground truth **{info['ground_truth']}**")
    if ol:
        parts.append(f"Offset Learning predicts **{ol['predicted']}**")
    if twin:
        parts.append(f"the per-pixel twin **{twin['predicted']}**")
    if info["before_offsets_ablation"]:
        parts.append(f"with the offsets switched off (ablation) **{info['before_offsets_ablation']['predicted']}**")
    text = "; ".join(parts) + "."
    if "E'" in report.neighbours:
        shared = np.intersect1d(report.neighbours["E"].flat, report.neighbours["E'"].flat).size
        k = report.neighbours["E"].flat.size
        text += (
            f" Its {k} nearest pixels by cosine (cyan: in E, orange: in E′, searched separately) share {shared}; "
            "magenta: the pixel, with its arrow from E to E′ in the maps."
        )
    return text


def _picture(ctx: AppContext, analysis: Analysis, report: pixels.PixelReport | None) -> np.ndarray:
    entry = ctx.registry.get(analysis.model_label)
    p, m = analysis.probe, analysis.image_map
    marks = {}
    if report is not None and m is not None:
        for space, found in report.neighbours.items():
            marks[space] = (m.x[found.flat], m.y[found.flat])
    cell = max(1, p.padded_size[0] // p.feature_size[0])
    clicked = None if report is None else (report.x, report.y)
    return render.pixel_picture(p.image, p.prediction, entry.palette, clicked, marks, analysis.chosen, cell)


def _pixel_panel(ctx: AppContext, analysis: Analysis) -> PixelPanel:
    report = info = scores = attention = None
    text = "Click a pixel of the image or of the segmentation to see its scores and its nearest pixels."
    if analysis.pixel is not None:
        names = ctx.registry.get(analysis.model_label).class_names
        report = _report(ctx, analysis, *analysis.pixel, with_map=True)
        info = pixel_info(ctx, analysis, *analysis.pixel, report=report)
        scores, attention = pixels.score_frame(report, names), pixels.attention_frame(report, names)
        text = _pixel_text(info, report)
    return PixelPanel(
        _map_panel(ctx, analysis, report), _picture(ctx, analysis, report), scores, attention, info, text, report
    )


def pixel_panel(ctx: AppContext, analysis: Analysis | None, x, y) -> PixelPanel:
    """A click at image pixel (x, y): mark it, its E → E′ and its neighbours in the maps and on the image,
    and chart its scores. Uses the map fitted for this image (fitting it first if the panel was never
    opened); never refits.

    Raises:
        InputError: no segmentation yet, or (x, y) outside the image.
    """
    if analysis is None:
        raise InputError("Segment an image first; then click one of its pixels.")
    analysis.pixel = pixels.check_click(full_probe(ctx, analysis), x, y)
    return _pixel_panel(ctx, analysis)


def class_panel(ctx: AppContext, analysis: Analysis | None, class_name: str | None) -> PixelPanel:
    """Highlight one class (None or "" = all) in both maps and on the image, with its W_k and W′_k."""
    analysis = _need(analysis)
    names = ctx.registry.get(analysis.model_label).class_names
    if class_name in (None, "", ALL_CLASSES):
        analysis.chosen = None
    elif class_name in names:
        analysis.chosen = names.index(class_name)
    else:
        raise InputError(f"Unknown class {class_name!r}; pick one of the classes in the list.")
    return _pixel_panel(ctx, analysis)


def display_to_image(analysis: Analysis | None, index, source: str) -> tuple[int, int]:
    """A click's (x, y) on a displayed picture -> image pixel (x, y).

    ``source`` is "input" (the uploaded file as the browser shows it: scaled by image size / file size) or
    "picture" (the clickable segmentation, enlarged by an integer factor, see ``render.enlarge``).
    """
    if analysis is None:
        raise InputError("Segment an image first; then click one of its pixels.")
    try:
        u, v = (float(t) for t in index)
    except (TypeError, ValueError):
        raise InputError("The click did not say where it landed; click inside the image.") from None
    h, w = analysis.probe.input_size
    if source == "input":
        h0, w0 = analysis.original_size or (h, w)
        return int(u * w / w0), int(v * h / h0)
    factor = render.enlarge(np.zeros((h, w, 1), np.uint8)).shape[0] // h
    return int(u // factor), int(v // factor)
