"""``offseg bench app``: the app's server-side latency for one upload, panel by panel, and per click.

One "Segment" click as the page runs it, on a FashionScenes val scene rendered at ``size``² and saved
as PNG (the upload): the segmentation panel alone (decode, one model run, gradio's encoding of the
annotated image and the shares table), and all panels (that, then the twin comparison, the offset
panels with the class attention, and the exploration panel: the map fitted once plus the clickable
segmentation), timed round-robin with :func:`offseg_vis.engine.timing.time_interleaved`. Then the
callback-level latency of clicks on random pixels of that image (the map is not refitted). The
embedding map uses "auto" without the UMAP warm-up, i.e. PCA, as the app does until UMAP is compiled.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from offseg_vis.app import callbacks
from offseg_vis.app.callbacks import AppContext, AppSettings
from offseg_vis.app.components import ClassMapImage
from offseg_vis.app.testing import checkpoints_or_untrained, write_untrained_checkpoints
from offseg_vis.engine.runtime import environment
from offseg_vis.engine.timing import time_call, time_interleaved
from offseg_vis.errors import ConfigError


def scene_png(folder: Path, size: int) -> Path:
    """A FashionScenes val scene rendered at ``size``×``size``, saved as PNG (the upload)."""
    from offseg_vis.data.fashion_scenes import FashionScenesConfig, generate_scene

    image, _ = generate_scene("val", 3, FashionScenesConfig.for_size(size))
    path = folder / f"scene_{size}.png"
    Image.fromarray(image).save(path)
    return path


def _encoders():
    """Gradio components (not rendered) whose ``postprocess`` encodes outputs as the page does."""
    import gradio as gr

    return {
        "annotated": ClassMapImage(format="png", render=False),
        "table": gr.Dataframe(headers=["class", "share (%)", "pixels"], render=False),
        "picture": gr.Image(format="webp", render=False),
        "png": gr.Image(format="png", render=False),
    }


def benchmark(
    checkpoints: Sequence[str | Path] | None = None,
    size: int = 512,
    runs: int = 7,
    warmup: int = 1,
    clicks: int = 20,
    untrained: str | None = None,
    dataset: str = "ade20k",
) -> dict:
    """Time the segmentation panel, all panels and clicks for the first (default) model of ``checkpoints``.

    Args:
        checkpoints: files or folders (default: ``checkpoints/``, or an untrained pair when it is empty).
        untrained: instead of ``checkpoints``, a zoo name (e.g. ``offseg-t``): a random-weight offset +
            linear pair of it is written with the class names of ``dataset`` (a converted official
            checkpoint's shape: OffSeg-T for ADE20K has 150 classes) and timed.
        size: side of the square upload; runs/warmup: rounds of the interleaved timing; clicks: timed clicks.

    Returns:
        {"model", "params", "size", "upload_kb", "segmentation", "all_panels", "click", "map", "load",
        "environment"} with seconds as median / min.
    """
    torch.set_flush_denormal(True)  # as the app does (server.start)
    work = Path(tempfile.mkdtemp(prefix="offseg-bench-app-"))
    os.environ.setdefault("GRADIO_TEMP_DIR", str(work / "gradio"))
    if untrained is not None:
        if checkpoints:
            raise ConfigError("Pass checkpoints or an untrained model name (--untrained), not both.")
        paths = write_untrained_checkpoints(work / "untrained", model=untrained, dataset=dataset)
    else:
        paths = list(checkpoints) if checkpoints else checkpoints_or_untrained(work / "untrained")
    ctx = AppContext.from_checkpoints(paths, AppSettings(warm_up_umap=False))
    entry = ctx.registry.get(None)
    upload = scene_png(work, size)
    enc = _encoders()

    def segmentation():
        result = callbacks.segment(ctx, upload, entry.label)
        enc["annotated"].postprocess(result.annotated)
        enc["table"].postprocess(result.shares)
        return result

    def all_panels():
        analysis = segmentation().analysis
        cmp = callbacks.compare(ctx, analysis)
        for img in (cmp.offset_overlay, cmp.baseline_overlay, cmp.disagreement, cmp.outcome):
            if img is not None:
                enc["picture"].postprocess(img)
        panels = callbacks.offset_panels(ctx, analysis)
        if panels.correction is not None:
            att, _ = callbacks.attention_panel(ctx, analysis, panels.attention_default)
            for img in (panels.correction, panels.magnitude, att):
                enc["picture"].postprocess(img)
        enc["png"].postprocess(callbacks.map_panel(ctx, analysis, "auto").picture)
        return analysis

    timed = time_interleaved({"segmentation": segmentation, "all_panels": all_panels}, warmup=warmup, runs=runs)
    analysis = all_panels()
    h, w = analysis.probe.input_size
    pixels = iter(np.random.default_rng(0).integers(0, [w, h], size=(clicks + 2, 2)).tolist())
    click = time_call(lambda: callbacks.pixel_panel(ctx, analysis, *next(pixels)), warmup=2, runs=clicks)
    m = analysis.image_map
    return {
        "model": entry.label,
        "weights": "random (untrained)" if untrained is not None else "trained",
        "params": entry.num_params,
        "classes": entry.num_classes,
        "twin": ctx.registry.twin_for(entry)[0] is not None,
        "size": size,
        "upload_kb": upload.stat().st_size / 1024,
        "segmentation": _summary(timed["segmentation"]),
        "all_panels": _summary(timed["all_panels"]),
        "click": click,
        "map": {"method": m.method, "points": len(m), "stride": m.stride, "fit_s": m.seconds},
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "environment": environment(),
    }


def _summary(t: dict) -> dict:
    return {k: t[k] for k in ("median_s", "min_s", "runs", "warmup", "times_s")}


def format_result(r: dict) -> str:
    """Lines for people."""
    env = r["environment"]
    m = r["map"]
    twin = "with its twin" if r["twin"] else "no twin loaded"
    return "\n".join(
        [
            f"{r['model']} ({r['weights']} weights, {r['params'] / 1e6:.2f} M params, {r['classes']} classes, {twin}); "
            f"{r['size']}x{r['size']} PNG upload ({r['upload_kb']:.0f} KB); {env['threads']} torch threads, "
            f"{env['cpu']}; load average {r['load_average_1min']}",
            f"  segmentation panel: median {r['segmentation']['median_s']:.3f} s "
            f"(min {r['segmentation']['min_s']:.3f} s, {r['segmentation']['runs']} runs)",
            f"  all panels:         median {r['all_panels']['median_s']:.3f} s "
            f"(min {r['all_panels']['min_s']:.3f} s; map {m['method']} of {m['points']} pixels, stride {m['stride']}, "
            f"fit {m['fit_s']:.2f} s)",
            f"  click on a pixel:   median {1000 * r['click']['median_s']:.0f} ms "
            f"(min {1000 * r['click']['min_s']:.0f} ms, {r['click']['runs']} clicks, callback level)",
        ]
    )
