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


def write_untrained_checkpoints(
    folder: str | os.PathLike, classifiers: Sequence[str] = ("offset", "linear"), seed: int = 0
) -> list[Path]:
    """Write ``offseg-mbv2_<classifier>.safetensors`` (+ ``.json``) with random weights; returns the paths."""
    from offseg_vis import build_model
    from offseg_vis.data.fashion_scenes import CLASSES, PALETTE
    from offseg_vis.models.weights import save_weights

    folder = Path(folder)
    paths = []
    for classifier in classifiers:
        torch.manual_seed(seed)
        model = build_model("offseg-mbv2", len(CLASSES), classifier=classifier)
        meta = {
            "class_names": list(CLASSES),
            "palette": [list(c) for c in PALETTE],
            "dataset": "fashion-scenes",
            "metrics": {},
            "note": "untrained weights for tests and development",
        }
        paths.append(save_weights(model, folder / f"offseg-mbv2_{classifier}", metadata=meta))
    return paths


def checkpoints_or_untrained(scratch: str | os.PathLike) -> list[Path]:
    """The shipped checkpoints when ``checkpoints/`` holds both an offset and a linear one, else an
    untrained pair written to ``scratch`` (so callers can always rely on both kinds)."""
    from offseg_vis.models.weights import read_metadata

    shipped = find_checkpoints(default_checkpoint_dir())
    kinds = {read_metadata(p).get("classifier") for p in shipped}
    return shipped if {"offset", "linear"} <= kinds else write_untrained_checkpoints(scratch)
