"""``offseg zoo`` (the model table) and ``offseg convert`` (official checkpoints -> ours).

This is a command module: it belongs to the command-line layer (beside ``cli``), not to the models
layer it sits in, so it may use ``data`` for class names and ``bench`` for the cost table.
"""

from __future__ import annotations

import argparse
import json

from offseg_vis.data.class_names import DATASET_CLASSES, classes_for
from offseg_vis.models.cost import format_markdown, measure_zoo
from offseg_vis.models.registry import convert_checkpoint


def register(sub: argparse._SubParsersAction) -> None:
    zoo = sub.add_parser("zoo", help="parameters and GMACs of every model, beside the paper's numbers")
    zoo.add_argument("--models", nargs="*", help="subset of model names (default: all)")
    zoo.add_argument("--size", type=int, default=512, help="square input size for GMACs (default 512)")
    zoo.add_argument("--num-classes", type=int, default=150)
    zoo.add_argument("--json", help="also write the rows to this JSON file")
    zoo.set_defaults(func=_zoo)

    conv = sub.add_parser("convert", help="convert an official mmseg checkpoint to our safetensors format")
    conv.add_argument("src", help="official .pth checkpoint")
    conv.add_argument("dst", help="output path (.safetensors; a .json card is written beside it)")
    conv.add_argument("--model", required=True, help="zoo name, e.g. offseg-t, segformer-b0, segnext-t")
    conv.add_argument("--classifier", default="offset", choices=["offset", "linear"])
    conv.add_argument("--num-classes", type=int, default=None, help="default: read from the checkpoint")
    conv.add_argument(
        "--dataset",
        choices=list(DATASET_CLASSES),
        default=None,
        help="class names and palette for the card when the checkpoint's meta.dataset_meta has none "
        "(default: inferred from the number of classes, with a note)",
    )
    conv.set_defaults(func=_convert)


def _zoo(args: argparse.Namespace) -> int:
    rows = measure_zoo(args.models, size=args.size, num_classes=args.num_classes)
    print(format_markdown(rows, size=args.size))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def _convert(args: argparse.Namespace) -> int:
    def resolve(num_classes: int, meta: dict):  # meta first, then --dataset, then K (classes_for)
        return classes_for(dataset=args.dataset, num_classes=num_classes, meta=meta)

    report = convert_checkpoint(args.src, args.dst, args.model, args.classifier, args.num_classes, classes=resolve)
    print(f"{args.src} -> {args.dst}: {report.summary()}")
    for key in report.dropped:
        print(f"  dropped {key}")
    print(f"classes: {report.classes_source}")
    if report.placeholders:
        print(f"kept as inert placeholders (modules not imported, nothing run): {', '.join(report.placeholders)}")
    return 0
