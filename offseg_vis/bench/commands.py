"""``offseg bench ol|speed|experiment``: benchmarks as commands, never as timed tests."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks: Offset Learning paths, model speed, the experiment grid")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    ol = bsub.add_parser("ol", help="plain vs fused Offset Learning (time and peak memory)")
    ol.add_argument("--num-classes", type=int, default=150)
    ol.add_argument("--channels", type=int, default=256)
    ol.add_argument("--size", type=int, default=128, help="feature map side (128 = stride 4 of 512)")
    ol.add_argument("--runs", type=int, default=20)
    ol.add_argument("--json", help="also write the result to this JSON file")
    ol.set_defaults(func=_ol)


def _ol(args: argparse.Namespace) -> int:
    from offseg_vis.bench.offset_learning import benchmark, format_result

    result = benchmark(args.num_classes, args.channels, args.size, args.runs)
    print(format_result(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0
