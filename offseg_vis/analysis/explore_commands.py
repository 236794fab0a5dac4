"""``offseg embeddings export``: pixel embeddings of a checkpoint as TensorBoard projector files.

    offseg embeddings export CHECKPOINT [--twin TWIN] [--images N] [--points M] --out DIR

Probes the first N images of the checkpoint's own validation set (the run API's ``datasets_for``),
draws M pixels stratified by class (:func:`~offseg_vis.analysis.explore.pixel_table`) and writes
E, E′, W and W′ with their metadata and a sprite (:mod:`offseg_vis.analysis.projector`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from offseg_vis.analysis.explore import pixel_table
from offseg_vis.analysis.probe import probe
from offseg_vis.analysis.projector import MAX_SPRITE_SIDE, THUMB, export_projector
from offseg_vis.engine.checkpoint import load_model
from offseg_vis.engine.commands import checkpoint_config
from offseg_vis.engine.run import datasets_for
from offseg_vis.errors import InputError

DEFAULT_IMAGES = 8
DEFAULT_POINTS = 5000


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``embeddings export`` to the ``offseg`` parser."""
    emb = sub.add_parser("embeddings", help="export pixel embeddings (E, E', W, W') for TensorBoard's projector")
    esub = emb.add_subparsers(dest="embeddings_command", required=True)
    p = esub.add_parser(
        "export",
        help="write projector files (tensors, metadata, sprite) readable by tensorboard --logdir DIR",
        description="Probe the first N images of the checkpoint's validation set, sample M pixels stratified "
        "by class and write E and E' (same metadata rows), W and each image's W', and a sprite of each "
        "pixel's 16x16 neighbourhood. Open with: tensorboard --logdir DIR (pip install -e '.[explore]').",
    )
    p.add_argument("checkpoint", help="an Offset Learning (or per-pixel) weights file (.safetensors)")
    p.add_argument("--twin", default=None, help="the per-pixel twin's weights: adds twin and fixed/broken columns")
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES, help=f"validation images (default {DEFAULT_IMAGES})")
    p.add_argument("--start", type=int, default=0, help="index of the first validation image (default 0)")
    p.add_argument(
        "--points",
        type=int,
        default=DEFAULT_POINTS,
        help=f"pixels to export, stratified by class (default {DEFAULT_POINTS}; "
        f"at most {(MAX_SPRITE_SIDE // THUMB) ** 2:,} fit in one sprite)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--out", required=True, help="output folder (the --logdir of tensorboard)")
    p.set_defaults(func=_export_command)


def _export_command(args: argparse.Namespace) -> int:
    if args.images < 1 or args.points < 1 or args.start < 0:
        raise InputError("--images and --points must be at least 1, and --start at least 0.")
    start = time.perf_counter()
    model, meta = load_model(args.checkpoint)
    split = datasets_for(checkpoint_config(meta), "val")
    ds = split.dataset
    if args.start + args.images > len(ds):
        raise InputError(
            f"The validation set has {len(ds)} images; --start {args.start} --images {args.images} asks for more."
        )
    items = [ds[i] for i in range(args.start, args.start + args.images)]
    images, labels = [it[0] for it in items], [it[1] for it in items]
    offset = meta.get("classifier") == "offset"
    need = {"features", "class_embed"} | ({"refined_features", "refined_class_embed"} if offset else set())
    probes = probe(model, images, labels, need=need)
    twin_probes = None
    if args.twin:
        twin, twin_meta = load_model(args.twin)
        twin_probes = probe(twin, images, labels, need={"prediction"})
    names = split.classes or meta.get("class_names") or None
    table = pixel_table(probes, args.points, twin_probes=twin_probes, class_names=names, seed=args.seed)
    result = export_projector(probes, table, Path(args.out))
    print(f"checkpoint: {args.checkpoint} ({meta.get('model')}, {meta.get('classifier')} classifier)")
    if args.twin:
        print(f"twin: {args.twin} ({twin_meta.get('classifier')} classifier)")
    print(f"images: {args.images} from index {args.start} of {split.describe()}")
    print(f"points: {table.describe()}")
    print("W' rows: one set of K rows per image (W' is image-specific), after the K rows of W")
    print(result.describe())
    print(f"took {time.perf_counter() - start:.1f} s")
    return 0
