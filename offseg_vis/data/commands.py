"""The ``offseg data`` command: build FashionScenes, check a dataset, convert raw labels."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from offseg_vis.errors import DatasetError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data`` with sub-commands ``fashion-scenes``, ``check`` and ``convert``; returns its parser."""
    data = subparsers.add_parser("data", help="build FashionScenes, check or convert a dataset")
    commands = data.add_subparsers(dest="data_command", metavar="{fashion-scenes,check,convert}")
    commands.required = True

    build = commands.add_parser(
        "fashion-scenes",
        help="generate the FashionScenes benchmark (PNG pairs + manifest.json)",
        description="Generate FashionScenes deterministically: the same arguments give byte-identical files.",
    )
    build.add_argument(
        "--out", type=Path, default=None, help="output folder (default $OFFSEG_DATA/fashion_scenes)"
    )
    build.add_argument(
        "--train", type=int, default=0, help="train scenes to cache (default 0: train streams)"
    )
    build.add_argument("--val", type=int, default=1000, help="val scenes (default 1000)")
    build.add_argument(
        "--size", type=int, default=128, help="scene side in pixels (default 128; item sizes scale with it)"
    )
    build.add_argument(
        "--style", type=float, default=0.5, help="per-scene appearance shift in [0, 1] (default 0.5)"
    )
    build.add_argument(
        "--class-style",
        type=float,
        default=0.0,
        help="per-scene look of each class (shared colour + stripes) in [0, 1] (default 0: off)",
    )
    build.add_argument(
        "--classes-per-scene", type=int, default=0, help="draw a scene's items from this many classes (default 0: any)"
    )
    build.add_argument("--seed", type=int, default=0, help="global seed (default 0)")
    build.add_argument("--fmnist", type=Path, default=None, help="folder with the four Fashion-MNIST files")
    build.set_defaults(func=_build_fashion_scenes)

    check = commands.add_parser(
        "check",
        help="scan a dataset split; print every problem and a label summary",
        description="Read every image and mask of a split. Exits non-zero when any problem is found.",
    )
    check.add_argument("root", type=Path, help="dataset root folder")
    check.add_argument(
        "--dataset", required=True,
        choices=["ade20k", "cityscapes", "coco-stuff", "pascal-context", "folder", "fashion-scenes"],
    )  # fmt: skip
    check.add_argument("--split", default="val", help="split to check (default val)")
    check.set_defaults(func=_check)

    convert = commands.add_parser(
        "convert",
        help="write train-id masks: Cityscapes labelIds -> labelTrainIds, COCO-Stuff raw -> labelTrainIds",
    )
    convert.add_argument("dataset", choices=["cityscapes", "coco-stuff"])
    convert.add_argument("root", type=Path, help="dataset root folder")
    convert.set_defaults(func=_convert)
    return data


def _build_fashion_scenes(args: argparse.Namespace) -> int:
    from offseg_vis.data.fashion_scenes import FashionScenesConfig, build_cache, default_root

    config = FashionScenesConfig.for_size(
        args.size,
        style=args.style,
        seed=args.seed,
        class_style=args.class_style,
        classes_per_scene=args.classes_per_scene,
    )
    out = args.out or default_root()
    for split, count in (("train", args.train), ("val", args.val)):
        if count <= 0:
            continue
        start = time.perf_counter()
        folder = build_cache(out, split, count, config, fmnist=args.fmnist)
        seconds = time.perf_counter() - start
        manifest = json.loads((folder / "manifest.json").read_text())
        size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
        print(
            f"{split}: {count} scenes in {folder} ({size_mb:.1f} MB, {seconds:.1f} s, "
            f"{count / seconds:.0f} scenes/s); items less than half visible: "
            f"{manifest['share_items_less_than_half_visible']:.3f}"
        )
    return 0


def _check(args: argparse.Namespace) -> int:
    from offseg_vis.data.datasets import check_dataset

    report = check_dataset(args.dataset, args.root, args.split, progress=True)
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    print(report.summary())
    if not report.ok:
        raise DatasetError(
            f"{len(report.problems)} problem(s) found in {args.dataset} split {args.split!r} at {args.root} "
            "(listed above); fix or remove those files and run the check again."
        )
    return 0


def _convert(args: argparse.Namespace) -> int:
    from offseg_vis.data.datasets import convert_cityscapes, convert_coco_stuff

    count = convert_cityscapes(args.root) if args.dataset == "cityscapes" else convert_coco_stuff(args.root)
    print(f"wrote {count} train-id masks under {args.root}")
    return 0
