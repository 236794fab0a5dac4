"""The Gradio page: upload an image, see its segmentation, what the offsets changed, and its embedding.

Event chain of one click on "Segment" (each step only runs when the previous one succeeded):

    segment   (api_name="segment")  decode + one model run (prediction only) -> annotated image, shares, state
    compare                          the model's twin (same recipe/data/seed, other classifier) on the same
                                     image: fixed / broken / both wrong / both right against the ground truth
    offsets                          the intermediates (once), the ablation "offsets switched off",
                                     ‖ΔE‖/‖E‖, ‖ΔW‖/‖W‖, class attention
    embedding                        joint 2-D map of E / E' with class-centred W / W' (UMAP or PCA within 5 s)

Steps that run a network share the concurrency group "model" with one slot, and each model also holds
its own lock, so a model never runs two images at once; the queue is bounded. Errors meant for users
(our ``OffSegError``) become ``gr.Error`` sentences; anything unexpected is logged and replaced by a
generic sentence, and the server keeps serving.
"""

from __future__ import annotations

import functools
import logging

import gradio as gr

from offseg_vis.app import callbacks
from offseg_vis.app.callbacks import EMBEDDING_METHODS, AppContext
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
            log.exception("unexpected error in %s", fn.__name__)
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


def build_app(ctx: AppContext) -> gr.Blocks:
    """The gr.Blocks page for the models in ``ctx`` (launch it with :func:`launch`)."""
    colour_map = _color_map(ctx)
    examples = [[str(p)] for p in example_images(ctx.settings.examples_dir)]
    default = ctx.registry.get(None)

    # ------------------------------------------------------------------ the functions behind the events
    @_user_errors
    def on_segment(image_path, model_label):
        result = callbacks.segment(ctx, image_path, model_label)
        return result.annotated, result.shares, result.analysis

    @_user_errors
    def on_offsets(analysis):
        panels = callbacks.offset_panels(ctx, analysis)
        if panels.correction is None:
            return (
                None,
                panels.correction_text,
                None,
                panels.magnitude_text,
                None,
                gr.Dropdown(choices=[], value=None),
                None,
                panels.note,
            )
        att_image, att_text = callbacks.attention_panel(ctx, analysis, panels.attention_default)
        bars = _bar_frame(panels.class_offsets)
        dropdown = gr.Dropdown(choices=panels.attention_classes, value=panels.attention_default)
        return (
            panels.correction,
            panels.correction_text,
            panels.magnitude,
            panels.magnitude_text,
            bars,
            dropdown,
            att_image,
            att_text,
        )

    @_user_errors
    def on_attention(analysis, class_name):
        return callbacks.attention_panel(ctx, analysis, class_name)

    @_user_errors
    def on_compare(analysis):
        panels = callbacks.compare(ctx, analysis)
        return panels.offset_overlay, panels.baseline_overlay, panels.outcome, panels.disagreement, panels.text

    @_user_errors
    def on_embedding(analysis, method):
        if analysis is None:
            return None, "Segment an image first; the map shows that image's pixels."
        return callbacks.embedding_panel(ctx, analysis, method)

    def on_model(label):
        return ctx.registry.get(label).card_markdown()

    # ------------------------------------------------------------------ the page
    with gr.Blocks(title="OffSeg — offset learning", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        state = gr.State(None, time_to_live=STATE_SECONDS)
        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Dropdown(ctx.registry.labels, value=default.label, label="Model", scale=1)
            card = gr.Markdown(default.card_markdown(), elem_id="model-card")
        with gr.Row():
            with gr.Column(scale=2):
                image = hand_over_upload_path(
                    gr.Image(
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        label="Image",
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
                        label="Gallery: FashionScenes val scenes (ground truth known)",
                        examples_per_page=len(examples),
                        cache_examples=False,
                    )
            with gr.Column(scale=3):
                annotated = gr.AnnotatedImage(
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

        gr.Markdown("## What Offset Learning changed: against its per-pixel twin")
        with gr.Row():
            cmp_offset = gr.Image(label="Offset Learning", format="webp", interactive=False)
            cmp_base = gr.Image(label="Per-pixel twin", format="webp", interactive=False)
        with gr.Row():
            cmp_outcome = gr.Image(
                label="Fixed (green) / broken (red) / both wrong (orange) against the ground truth",
                format="webp",
                interactive=False,
                elem_id="twin-comparison",
            )
            cmp_diff = gr.Image(label="Where they disagree", format="webp", interactive=False, elem_id="disagreement")
        cmp_text = gr.Markdown()

        gr.Markdown("## Inside Offset Learning")
        with gr.Row():
            with gr.Column():
                correction = gr.Image(
                    label="Ablation: offsets switched off (ΔW = ΔE = 0 → with offsets)",
                    format="webp",
                    interactive=False,
                    elem_id="correction",
                )
                correction_text = gr.Markdown()
            with gr.Column():
                magnitude = gr.Image(
                    label="Feature offset magnitude ‖ΔE‖/‖E‖",
                    format="webp",
                    interactive=False,
                    elem_id="feature-offset",
                )
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
                attention = gr.Image(
                    label="Class attention (softmax over pixels of E·Wᵀ)",
                    format="webp",
                    interactive=False,
                    elem_id="attention",
                )
                attention_text = gr.Markdown()

        gr.Markdown("## Pixel features and class embeddings, before and after the offsets")
        method = gr.Radio(list(EMBEDDING_METHODS), value="auto", label="Map", elem_id="embedding-method")
        embedding = gr.Image(
            label="Joint 2-D map of E and E' with W and W'",
            format="webp",
            interactive=False,
            elem_id="embedding",
            show_label=False,  # the figure has its own titles; a floating label would cover them
        )
        embedding_text = gr.Markdown()

        # ------------------------------------------------------------------ the events
        model.change(on_model, [model], [card], api_visibility="private", queue=False)
        (
            button.click(
                on_segment,
                [image, model],
                [annotated, shares, state],
                api_name="segment",
                concurrency_id="model",
                concurrency_limit=1,
                api_description="Segment an image: returns the annotated image and each class's pixel share.",
            )
            .success(_status_of, [state], [status], api_visibility="private", queue=False)
            .success(
                on_compare,
                [state],
                [cmp_offset, cmp_base, cmp_outcome, cmp_diff, cmp_text],
                api_visibility="private",
                concurrency_id="model",
            )
            .success(
                on_offsets,
                [state],
                [
                    correction,
                    correction_text,
                    magnitude,
                    magnitude_text,
                    class_bars,
                    attention_class,
                    attention,
                    attention_text,
                ],
                api_visibility="private",
                concurrency_id="panels",
                concurrency_limit=1,
            )
            .success(
                on_embedding,
                [state, method],
                [embedding, embedding_text],
                api_visibility="private",
                concurrency_id="embedding",
                concurrency_limit=1,
            )
        )
        attention_class.input(
            on_attention,
            [state, attention_class],
            [attention, attention_text],
            api_visibility="private",
            concurrency_id="panels",
        )
        method.input(
            on_embedding,
            [state, method],
            [embedding, embedding_text],
            api_visibility="private",
            concurrency_id="embedding",
        )
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=1)
    return demo


def _status_of(analysis) -> str:
    """The segmentation's status sentences (shown once it succeeded)."""
    return analysis.status if analysis is not None else ""


def _bar_frame(rows):
    """Rows [class, ratio] -> the DataFrame gr.BarPlot wants."""
    import pandas as pd

    return pd.DataFrame(rows, columns=["class", "|dW| / |W|"])
