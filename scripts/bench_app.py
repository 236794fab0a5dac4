"""Benchmark the app's latency: a 512×512 upload -> segmentation + offset panels, on this machine's CPU.

Measures, per run, the server-side work of one "Segment" click up to the offset panels, exactly as the
page does it: decode the PNG, run the model once (``segment``), draw the correction map, the ‖ΔE‖/‖E‖
heatmap, the ‖ΔW‖ bars and the class attention (``offset_panels`` + ``attention_panel``), and gradio's
encoding of those outputs (the components' ``postprocess``). Also times, separately, the baseline
comparison, the embedding panel (budget 5 s) and, with ``--http``, the ``/segment`` API round trip through
a loopback server with gradio_client. Prints medians; ``--json`` writes every number.

    python scripts/bench_app.py [--runs 7] [--size 512] [--checkpoint PATH ...] [--http] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image


def scene_png(folder: Path, size: int) -> Path:
    """A FashionScenes val scene rendered at ``size``×``size``, saved as PNG (the upload)."""
    from offseg_vis.data.fashion_scenes import FashionScenesConfig, generate_scene

    image, _ = generate_scene("val", 3, FashionScenesConfig.for_size(size))
    path = folder / f"scene_{size}.png"
    Image.fromarray(image).save(path)
    return path


def timed(fn, *args):
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--checkpoint", nargs="+", default=None, help="default: checkpoints/ (untrained if empty)"
    )
    parser.add_argument(
        "--http", action="store_true", help="also time the /segment API through a local server"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    work = Path(tempfile.mkdtemp(prefix="offseg-bench-app-"))
    os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio")
    torch.set_flush_denormal(True)  # as the app does

    import gradio as gr

    from offseg_vis.app import callbacks
    from offseg_vis.app.callbacks import AppContext, AppSettings
    from offseg_vis.app.testing import checkpoints_or_untrained
    from offseg_vis.app.ui import _bar_frame

    paths = args.checkpoint or checkpoints_or_untrained(work / "untrained")
    ctx = AppContext.from_checkpoints(paths, AppSettings(warm_up_umap=True))
    entry = ctx.registry.get(None)
    upload = scene_png(work, args.size)
    print(
        f"model {entry.label} ({entry.num_params / 1e6:.2f} M params), "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, "
        f"upload {upload.name} ({upload.stat().st_size / 1024:.0f} KB)"
    )
    annotated = gr.AnnotatedImage(format="png", render=False)
    table = gr.Dataframe(headers=["class", "share (%)", "pixels"], render=False)
    picture = gr.Image(format="webp", render=False)  # as the page: webp panels, png segmentation
    bars = gr.BarPlot(x="class", y="|dW| / |W|", render=False)

    def click():
        """Server work of one Segment click up to the offset panels (segment + offsets steps)."""
        result = callbacks.segment(ctx, upload, entry.label)
        annotated.postprocess(result.annotated)
        table.postprocess(result.shares)
        panels = callbacks.offset_panels(ctx, result.analysis)
        att, _ = callbacks.attention_panel(ctx, result.analysis, panels.attention_default)
        for img in (panels.correction, panels.magnitude, att):
            picture.postprocess(img)
        bars.postprocess(_bar_frame(panels.class_offsets))
        return result

    timed(click)  # warm-up (first-call allocations, lazy imports)
    rows = []
    for r in range(args.runs):
        result, wall, cpu = timed(click)
        _, seg_wall, _ = timed(callbacks.segment, ctx, upload, entry.label)
        rows.append(
            {"click_s": wall, "click_cpu_s": cpu, "segment_only_s": seg_wall, "load": os.getloadavg()[0]}
        )
        print(
            f"run {r}: segmentation + offset panels {wall:.3f} s (CPU {cpu:.2f} s; segment step alone "
            f"{seg_wall:.3f} s); load average {rows[-1]['load']:.1f}",
            flush=True,
        )
    analysis = result.analysis
    _, cmp_wall, _ = timed(callbacks.compare, ctx, analysis)
    thread_done = time.perf_counter()
    while not ctx.umap.ready and ctx.umap.error is None and time.perf_counter() - thread_done < 600:
        time.sleep(0.5)  # let the background UMAP warm-up finish, as in a running app
    emb_rows = []
    for method in ("auto", "pca"):
        (_, text), wall, _ = timed(callbacks.embedding_panel, ctx, analysis, method)
        emb_rows.append({"method": method, "seconds": wall, "text": text})
        print(f"embedding ({method}): {wall:.2f} s — {text}")
    http = []
    if args.http:
        from gradio_client import Client, handle_file

        from offseg_vis.app.server import start

        app = start(ctx, port=None, temp_dir=work / "server")
        client = Client(app.url, verbose=False, analytics_enabled=False, download_files=str(work / "dl"))
        client.predict(handle_file(str(upload)), api_name="/segment")
        for _ in range(args.runs):
            _, wall, _ = timed(lambda: client.predict(handle_file(str(upload)), api_name="/segment"))
            http.append(wall)
        app.close()
        print(
            f"/segment over HTTP (upload, segment, encode, download): median {statistics.median(http):.3f} s"
        )
    median = statistics.median(r["click_s"] for r in rows)
    print(
        f"MEDIAN {args.size}x{args.size} upload -> segmentation + offset panels: {median:.3f} s "
        f"(CPU {statistics.median(r['click_cpu_s'] for r in rows):.2f} s); "
        f"baseline comparison {cmp_wall:.2f} s"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "size": args.size,
                    "model": entry.label,
                    "threads": torch.get_num_threads(),
                    "runs": rows,
                    "median_click_s": median,
                    "compare_s": cmp_wall,
                    "embedding": emb_rows,
                    "http_segment_s": http,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
