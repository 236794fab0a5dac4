"""``offseg onnx MODEL_OR_CHECKPOINT OUT.onnx [--num-classes K] [--size H W] [--dynamic]``, and with
``--int8 [--calibration-scenes N] [--evaluate] [--bench-sizes S ...]`` a statically quantised model."""

from __future__ import annotations

import argparse
from pathlib import Path

from offseg_vis.errors import InputError


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
    q = p.add_argument_group(
        "int8",
        "ONNX Runtime static quantisation of a checkpoint: BatchNorm folded into the convolutions, the fp32 "
        "model written to OUT.fp32.onnx, the int8 (QDQ) model to OUT, calibrated on the first N scenes of the "
        "checkpoint config's train split (never val)",
    )
    q.add_argument("--int8", action="store_true", help="quantise to int8 (needs a checkpoint with its card)")
    q.add_argument("--calibration-scenes", type=int, default=100, help="train images to calibrate on (default 100)")
    q.add_argument(
        "--per-tensor", action="store_true", help="one weight scale per tensor instead of per output channel"
    )
    q.add_argument(
        "--evaluate",
        action="store_true",
        help="score torch, fp32 ONNX Runtime and int8 ONNX Runtime on the checkpoint's whole val split",
    )
    q.add_argument(
        "--bench-sizes",
        type=int,
        nargs="*",
        default=[],
        metavar="S",
        help="time the three interleaved, batch 1, at these square sizes (needs --dynamic beyond --size)",
    )
    q.add_argument("--warmup", type=int, default=3, help="untimed rounds for --bench-sizes (default 3)")
    q.add_argument("--runs", type=int, default=15, help="timed rounds for --bench-sizes (default 15)")
    p.set_defaults(func=_onnx)


def _onnx(args: argparse.Namespace) -> int:
    from offseg_vis.deploy.onnx_export import export_onnx, load_for_export, require_deploy

    require_deploy()
    if args.int8:
        return _int8(args)
    if args.evaluate or args.bench_sizes:
        raise InputError("--evaluate and --bench-sizes belong to --int8.")
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


def _int8(args: argparse.Namespace) -> int:
    """Fold BN, export fp32, calibrate on train scenes, quantise; optionally score and time all three."""
    import torch

    from offseg_vis.deploy.onnx_export import export_onnx
    from offseg_vis.deploy.quantize import OnnxSegmentor, calibration_reader, fold_batchnorm, quantize_onnx
    from offseg_vis.engine.commands import checkpoint_config
    from offseg_vis.engine.run import datasets_for, evaluate_split, load_run

    if not (args.model.endswith(".safetensors") or Path(args.model).exists()):
        raise InputError(
            f"--int8 calibrates on a checkpoint's train split; {args.model!r} is not a checkpoint "
            f"(pass a .safetensors file with its card)."
        )
    if args.num_classes is not None:
        raise InputError("--num-classes does not apply to a checkpoint; leave it out.")
    out = Path(args.out)
    fp32_path = out.with_name(out.stem + ".fp32.onnx")
    run = load_run(args.model)
    cfg = checkpoint_config(run.card)
    size = tuple(args.size)
    for s in args.bench_sizes:
        if not args.dynamic and (s, s) != size:
            raise InputError(f"--bench-sizes {s} differs from the fixed export size {size}; add --dynamic.")
    folded, count = fold_batchnorm(run.model)
    description = f"checkpoint {run.path} ({run.model_name}, {run.num_classes} classes, {count} BatchNorms folded)"
    print(f"exporting {description} at {size[0]}x{size[1]}{' (dynamic H, W)' if args.dynamic else ''}", flush=True)
    # onnxscript's optimiser folds the exporter's constant sub-graphs (zero biases built by Expand),
    # so every Conv has initializer weights and bias, which quantize_static needs
    report = export_onnx(
        folded, fp32_path, size, dynamic=args.dynamic, opset=args.opset, description=description, optimize=True
    )
    print(report.summary(), flush=True)
    reader = calibration_reader(cfg, args.calibration_scenes)
    calibration = (
        f"{len(reader)} scenes {reader.names[0]}..{reader.names[-1]} of {reader.data.describe()}; "
        f"preprocessed by the val transform {reader.transform!r}"
    )
    print(f"calibrating on {calibration}", flush=True)
    q = quantize_onnx(fp32_path, out, reader, per_channel=not args.per_tensor, calibration=calibration)
    print(q.summary(), flush=True)
    k = run.num_classes
    variants = {"torch": run.model, "fp32 ORT": OnnxSegmentor(fp32_path, k), "int8 ORT": OnnxSegmentor(out, k)}
    if args.evaluate:
        val = datasets_for(cfg, "val")
        print(f"scoring on {val.describe()} ({cfg.test.mode} inference)", flush=True)
        scores = {name: evaluate_split(m, val, cfg.test, device="cpu").mIoU for name, m in variants.items()}
        for name, miou in scores.items():
            print(f"  {name}: mIoU {100 * miou:.2f} ({100 * (miou - scores['torch']):+.2f} vs torch)")
    if args.bench_sizes:
        from offseg_vis.engine.timing import paired_ratio, time_interleaved

        print(
            f"latency: batch 1, {torch.get_num_threads()} threads (torch and ONNX Runtime), interleaved, "
            f"{args.warmup} warm-up and {args.runs} timed rounds; forward only (logits at the head's stride)"
        )
        for s in args.bench_sizes:
            x = torch.randn(1, 3, s, s)
            xn = x.numpy()
            calls = {
                "torch": lambda x=x: run.model(x),
                "fp32 ORT": lambda xn=xn: variants["fp32 ORT"].runtime(xn),
                "int8 ORT": lambda xn=xn: variants["int8 ORT"].runtime(xn),
            }
            with torch.inference_mode():
                t = time_interleaved(calls, warmup=args.warmup, runs=args.runs)
            base = t["fp32 ORT"]["times_s"]
            print(
                f"  {s}x{s}: "
                + ", ".join(f"{n} {v['median_s'] * 1e3:.2f} ms" for n, v in t.items())
                + f"; int8/fp32 ORT x{paired_ratio(t['int8 ORT']['times_s'], base):.3f}, "
                f"int8 ORT/torch x{paired_ratio(t['int8 ORT']['times_s'], t['torch']['times_s']):.3f}",
                flush=True,
            )
    return 0
