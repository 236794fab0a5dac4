"""``offseg bench ol|speed|train|umap|app``: benchmarks as commands, never as timed tests.

``offseg bench experiment`` remains as an alias of ``offseg experiment``.
"""

from __future__ import annotations

import argparse
import json

from offseg_vis.experiment.cli import register_experiment


def _ints(parser: argparse.ArgumentParser, **defaults: int) -> None:
    """Declare integer options by name: ``num_classes=150`` becomes ``--num-classes`` (type int, default 150)."""
    for name, default in defaults.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=default)


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", help="also write the result to this JSON file")


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench", help="benchmarks: Offset Learning paths, model speed, training throughput, UMAP, app latency"
    )
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    ol = bsub.add_parser("ol", help="plain vs fused Offset Learning (time and peak memory)")
    _ints(ol, num_classes=150, channels=256)
    ol.add_argument("--size", type=int, default=128, help="feature map side (128 = stride 4 of 512)")
    _ints(ol, runs=20)
    _json_option(ol)
    ol.set_defaults(func=_ol)

    speed = bsub.add_parser("speed", help="params, GMACs and batch-1 latency of the zoo (writes docs/benchmarks.*)")
    speed.add_argument("--models", nargs="*", default=None, help="default: the paper's models and offseg-mbv2")
    _ints(speed, size=512, warmup=5, runs=20)
    speed.add_argument(
        "--runtime",
        nargs="+",
        default=["torch"],
        choices=["torch", "onnxruntime", "inductor"],
        help="runtimes to time (onnxruntime exports each model first and needs the deploy extra; inductor is "
        "torch.compile with the inductor backend, its compile time reported apart from the latency)",
    )
    speed.add_argument("--out", default="docs", help="folder for benchmarks.json and benchmarks.md")
    speed.set_defaults(func=_speed)

    train = bsub.add_parser("train", help="training throughput (img/s) per classifier, interleaved")
    train.add_argument("--model", default="offseg-mbv2")
    train.add_argument("--classifiers", nargs="+", default=["linear", "offset"])
    _ints(train, size=128, batch=16, num_classes=11, warmup=3, steps=10)
    _json_option(train)
    train.set_defaults(func=_train)

    app = bsub.add_parser("app", help="the app's latency: segmentation panel, all panels, clicks (512² upload)")
    app.add_argument("--checkpoint", nargs="+", default=None, help="files or folders (default: checkpoints/)")
    app.add_argument(
        "--untrained",
        metavar="MODEL",
        help="instead of checkpoints: a random-weight offset + linear pair of this zoo model (e.g. offseg-t)",
    )
    app.add_argument("--dataset", default="ade20k", help="with --untrained: whose class names the card carries")
    _ints(app, size=512, runs=7, warmup=1, clicks=20)
    _json_option(app)
    app.set_defaults(func=_app)

    umap = bsub.add_parser("umap", help="the joint UMAP (before + after pixels) at the promised size")
    umap.add_argument("--points", type=int, default=50_000, help="points fitted (before + after)")
    _ints(umap, dims=256, repeats=2)
    umap.add_argument("--method", default="umap", choices=["umap", "pca"])
    umap.add_argument("--n-epochs", type=int, default=None, help="UMAP epochs (default: the library's)")
    _json_option(umap)
    umap.set_defaults(func=_umap)

    # the experiment is its own command now (`offseg experiment`); the old name still works
    register_experiment(bsub, old_name="offseg bench experiment")


def _write_json(path: str | None, result: dict) -> None:
    if path:
        from offseg_vis.models.weights import atomic_write_text

        atomic_write_text(path, json.dumps(result, indent=1))
        print(f"written to {path}")


def _ol(args: argparse.Namespace) -> int:
    from offseg_vis.bench.offset_learning import benchmark, format_result

    result = benchmark(args.num_classes, args.channels, args.size, args.runs)
    print(format_result(result))
    _write_json(args.json, result)
    return 0


def _train(args: argparse.Namespace) -> int:
    from offseg_vis.bench.train_throughput import benchmark, format_result

    result = benchmark(args.model, args.classifiers, args.size, args.batch, args.num_classes, args.warmup, args.steps)
    print(format_result(result))
    _write_json(args.json, result)
    return 0


def _app(args: argparse.Namespace) -> int:
    from offseg_vis.bench.app_latency import benchmark, format_result

    result = benchmark(
        args.checkpoint, args.size, args.runs, args.warmup, args.clicks, untrained=args.untrained, dataset=args.dataset
    )
    print(format_result(result))
    _write_json(args.json, result)
    return 0


def _umap(args: argparse.Namespace) -> int:
    from offseg_vis.bench.umap import benchmark, format_result

    result = benchmark(args.points, args.dims, args.repeats, args.method, args.n_epochs)
    print(format_result(result))
    _write_json(args.json, result)
    return 0


def _speed(args: argparse.Namespace) -> int:
    from offseg_vis.bench.speed import DEFAULT_MODELS, format_markdown, run_and_write

    names = tuple(args.models) if args.models else DEFAULT_MODELS
    result = run_and_write(
        args.out, names=names, size=args.size, warmup=args.warmup, runs=args.runs, runtimes=tuple(args.runtime)
    )
    print(format_markdown(result))
    return 0
