"""``offseg app`` (the Gradio app, every option) and ``offseg demo`` (the app with its defaults)."""

from __future__ import annotations

import argparse
import signal
import time

from offseg_vis.app.inputs import InputLimits


def _add_app_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        nargs="+",
        metavar="PATH",
        default=None,
        help="checkpoint files (.safetensors with their .json card) or folders of them "
        "(default: $OFFSEG_CHECKPOINTS or the repository's checkpoints/)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    parser.add_argument(
        "--max-side",
        type=int,
        default=InputLimits.max_side,
        help=f"downscale uploads whose longer side exceeds this (default {InputLimits.max_side})",
    )
    parser.add_argument(
        "--max-file-mb",
        type=float,
        default=InputLimits.max_file_mb,
        help=f"refuse uploads larger than this many MB (default {InputLimits.max_file_mb:g})",
    )
    parser.add_argument(
        "--no-umap",
        action="store_true",
        help="do not compile UMAP at start; the embedding panel then uses PCA unless asked",
    )
    parser.add_argument(
        "--temp-dir",
        default=None,
        help="folder for uploads and rendered images (default: a fresh temporary folder)",
    )
    parser.set_defaults(func=run_app)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``app`` and ``demo`` to the ``offseg`` command."""
    app = sub.add_parser("app", help="the Gradio app: upload an image, see its segmentation, offsets and embedding")
    _add_app_options(app)
    demo = sub.add_parser("demo", help="launch the app with the shipped checkpoints and print its URL")
    # The demo takes no options: it runs with the app's defaults, read from the app's own declarations
    # (one place), except the port: None picks a free one.
    declared = argparse.ArgumentParser(add_help=False)
    _add_app_options(declared)
    demo.set_defaults(**{**vars(declared.parse_args([])), "port": None})


def run_app(args: argparse.Namespace) -> int:
    """Load the checkpoints, serve the app until Ctrl+C."""
    from offseg_vis.app.callbacks import AppContext, AppSettings
    from offseg_vis.app.models import default_checkpoint_dir
    from offseg_vis.app.server import start
    from offseg_vis.errors import ConfigError

    if args.port is not None and not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}.")
    limits = InputLimits(max_side=args.max_side, max_file_mb=args.max_file_mb)
    settings = AppSettings(limits=limits, warm_up_umap=not args.no_umap)
    paths = args.checkpoint or [default_checkpoint_dir()]
    print(f"loading checkpoints from {', '.join(str(p) for p in paths)} ...", flush=True)
    ctx = AppContext.from_checkpoints(paths, settings)
    for label in ctx.registry.labels:
        print(f"  {label}", flush=True)
    app = start(ctx, host=args.host, port=args.port, share=args.share, temp_dir=args.temp_dir)
    print(f"OffSeg app running at {app.url}", flush=True)
    if app.share_url:
        print(f"public link: {app.share_url}", flush=True)
    print("press Ctrl+C to stop", flush=True)
    # `kill` (SIGTERM) stops as cleanly as Ctrl+C: the server closes and the temp folder is left to the OS.
    signal.signal(signal.SIGTERM, _stop)
    try:
        while True:
            time.sleep(1.0)
    except (KeyboardInterrupt, SystemExit):
        print("stopping the app", flush=True)
    finally:
        app.close()
    return 0


def _stop(signum, frame) -> None:
    raise SystemExit(0)
