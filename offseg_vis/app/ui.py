"""The Gradio page: upload an image, see its segmentation, what the offsets changed, and its embedding.

Event chain of one click on "Segment" (each step only runs when the previous one succeeded):

    segment   (api_name="segment")  decode + one model run (prediction only) -> annotated image, shares, state
    compare                          the model's twin (same recipe/data/seed, other classifier) on the same
                                     image: fixed / broken / both wrong / both right against the ground truth
    offsets                          the intermediates (once), the ablation "offsets switched off",
                                     ‖ΔE‖/‖E‖, ‖ΔW‖/‖W‖, class attention
    explore                          joint 2-D map of E / E' with class-centred W / W' (UMAP or PCA within 5 s),
                                     fitted once per image, and the clickable segmentation

A click on the input image or on the clickable segmentation marks that pixel's E -> E' and its 20 nearest
pixels (cosine, in E and E' separately) in both maps and on the image, and charts its class scores; the same
facts come from the ``pixel`` endpoint (x, y after a ``segment`` call of the same session). Choosing a class
highlights it and marks W_k and W'_k.

The page is built in named steps, one per section (each returns a dataclass of its components), and each
event handler returns a dict {component: value}, so no handler depends on the order of its outputs.

Steps that run a network share the concurrency group "model" with one slot, and each model also holds
its own lock, so a model never runs two images at once; the queue is bounded. Errors meant for users
(our ``OffSegError``) become ``gr.Error`` sentences; anything unexpected is logged and replaced by a
generic sentence, and the server keeps serving.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass

import gradio as gr

from offseg_vis.app import callbacks
from offseg_vis.app.callbacks import ALL_CLASSES, EMBEDDING_METHODS, AppContext, PixelPanel
from offseg_vis.app.components import ClassMapImage
from offseg_vis.app.examples import example_images
from offseg_vis.app.render import hex_color
from offseg_vis.errors import OffSegError

log = logging.getLogger("offseg_vis.app")

QUEUE_MAX_SIZE = 16
STATE_SECONDS = 30 * 60  # a session's last analysis is dropped after this long

INTRO = """# OffSeg — offset learning, made visible
Per-pixel classifiers compare every pixel feature with one fixed vector per class. **Offset Learning** lets
the class vectors (W → W' = W + ΔW) and the pixel features (E → E' = E + ΔE) move towards each other for
each image before they are compared. Upload an image (PNG, JPEG, WebP, BMP or TIFF) or click a gallery
scene, press **Segment**, and see what Offset Learning changed against its per-pixel twin (the same recipe,
data and seed with a per-pixel classifier)."""


def hand_over_upload_path(component: gr.Image) -> gr.Image:
    """Make a ``gr.Image(type="filepath")`` pass the uploaded file's path on without opening it.

    The stock component opens the file with Pillow before our code runs, so a non-image would end in a
    generic "Error"; with this, :func:`offseg_vis.app.inputs.load_image` does all decoding and explains
    problems. (Replacing the method on the instance, not subclassing: gradio writes a ``.pyi`` stub beside
    the source file of every component subclass it sees.)
    """
    stock = component.preprocess

    def preprocess(payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            return stock(payload)  # a pasted data URL: gradio stores it in its cache first
        if payload.path is None:
            raise gr.Error("The upload did not arrive; please upload the image again.", print_exception=False)
        return str(payload.path)

    component.preprocess = preprocess
    return component


def _user_errors(fn):
    """Turn our errors into gr.Error sentences and hide unexpected tracebacks from the page."""

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            return fn(*args)
        except gr.Error:
            raise
        except OffSegError as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception:
            log.exception("unexpected error in %s", getattr(fn, "__name__", repr(fn)))
            raise gr.Error(
                "Something unexpected went wrong while processing this image (details are in the server "
                "log); please try another image.",
                print_exception=False,
            ) from None

    return wrapper


def _color_map(ctx: AppContext) -> dict[str, str]:
    """Class name -> hex colour over all loaded models (the first model to name a class sets its colour)."""
    colours: dict[str, str] = {}
    for entry in ctx.registry.models.values():
        for name, rgb in zip(entry.class_names, entry.palette):
            colours.setdefault(name, hex_color(rgb))
    return colours


def _components(section) -> list:
    """A section's components, in field order (the outputs of an event that updates the whole section)."""
    return [getattr(section, f.name) for f in dataclasses.fields(section)]


# ---------------------------------------------------------------------------------------------- sections


@dataclass
class TopSection:
    """Model choice, upload, Segment button, gallery; the segmentation and its class shares."""

    model: gr.Dropdown
    card: gr.Markdown
    image: gr.Image
    button: gr.Button
    status: gr.Markdown
    annotated: ClassMapImage
    shares: gr.Dataframe


def _upload_column(ctx: AppContext):
    examples = [[str(p)] for p in example_images(ctx.settings.examples_dir)]
    image = hand_over_upload_path(
        gr.Image(
            type="filepath",
            image_mode=None,
            sources=["upload", "clipboard"],
            label="Image (click a pixel after segmenting)",
            elem_id="input-image",
            height=320,
        )
    )
    button = gr.Button("Segment", variant="primary", elem_id="segment-button")
    status = gr.Markdown(elem_id="status")
    if examples:
        gr.Examples(
            examples,
            inputs=[image],
            label="Gallery: FashionScenes val scenes, plain then +looks (ground truth known)",
            examples_per_page=len(examples),
            cache_examples=False,
        )
    return image, button, status


def top_section(ctx: AppContext, colour_map: dict[str, str]) -> TopSection:
    """The first rows of the page."""
    default = ctx.registry.get(None)
    with gr.Row():
        model = gr.Dropdown(ctx.registry.labels, value=default.label, label="Model", scale=1)
        card = gr.Markdown(default.card_markdown(), elem_id="model-card")
    with gr.Row():
        with gr.Column(scale=2):
            image, button, status = _upload_column(ctx)
        with gr.Column(scale=3):
            annotated = ClassMapImage(
                label="Segmentation",
                color_map=colour_map,
                show_legend=True,
                format="png",
                elem_id="segmentation",
                height=420,
            )
            shares = gr.Dataframe(
                headers=["class", "share (%)", "pixels"],
                datatype=["str", "number", "number"],
                label="Share of pixels per class",
                interactive=False,
                elem_id="shares",
            )
    return TopSection(model, card, image, button, status, annotated, shares)


@dataclass
class CompareSection:
    """Offset Learning against its per-pixel twin."""

    offset: gr.Image
    baseline: gr.Image
    outcome: gr.Image
    disagreement: gr.Image
    text: gr.Markdown


def _figure_image(label: str, elem_id: str | None = None) -> gr.Image:
    """An output-only image panel for a rendered figure (webp, the format of every figure panel)."""
    return gr.Image(label=label, format="webp", interactive=False, elem_id=elem_id)


def compare_section() -> CompareSection:
    gr.Markdown("## What Offset Learning changed: against its per-pixel twin")
    with gr.Row():
        offset = _figure_image("Offset Learning")
        baseline = _figure_image("Per-pixel twin")
    with gr.Row():
        outcome = _figure_image(
            "Fixed (green) / broken (red) / both wrong (orange) against the ground truth", "twin-comparison"
        )
        disagreement = _figure_image("Where they disagree", "disagreement")
    return CompareSection(offset, baseline, outcome, disagreement, gr.Markdown())


@dataclass
class OffsetSection:
    """Inside Offset Learning: the ablation, offset magnitudes and class attention."""

    correction: gr.Image
    correction_text: gr.Markdown
    magnitude: gr.Image
    magnitude_text: gr.Markdown
    class_bars: gr.BarPlot
    attention_class: gr.Dropdown
    attention: gr.Image
    attention_text: gr.Markdown


def offset_section(colour_map: dict[str, str]) -> OffsetSection:
    gr.Markdown("## Inside Offset Learning")
    with gr.Row():
        with gr.Column():
            correction = _figure_image("Ablation: offsets switched off (ΔW = ΔE = 0 → with offsets)", "correction")
            correction_text = gr.Markdown()
        with gr.Column():
            magnitude = _figure_image("Feature offset magnitude ‖ΔE‖/‖E‖", "feature-offset")
            magnitude_text = gr.Markdown()
    with gr.Row():
        with gr.Column():
            class_bars = gr.BarPlot(
                x="class",
                y="|dW| / |W|",
                color="class",
                color_map=colour_map,
                sort="-y",
                y_lim=[0, None],
                label="Class offset magnitude ‖ΔW‖/‖W‖ of the classes present",
                elem_id="class-offsets",
            )
        with gr.Column():
            attention_class = gr.Dropdown([], label="Class attention of", elem_id="attention-class")
            attention = _figure_image("Class attention (softmax over pixels of E·Wᵀ)", "attention")
            attention_text = gr.Markdown()
    return OffsetSection(
        correction, correction_text, magnitude, magnitude_text, class_bars, attention_class, attention, attention_text
    )


@dataclass
class ExploreSection:
    """The linked pixel <-> embedding view."""

    method: gr.Radio
    class_choice: gr.Dropdown
    before: gr.ScatterPlot
    after: gr.ScatterPlot
    map_text: gr.Markdown
    picture: gr.Image
    x: gr.Number
    y: gr.Number
    show: gr.Button
    pixel_text: gr.Markdown
    scores: gr.ScatterPlot
    position_attention: gr.BarPlot
    info: gr.JSON


MAP_TOOLTIP = ["kind", "class", "predicted", "pixel", "correct"]


def _map_plot(title: str, colours: dict[str, str], elem_id: str) -> gr.ScatterPlot:
    return gr.ScatterPlot(
        x="u",
        y="v",
        color="kind",
        color_map=colours,
        tooltip=MAP_TOOLTIP,
        title=title,
        x_title="map 1",
        y_title="map 2",
        height=420,
        show_label=False,
        elem_id=elem_id,
    )


def _pixel_column():
    picture = gr.Image(
        label="Click a pixel (segmentation; cyan / orange: its nearest pixels in E / E′)",
        format="png",
        interactive=False,
        elem_id="pixel-picture",
        height=384,
    )
    with gr.Row():
        x = gr.Number(label="x", precision=0, minimum=0, elem_id="pixel-x")
        y = gr.Number(label="y", precision=0, minimum=0, elem_id="pixel-y")
        show = gr.Button("Show pixel", elem_id="pixel-button")
    return picture, x, y, show


def explore_section(ctx: AppContext) -> ExploreSection:
    gr.Markdown("## Pixel features and class embeddings, before and after the offsets")
    colours = _map_colours(ctx)
    with gr.Row():
        method = gr.Radio(list(EMBEDDING_METHODS), value="auto", label="Map", elem_id="embedding-method")
        class_choice = gr.Dropdown([ALL_CLASSES], value=ALL_CLASSES, label="Highlight a class", elem_id="class-choice")
    with gr.Row():
        before = _map_plot("E: pixel features before the offsets, W", colours, "map-before")
        after = _map_plot("E′: after the offsets, W′", colours, "map-after")
    map_text = gr.Markdown(elem_id="map-text")
    with gr.Row():
        with gr.Column(scale=2):
            picture, x, y, show = _pixel_column()
        with gr.Column(scale=3):
            pixel_text = gr.Markdown(elem_id="pixel-text")
            scores = gr.ScatterPlot(
                x="class",
                y="score",
                color="series",
                tooltip=["class", "score", "series"],
                title="Class scores of the pixel's feature cell",
                height=260,
                show_label=False,
                elem_id="pixel-scores",
            )
            position_attention = gr.BarPlot(
                x="class",
                y="attention",
                sort="-y",
                y_lim=[0, 1],
                title="Position attention: softmax over classes of E·Wᵀ",
                height=220,
                show_label=False,
                elem_id="pixel-attention",
            )
            info = gr.JSON(label="pixel endpoint answer", elem_id="pixel-info")
    return ExploreSection(
        method, class_choice, before, after, map_text, picture, x, y, show, pixel_text, scores, position_attention, info
    )


def _map_colours(ctx: AppContext) -> dict[str, str]:
    entry = ctx.registry.get(None)
    colours = _color_map(ctx)
    colours.update(callbacks.pixels.map_colours(entry.class_names, entry.palette))
    return colours


# ---------------------------------------------------------------------------------------------- handlers


def _offsets_update(ctx: AppContext, sec: OffsetSection, analysis) -> dict:
    panels = callbacks.offset_panels(ctx, analysis)
    if panels.correction is None:
        return {
            sec.correction: None,
            sec.correction_text: panels.correction_text,
            sec.magnitude: None,
            sec.magnitude_text: panels.magnitude_text,
            sec.class_bars: None,
            sec.attention_class: gr.Dropdown(choices=[], value=None),
            sec.attention: None,
            sec.attention_text: panels.note,
        }
    att_image, att_text = callbacks.attention_panel(ctx, analysis, panels.attention_default)
    return {
        sec.correction: panels.correction,
        sec.correction_text: panels.correction_text,
        sec.magnitude: panels.magnitude,
        sec.magnitude_text: panels.magnitude_text,
        sec.class_bars: _bar_frame(panels.class_offsets),
        sec.attention_class: gr.Dropdown(choices=panels.attention_classes, value=panels.attention_default),
        sec.attention: att_image,
        sec.attention_text: att_text,
    }


def _compare_update(ctx: AppContext, sec: CompareSection, analysis) -> dict:
    panels = callbacks.compare(ctx, analysis)
    return {
        sec.offset: panels.offset_overlay,
        sec.baseline: panels.baseline_overlay,
        sec.outcome: panels.outcome,
        sec.disagreement: panels.disagreement,
        sec.text: panels.text,
    }


def _explore_update(sec: ExploreSection, panel: PixelPanel, with_classes: bool = False) -> dict:
    """Component values of one :class:`PixelPanel` (the maps with their shared limits, the picture, charts)."""
    maps = panel.maps
    hidden_after = maps.after is None
    out = {
        sec.before: gr.ScatterPlot(value=maps.before, x_lim=maps.x_lim, y_lim=maps.y_lim),
        sec.after: gr.ScatterPlot(value=maps.after, x_lim=maps.x_lim, y_lim=maps.y_lim, visible=not hidden_after),
        sec.map_text: maps.text,
        sec.picture: panel.picture,
        sec.pixel_text: panel.text,
        sec.scores: panel.scores,
        sec.position_attention: panel.attention,
        sec.info: panel.info,
    }
    if panel.report is not None:
        out[sec.x], out[sec.y] = panel.report.x, panel.report.y
    if with_classes:
        out[sec.class_choice] = gr.Dropdown(choices=[ALL_CLASSES, *maps.classes], value=ALL_CLASSES)
    return out


def _zoom_update(sec: ExploreSection, analysis, x_range) -> dict:
    """A brushed x interval on either map -> both maps zoomed to it (y fitted to the points inside)."""
    if analysis is None or analysis.image_map is None:
        raise gr.Error("Segment an image first; the maps show that image's pixels.", print_exception=False)
    m = analysis.image_map
    coords = [m.embedding.before] + ([m.embedding.after] if m.embedding.after is not None else [])
    frames = [_uv_frame(c) for c in coords]
    x_lim, y_lim = callbacks.pixels.zoom_limits(frames, x_range)
    return {sec.before: gr.ScatterPlot(x_lim=x_lim, y_lim=y_lim), sec.after: gr.ScatterPlot(x_lim=x_lim, y_lim=y_lim)}


def _unzoom_update(sec: ExploreSection, analysis) -> dict:
    if analysis is None or analysis.image_map is None:
        return {}
    x_lim, y_lim = callbacks.pixels.map_limits(analysis.image_map)
    return {sec.before: gr.ScatterPlot(x_lim=x_lim, y_lim=y_lim), sec.after: gr.ScatterPlot(x_lim=x_lim, y_lim=y_lim)}


def _uv_frame(coords):
    import pandas as pd

    return pd.DataFrame({"u": coords[:, 0], "v": coords[:, 1]})


# ---------------------------------------------------------------------------------------------- events


def wire_segment(
    ctx: AppContext, state: gr.State, top: TopSection, cmp: CompareSection, off: OffsetSection, exp: ExploreSection
) -> None:
    """Segment -> status -> twin comparison -> offsets -> the map (each step only after the previous one)."""

    @_user_errors
    def on_segment(image_path, model_label):
        result = callbacks.segment(ctx, image_path, model_label)
        return {top.annotated: result.annotated, top.shares: result.shares, state: result.analysis}

    @_user_errors
    def on_explore(analysis, method):
        if analysis is None:
            return {exp.map_text: "Segment an image first; the map shows that image's pixels."}
        return _explore_update(exp, callbacks.map_panel(ctx, analysis, method), with_classes=True)

    top.model.change(
        lambda label: ctx.registry.get(label).card_markdown(),
        [top.model],
        [top.card],
        api_visibility="private",
        queue=False,
    )
    step = top.button.click(
        on_segment,
        [top.image, top.model],
        [top.annotated, top.shares, state],
        api_name="segment",
        concurrency_id="model",
        concurrency_limit=1,
        api_description="Segment an image: returns the annotated image and each class's pixel share.",
    ).success(_status_of, [state], [top.status], api_visibility="private", queue=False)
    # The panels, each after the previous one succeeded; every panel's work runs one at a time in its group.
    for update, inputs, section, group in (
        (_user_errors(functools.partial(_compare_update, ctx, cmp)), [state], cmp, "model"),
        (_user_errors(functools.partial(_offsets_update, ctx, off)), [state], off, "panels"),
        (on_explore, [state, exp.method], exp, "embedding"),
    ):
        step = step.success(
            update, inputs, _components(section), api_visibility="private", concurrency_id=group, concurrency_limit=1
        )
    exp.method.input(
        on_explore, [state, exp.method], _components(exp), api_visibility="private", concurrency_id="embedding"
    )


def wire_offsets(ctx: AppContext, state: gr.State, off: OffsetSection) -> None:
    """The class-attention dropdown."""
    off.attention_class.input(
        _user_errors(functools.partial(callbacks.attention_panel, ctx)),
        [state, off.attention_class],
        [off.attention, off.attention_text],
        api_visibility="private",
        concurrency_id="panels",
    )


def wire_explore(ctx: AppContext, state: gr.State, top: TopSection, exp: ExploreSection) -> None:
    """Clicks on the images, the x/y fields and the ``pixel`` endpoint, the class choice, zooming the maps."""
    outputs = _components(exp)

    def click_on(source: str):
        @_user_errors
        def on_click(analysis, evt: gr.SelectData):
            x, y = callbacks.display_to_image(analysis, evt.index, source)
            return _explore_update(exp, callbacks.pixel_panel(ctx, analysis, x, y))

        return on_click

    top.image.select(click_on("input"), [state], outputs, api_visibility="private", concurrency_id="pixel")
    exp.picture.select(click_on("picture"), [state], outputs, api_visibility="private", concurrency_id="pixel")

    @_user_errors
    def on_pixel(analysis, x, y):
        return callbacks.pixel_info(ctx, analysis, x, y)

    @_user_errors
    def on_pixel_panels(analysis, x, y):
        return _explore_update(exp, callbacks.pixel_panel(ctx, analysis, x, y))

    exp.show.click(
        on_pixel,
        [state, exp.x, exp.y],
        [exp.info],
        api_name="pixel",
        concurrency_id="pixel",
        api_description="A pixel (x, y) of the last segmented image of this session: the predicted class "
        "of the Offset Learning model and of its per-pixel twin, each with its top-5 classes and scores.",
    ).success(on_pixel_panels, [state, exp.x, exp.y], outputs, api_visibility="private", concurrency_id="pixel")

    @_user_errors
    def on_class(analysis, name):
        return _explore_update(exp, callbacks.class_panel(ctx, analysis, name))

    exp.class_choice.input(
        on_class, [state, exp.class_choice], outputs, api_visibility="private", concurrency_id="pixel"
    )

    @_user_errors
    def on_zoom(analysis, evt: gr.SelectData):
        return _zoom_update(exp, analysis, evt.index)

    def on_unzoom(analysis):
        return _unzoom_update(exp, analysis)

    for plot in (exp.before, exp.after):
        plot.select(on_zoom, [state], [exp.before, exp.after], api_visibility="private", queue=False)
        plot.double_click(on_unzoom, [state], [exp.before, exp.after], api_visibility="private", queue=False)


def build_app(ctx: AppContext) -> gr.Blocks:
    """The gr.Blocks page for the models in ``ctx`` (launch it with :func:`launch`)."""
    colour_map = _color_map(ctx)
    with gr.Blocks(title="OffSeg — offset learning", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        state = gr.State(None, time_to_live=STATE_SECONDS)
        gr.Markdown(INTRO)
        top = top_section(ctx, colour_map)
        cmp = compare_section()
        off = offset_section(colour_map)
        exp = explore_section(ctx)
        wire_segment(ctx, state, top, cmp, off, exp)
        wire_offsets(ctx, state, off)
        wire_explore(ctx, state, top, exp)
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=1)
    return demo


def _status_of(analysis) -> str:
    """The segmentation's status sentences (shown once it succeeded)."""
    return analysis.status if analysis is not None else ""


def _bar_frame(rows):
    """Rows [class, ratio] -> the DataFrame gr.BarPlot wants."""
    import pandas as pd

    return pd.DataFrame(rows, columns=["class", "|dW| / |W|"])
