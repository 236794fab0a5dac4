"""``offseg onnx MODEL_OR_CHECKPOINT OUT.onnx [--num-classes K] [--size H W] [--dynamic]``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "onnx",
        help="export a zoo model or a checkpoint to ONNX and check ONNX Runtime against torch",
        description=(
            "Exports the eval-mode forward (normalised images -> logits at the head's stride; Offset "
            "Learning's fused path) with the dynamo exporter, then runs ONNX Runtime on random inputs "
            "and prints max |ONNX Runtime - torch| beside the logit scale."
        ),
    )
    p.add_argument("model", help="a zoo model name (random weights) or a .safetensors checkpoint with its card")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument("--num-classes", type=int, default=None, help="classes of a zoo model (default 150)")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[512, 512],
        metavar=("H", "W"),
        help="example input size, multiples of 32 (default 512 512)",
    )
    p.add_argument(
        "--dynamic",
        action="store_true",
        help="symbolic H and W (any multiples of 32 from 64 to 8192) instead of a fixed size",
    )
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=_onnx)


def _onnx(args: argparse.Namespace) -> int:
    from offseg_vis.deploy.onnx_export import export_onnx, load_for_export, require_deploy

    require_deploy()
    model, description = load_for_export(args.model, args.num_classes)
    print(
        f"exporting {description} at {args.size[0]}x{args.size[1]}{' (dynamic H, W)' if args.dynamic else ''}",
        flush=True,
    )
    report = export_onnx(
        model, args.out, tuple(args.size), dynamic=args.dynamic, opset=args.opset, description=description
    )
    print(report.summary())
    return 0
