"""``offseg bench ol|speed|experiment``: benchmarks as commands, never as timed tests."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench", help="benchmarks: Offset Learning paths, model speed, the experiment grid"
    )
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    ol = bsub.add_parser("ol", help="plain vs fused Offset Learning (time and peak memory)")
    ol.add_argument("--num-classes", type=int, default=150)
    ol.add_argument("--channels", type=int, default=256)
    ol.add_argument("--size", type=int, default=128, help="feature map side (128 = stride 4 of 512)")
    ol.add_argument("--runs", type=int, default=20)
    ol.add_argument("--json", help="also write the result to this JSON file")
    ol.set_defaults(func=_ol)

    speed = bsub.add_parser(
        "speed", help="params, GMACs and batch-1 latency of the zoo (writes docs/benchmarks.*)"
    )
    speed.add_argument(
        "--models", nargs="*", default=None, help="default: the paper's models and offseg-mbv2"
    )
    speed.add_argument("--size", type=int, default=512)
    speed.add_argument("--warmup", type=int, default=5)
    speed.add_argument("--runs", type=int, default=20)
    speed.add_argument("--out", default="docs", help="folder for benchmarks.json and benchmarks.md")
    speed.set_defaults(func=_speed)

    from offseg_vis.bench.experiment import register_experiment

    register_experiment(bsub)


def _ol(args: argparse.Namespace) -> int:
    from offseg_vis.bench.offset_learning import benchmark, format_result

    result = benchmark(args.num_classes, args.channels, args.size, args.runs)
    print(format_result(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def _speed(args: argparse.Namespace) -> int:
    from offseg_vis.bench.speed import DEFAULT_MODELS, format_markdown, run_and_write

    names = tuple(args.models) if args.models else DEFAULT_MODELS
    result = run_and_write(args.out, names=names, size=args.size, warmup=args.warmup, runs=args.runs)
    print(format_markdown(result))
    return 0
