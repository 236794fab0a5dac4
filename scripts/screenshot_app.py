"""Make the README screenshot of the app (``docs/figures/app.png``) through the browser test's code path.

Starts the app on a free loopback port with the shipped checkpoints, waits for UMAP to compile (so the
embedding panel shows the real map), then lets :func:`offseg_vis.app.browser.segment_in_browser` upload a
gallery scene in headless Chromium, click Segment, wait for every panel and save a full-page screenshot.

    python scripts/screenshot_app.py [--example 2] [--out docs/figures/app.png] [--allow-untrained]
    python scripts/screenshot_app.py --pixel 70 41 --example 0     # -> docs/figures/app_pixel.png

With ``--pixel X Y`` it clicks that image pixel on the clickable segmentation instead
(:func:`offseg_vis.app.browser.explore_pixel_in_browser`) and saves the exploration section.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=int, default=2, help="index into the gallery (sorted by name)")
    parser.add_argument(
        "--out", type=Path, default=None, help="default docs/figures/app.png (app_pixel.png with --pixel)"
    )
    parser.add_argument("--pixel", type=int, nargs=2, default=None, metavar=("X", "Y"), help="click this pixel")
    parser.add_argument("--checkpoint", nargs="+", default=None, help="default: the repository's checkpoints/")
    parser.add_argument(
        "--allow-untrained",
        action="store_true",
        help="without shipped checkpoints, use untrained ones (for trying the script only)",
    )
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument(
        "--budget",
        type=float,
        default=5.0,
        help="embedding time budget in seconds (auto picks UMAP when it fits; default 5)",
    )
    args = parser.parse_args()
    if args.out is None:
        args.out = REPO / "docs" / "figures" / ("app_pixel.png" if args.pixel else "app.png")

    import torch
    from PIL import Image

    from offseg_vis.app.browser import explore_pixel_in_browser, segment_in_browser
    from offseg_vis.app.callbacks import AppContext, AppSettings
    from offseg_vis.app.embedding_budget import EmbeddingSettings
    from offseg_vis.app.examples import example_images
    from offseg_vis.app.models import default_checkpoint_dir
    from offseg_vis.app.server import start
    from offseg_vis.app.testing import write_untrained_checkpoints

    work = Path(tempfile.mkdtemp(prefix="offseg-screenshot-"))
    paths = args.checkpoint or [default_checkpoint_dir()]
    if args.allow_untrained and not args.checkpoint:
        from offseg_vis.app.models import find_checkpoints

        if not find_checkpoints(default_checkpoint_dir()):
            paths = write_untrained_checkpoints(work / "untrained")
    settings = AppSettings(embedding=EmbeddingSettings(budget_s=args.budget), warm_up_umap=True)
    ctx = AppContext.from_checkpoints(paths, settings)
    start_wait = time.perf_counter()
    while not ctx.umap.ready and ctx.umap.error is None and time.perf_counter() - start_wait < 900:
        time.sleep(1.0)
    print(f"UMAP ready after {time.perf_counter() - start_wait:.0f} s (error: {ctx.umap.error})", flush=True)
    app = start(ctx, port=None, temp_dir=work / "app")
    try:
        image = example_images()[args.example]
        if args.pixel:
            run = explore_pixel_in_browser(
                app.url, image, tuple(args.pixel), screenshot=args.out, timeout_s=600, viewport=(args.width, 1000)
            )
            print(run.pixel_text)
        else:
            run = segment_in_browser(
                app.url,
                image,
                screenshot=args.out,
                wait_for_embedding=True,
                timeout_s=600,
                viewport=(args.width, 1000),
            )
    finally:
        app.close()
        torch.set_flush_denormal(False)
    with Image.open(args.out) as im:
        im.convert("RGB").save(args.out, optimize=True)  # no alpha: smaller file
        size = im.size
    print(
        f"{args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}: {size[0]}×{size[1]}, "
        f"{os.path.getsize(args.out) / 1024:.0f} KB; legend {run.legend}; blocked requests {run.blocked}; "
        f"{image.name}"
    )


if __name__ == "__main__":
    main()
