"""The ``offseg train``, ``offseg eval`` and ``offseg predict`` sub-commands.

``offseg_vis/cli.py`` calls :func:`register` and then ``args.func(args)``. Under torchrun,
``torchrun --nproc_per_node N -m offseg_vis.cli train CONFIG`` runs the same command in N processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from offseg_vis.data.datasets import canonical_name
from offseg_vis.engine.config import Config, DataConfig, as_pair, from_dict, load_config
from offseg_vis.engine.run import datasets_for, evaluate_split, load_run
from offseg_vis.engine.train import train
from offseg_vis.errors import ConfigError, InputError
from offseg_vis.models.weights import atomic_write_text


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``eval`` and ``predict`` to the ``offseg`` parser."""
    p = subparsers.add_parser(
        "train",
        help="train a model from a YAML config (CPU or GPU; multi-GPU with torchrun)",
        description="Train from a YAML config. Overrides like optim.lr=3e-4 schedule.max_iters=200 "
        "follow the config path. Under torchrun every process runs this command.",
    )
    p.add_argument(
        "config",
        help="a YAML config file, or the name of a shipped recipe, e.g. offseg-mbv2_fashion-scenes "
        "(the names are listed when one is not found)",
    )
    # REMAINDER so overrides and --resume / --work-dir may come in any order after the config
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="dotted key=value overrides, e.g. optim.lr=3e-4")
    p.add_argument("--resume", action="store_true", help="continue the run in the work dir from its last checkpoint")
    p.add_argument("--work-dir", default=None, help="run folder (default: runtime.work_dir or runs/<config name>)")
    p.set_defaults(func=_train_command)

    p = subparsers.add_parser("eval", help="evaluate a checkpoint: mIoU, aAcc, mAcc and a per-class table")
    p.add_argument("checkpoint", help="weights file written by offseg train (.safetensors)")
    p.add_argument(
        "--dataset",
        default=None,
        help="fashion-scenes, ade20k, cityscapes, coco-stuff, pascal-context or folder "
        "(default: the checkpoint's training dataset)",
    )
    p.add_argument(
        "--root",
        default=None,
        help="dataset folder; for fashion-scenes the one stored set of the split in it (or that set's own "
        "folder), read with its manifest's seed and parameters (default: the checkpoint's own val set)",
    )
    p.add_argument("--split", default=None, help="split to evaluate (default: the config's val split)")
    p.add_argument("--mode", choices=["whole", "slide"], default=None, help="inference mode (default: the config's)")
    p.add_argument("--crop", type=int, nargs="+", default=None, help="slide crop size (h w or one int)")
    p.add_argument("--stride", type=int, nargs="+", default=None, help="slide stride (h w or one int)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    p.set_defaults(func=_eval_command)

    p = subparsers.add_parser("predict", help="segment images: colour masks and overlays")
    p.add_argument("checkpoint", help="weights file written by offseg train (.safetensors)")
    p.add_argument("images", nargs="*", help="image files (png, jpg, ...); or use --root")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--root",
        default=None,
        help="segment the images of a dataset stored here instead (fashion-scenes: the one stored set of "
        "the split, read by its manifest)",
    )
    p.add_argument("--dataset", default=None, help="with --root: dataset name (default: the checkpoint's)")
    p.add_argument("--split", default=None, help="with --root: split (default: the config's val split)")
    p.add_argument("--max-images", type=int, default=None, help="with --root: only the first N images")
    p.add_argument("--mode", choices=["whole", "slide"], default="whole")
    p.add_argument("--crop", type=int, nargs="+", default=[512])
    p.add_argument("--stride", type=int, nargs="+", default=[480])
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=_predict_command)


def _device(name: str):

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device asks for CUDA but no CUDA device is available; use --device cpu.")
    return torch.device(name)


def _split_train_args(rest: list[str], resume: bool, work_dir: str | None) -> tuple[list[str], bool, str | None]:
    """Separate ``--resume`` / ``--work-dir DIR`` given after the config from the overrides."""
    overrides = []
    it = iter(rest)
    for arg in it:
        if arg == "--resume":
            resume = True
        elif arg == "--work-dir":
            work_dir = next(it, None)
            if work_dir is None:
                raise ConfigError("--work-dir needs a folder.")
        elif arg.startswith("--work-dir="):
            work_dir = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            raise ConfigError(f"Unknown option {arg!r} for offseg train (options: --resume, --work-dir DIR).")
        else:
            overrides.append(arg)
    return overrides, resume, work_dir


def _train_command(args: argparse.Namespace) -> int:
    overrides, resume, work_dir = _split_train_args(args.overrides, args.resume, args.work_dir)
    config = load_config(args.config, overrides)
    result = train(config, resume=resume, work_dir=work_dir)
    if result.work_dir is not None:
        print(f"checkpoint: {result.checkpoint}")
        if result.evals:
            print(f"best mIoU: {100 * result.best_miou:.2f}")
    return 0


def checkpoint_config(meta: dict, dataset: str | None = None) -> Config:
    """The run config a checkpoint carries (defaults when it carries none), pointed at ``dataset``.

    A dataset other than the checkpoint's own starts from that dataset's defaults (the run's
    dataset options belong to its own data).

    Raises:
        ConfigError: neither the checkpoint nor ``dataset`` names a dataset.
    """
    stored = meta.get("config")
    cfg = from_dict(stored) if stored else Config()
    own = cfg.data.dataset if stored else meta.get("dataset")
    name = dataset or own
    if not name:
        raise ConfigError("The checkpoint does not name its dataset; pass --dataset NAME --root DIR.")
    if not stored or canonical_name(name) != canonical_name(cfg.data.dataset):
        cfg.data = DataConfig(dataset=name)
    return cfg


def _eval_command(args: argparse.Namespace) -> int:
    device = _device(args.device)
    run = load_run(args.checkpoint, device)
    model, meta = run.model, run.card
    print(f"classes: {run.classes_source}")
    cfg = checkpoint_config(meta, args.dataset)
    if args.split:
        cfg.data.val_split = args.split
    # --root: the data stored there (FashionScenes: the one set of the split, read by its manifest)
    val = datasets_for(cfg, "val", stored_root=args.root)
    num_classes = len(val.classes) or model.num_classes
    if num_classes != model.num_classes:
        raise ConfigError(
            f"The dataset {cfg.data.dataset!r} has {num_classes} classes but the checkpoint's model predicts "
            f"{model.num_classes}; evaluate on the dataset the model was trained for."
        )
    t = cfg.test
    test = replace(
        t,
        mode=args.mode or t.mode,
        crop_size=args.crop or t.crop_size,
        stride=args.stride or t.stride,
        batch_size=args.batch_size or t.batch_size,
    )
    count = len(val.dataset) if args.max_images is None else min(args.max_images, len(val.dataset))
    print(f"evaluating {args.checkpoint} on {count} images of {val.describe()}", flush=True)
    metrics = evaluate_split(
        model,
        val,
        test,
        class_names=meta.get("class_names") or None,
        max_images=args.max_images,
        device=device,
        progress=sys.stderr.isatty(),
    )
    print(metrics.table())
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(metrics.to_dict(), indent=2) + "\n")
        print(f"metrics written to {out}")
    return 0


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class ids (H, W) -> RGB (H, W, 3) uint8 with ``palette`` (K, 3)."""
    return palette[np.clip(labels, 0, len(palette) - 1)]


def _images_to_predict(args: argparse.Namespace, meta: dict):
    """(image uint8 (H, W, 3), name, source) for each input: the files given, or the stored dataset."""
    if args.root is None:
        if not args.images:
            raise ConfigError("offseg predict needs image files, or --root DIR for the images of a stored dataset.")
        if args.dataset or args.split or args.max_images is not None:
            raise ConfigError("--dataset, --split and --max-images go with --root DIR.")
        print(f"predicting {len(args.images)} image file(s) with {args.checkpoint}", flush=True)
        for path in map(Path, args.images):
            try:
                image = np.asarray(Image.open(path).convert("RGB"))  # (H, W, 3) uint8
            except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
                raise InputError(f"Cannot read image {path} ({exc}); pass PNG or JPEG files.") from exc
            yield image, path.stem, path
        return
    if args.images:
        raise ConfigError("Give image files or --root DIR, not both.")
    cfg = checkpoint_config(meta, args.dataset)
    if args.split:
        cfg.data.val_split = args.split
    data = datasets_for(cfg, "val", stored_root=args.root).dataset
    count = len(data) if args.max_images is None else min(args.max_images, len(data))
    describe = getattr(data, "describe", None)
    what = describe() if callable(describe) else f"{type(data).__name__} at {args.root}"
    print(f"predicting {count} images of {what} with {args.checkpoint}", flush=True)
    for i in range(count):
        image, _, name = data[i]
        yield image, str(name), f"{name}"


def _predict_command(args: argparse.Namespace) -> int:

    device = _device(args.device)
    run = load_run(args.checkpoint, device)
    model, meta, palette = run.model, run.card, run.palette
    print(f"classes: {run.classes_source}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for image, stem, source in _images_to_predict(args, meta):
        x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].to(device)  # (1, 3, H, W)
        with torch.no_grad():
            logits = model.predict(
                model.normalize(x), mode=args.mode, crop=as_pair(args.crop), stride=as_pair(args.stride)
            )  # (1, K, H, W)
        labels = logits[0].argmax(0).cpu().numpy()
        mask = colorize(labels, palette)
        overlay = (image * (1 - args.alpha) + mask * args.alpha).round().astype(np.uint8)
        Image.fromarray(mask).save(out / f"{stem}_mask.png")
        Image.fromarray(overlay).save(out / f"{stem}_overlay.png")
        print(f"{source} -> {out / (stem + '_mask.png')}, {out / (stem + '_overlay.png')}")
    return 0
