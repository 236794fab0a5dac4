"""Checkpoints for tests, scripts and development when the trained ones are not there (yet).

:func:`write_untrained_checkpoints` saves randomly initialised OffSeg-MBV2 models (offset and linear) with
a FashionScenes model card; :func:`checkpoints_or_untrained` prefers the real ``checkpoints/`` folder, so
the same test runs against the shipped models once they exist.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from offseg_vis.app.models import default_checkpoint_dir, find_checkpoints
from offseg_vis.data.class_names import classes_for
from offseg_vis.data.fashion_scenes import CLASSES, PALETTE
from offseg_vis.models import build_model
from offseg_vis.models.weights import read_metadata, save_weights


def write_untrained_checkpoints(
    folder: str | os.PathLike,
    classifiers: Sequence[str] = ("offset", "linear"),
    seed: int = 0,
    model: str = "offseg-mbv2",
    dataset: str = "fashion-scenes",
) -> list[Path]:
    """Write ``<model>_<classifier>.safetensors`` (+ ``.json``) with random weights; returns the paths.

    Args:
        model: a zoo name (e.g. ``offseg-t``).
        dataset: ``fashion-scenes`` or a dataset of :func:`offseg_vis.data.class_names.classes_for`
            (``ade20k`` gives the 150 ADE20K classes, as a converted official checkpoint has).
    """

    if dataset == "fashion-scenes":
        names, palette = list(CLASSES), [list(c) for c in PALETTE]
    else:
        classes = classes_for(dataset)
        names, palette = list(classes.names), [list(map(int, c)) for c in classes.palette]
    folder = Path(folder)
    paths = []
    for classifier in classifiers:
        torch.manual_seed(seed)
        net = build_model(model, len(names), classifier=classifier)
        meta = {
            "class_names": names,
            "palette": palette,
            "dataset": dataset,
            "metrics": {},
            "note": "untrained weights for tests and development",
        }
        paths.append(save_weights(net, folder / f"{model}_{classifier}", metadata=meta))
    return paths


def checkpoints_or_untrained(scratch: str | os.PathLike) -> list[Path]:
    """The shipped checkpoints when ``checkpoints/`` holds both an offset and a linear one, else an
    untrained pair written to ``scratch`` (so callers can always rely on both kinds)."""
    shipped = find_checkpoints(default_checkpoint_dir())
    kinds = {read_metadata(p).get("classifier") for p in shipped}
    return shipped if {"offset", "linear"} <= kinds else write_untrained_checkpoints(scratch)
