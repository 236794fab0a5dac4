"""Training checkpoints: weights (safetensors + JSON card) and the training state for exact resume.

A checkpoint tagged ``last`` in a run folder is three files, each written atomically:

    last.safetensors   model weights (see ``offseg_vis.models.weights``), metadata in the header
    last.json          the same metadata, readable (config, step, metrics, seed, commit, classes)
    last.state.pt      optimiser, scheduler, grad scaler, every RNG state, step (torch.save)

The state file is written first and the weights last; both carry the step, and loading refuses a
pair whose steps differ (a crash between the two renames), so a resumed run never mixes states.

:func:`card_classes` is what every reader of a card (``offseg predict``, the app, the notebooks)
uses for class names and palette; :func:`load_model` puts its answer into the metadata it returns.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from offseg_vis.data.class_names import Classes, classes_for, dataset_key, generated_palette
from offseg_vis.data.fashion_scenes import CLASSES as FASHION_SCENES_CLASSES
from offseg_vis.data.fashion_scenes import PALETTE as FASHION_SCENES_PALETTE
from offseg_vis.data.fashion_scenes import scene_preset_of
from offseg_vis.errors import CheckpointError, ConfigError
from offseg_vis.models import build_model
from offseg_vis.models.convert import CONVERTED_FROM
from offseg_vis.models.weights import (
    _atomic_write,
    describe_model,
    load_weights,
    read_metadata,
    save_weights,
    weights_path,
)
from offseg_vis.models.weights import card_classes as _stored_classes

STATE_SUFFIX = ".state.pt"


def state_path(run_dir: str | os.PathLike, tag: str) -> Path:
    """``run_dir/<tag>.state.pt``."""
    return Path(run_dir) / f"{tag}{STATE_SUFFIX}"


def checkpoint_weights(run_dir: str | os.PathLike, tag: str) -> Path:
    """``run_dir/<tag>.safetensors``."""
    return weights_path(Path(run_dir) / tag)


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The current git commit of ``cwd`` (None outside a repository or without git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors/ints (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: str | os.PathLike,
    tag: str,
    model: nn.Module,
    metadata: Mapping[str, Any],
    training_state: Mapping[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write ``<tag>.state.pt`` (if ``training_state`` is given) then ``<tag>.safetensors`` + ``.json``.

    Args:
        run_dir: the run folder.
        tag: "last", "best", ...
        model: the model (DDP wrappers are unwrapped).
        metadata: JSON facts for the card; must include ``step``.
        training_state: optimiser/scheduler/scaler state dicts, RNG states, step, anything the
            trainer needs to resume (tensors, numbers, strings, lists, dicts only).
        half: store the weights as float16.

    Returns:
        The weights path.
    """
    run_dir = Path(run_dir)
    if training_state is not None:
        state = dict(training_state)
        state["step"] = int(metadata["step"])
        target = state_path(run_dir, tag)
        _atomic_write(target, lambda tmp: torch.save(state, tmp))
    return save_weights(model, run_dir / tag, metadata, half=half)


def load_training_state(run_dir: str | os.PathLike, tag: str = "last") -> dict[str, Any]:
    """Read ``<tag>.state.pt`` and check it pairs with ``<tag>.safetensors`` (same step).

    Raises CheckpointError when a file is missing, unreadable, or the two steps differ.
    """
    run_dir = Path(run_dir)
    target = state_path(run_dir, tag)
    if not target.is_file():
        raise CheckpointError(
            f"Cannot resume: {target} does not exist. Start the run without --resume, or point "
            f"--work-dir at the folder of the run to continue."
        )
    try:
        state = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad pickles
        raise CheckpointError(
            f"Training state {target} is corrupt or truncated ({type(exc).__name__}: {exc}); "
            f"resume is impossible from it — start a new run or restore the file."
        ) from exc
    meta = read_metadata(checkpoint_weights(run_dir, tag))
    if int(meta.get("step", -1)) != int(state.get("step", -2)):
        raise CheckpointError(
            f"{checkpoint_weights(run_dir, tag)} (step {meta.get('step')}) and {target} (step "
            f"{state.get('step')}) do not belong together (the run stopped while writing them); "
            f"resume from the best checkpoint or start a new run."
        )
    return state


def card_dataset_name(meta: Mapping[str, Any]) -> str | None:
    """The dataset a card names: ``dataset`` (training), ``data.dataset`` (exports) or the config's."""
    data = meta.get("data") if isinstance(meta.get("data"), Mapping) else {}
    config = meta.get("config") if isinstance(meta.get("config"), Mapping) else {}
    config_data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    name = meta.get("dataset") or data.get("dataset") or config_data.get("dataset")
    return str(name) if name else None


def card_scene_preset(meta: dict) -> str | None:
    """The FashionScenes preset of the val scenes a card's mIoU is measured on ("" plain, "looks", ...;
    see :data:`~offseg_vis.data.fashion_scenes.SCENE_PRESETS`), or None (other data, no config, or
    parameters no preset has)."""
    data = (meta.get("config") or {}).get("data") if isinstance(meta.get("config"), dict) else None
    if not isinstance(data, dict) or data.get("dataset") != "fashion-scenes":
        return None
    options = {**(data.get("dataset_options") or {}), **(data.get("val_options") or {})}
    config = options.get("config") if isinstance(options.get("config"), dict) else {}
    return scene_preset_of(config)


def card_metrics(meta: dict) -> dict:
    """The card's evaluation numbers: ``metrics`` (training checkpoints) or ``val_metrics`` (exports)."""
    for key in ("metrics", "val_metrics"):
        if isinstance(meta.get(key), dict) and meta[key]:
            return meta[key]
    return {}


# Runtime settings that do not change what is learned (where it ran, logging); the seed does and stays.
_EXECUTION_ONLY = ("work_dir", "progress", "tensorboard", "overwrite", "num_threads", "device", "save_half")


def recipe_key(meta: dict) -> str | None:
    """What a checkpoint's card says it was trained with, minus the classifier: the zoo model, the classes,
    the config (recipe, data, seed; the classifier and execution-only runtime settings removed), the card's
    data section and the training steps. Two checkpoints are twins when these are equal and the classifiers
    differ. None when the card records no config."""
    cfg = meta.get("config")
    if not isinstance(cfg, dict):
        return None
    cfg = json.loads(json.dumps(cfg))  # a deep copy of plain JSON
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    for key in ("classifier", "classifier_options", "pretrained"):
        model.pop(key, None)
    runtime = cfg.get("runtime") if isinstance(cfg.get("runtime"), dict) else {}
    for key in _EXECUTION_ONLY:
        runtime.pop(key, None)
    cfg.pop("name", None)
    key = {
        "model": meta.get("model"),
        "classes": meta.get("class_names"),
        "config": cfg,
        "data": meta.get("data"),
        "steps": meta.get("steps", meta.get("step")),
    }
    return json.dumps(key, sort_keys=True)


def twin_pairing(offset_meta: dict, linear_meta: dict, offset_name: str, linear_name: str, who: str) -> str:
    """Check that two cards are an Offset Learning model and its per-pixel twin; return a sentence saying how
    they were paired (for the page or printout that compares them).

    Raises:
        CheckpointError: the classifiers are not (offset, linear), or the cards record different recipes.
    """
    if offset_meta.get("classifier") != "offset" or linear_meta.get("classifier") != "linear":
        raise CheckpointError(
            f"{who} takes the Offset Learning checkpoint first and its per-pixel twin second; "
            f"the cards of {offset_name} and {linear_name} say {offset_meta.get('classifier')!r} and "
            f"{linear_meta.get('classifier')!r}."
        )
    keys = recipe_key(offset_meta), recipe_key(linear_meta)
    if None in keys:
        return "Paired by hand: a card records no training recipe, so they may not be twins."
    if keys[0] != keys[1]:
        raise CheckpointError(
            f"{offset_name} and {linear_name} are not twins: their cards record different recipes, data, seeds "
            "or training steps. Pass checkpoints trained alike except for the classifier (e.g. the two halves "
            "of one experiment pair)."
        )
    return "The cards record the same recipe, data, seed and training steps (twins)."


def card_classes(meta: Mapping[str, Any]) -> Classes:
    """Class names (K,), palette (K, 3) and a sentence saying where they came from, for a card.

    The card's own ``class_names`` and ``palette`` win, each on its own. What the card lacks comes
    from, in order: the tables of the dataset the card names (ADE20K, Cityscapes, COCO-Stuff,
    Pascal-Context, FashionScenes); for a card converted from an official checkpoint (written before
    ``offseg convert`` stored names), the dataset inferred from K by
    :func:`~offseg_vis.data.class_names.classes_for`; else generic names ``class 0`` ... ``class K-1``
    and a generated palette.

    Raises:
        CheckpointError: the card does not say its number of classes.
    """
    k = meta.get("num_classes")
    if not isinstance(k, int) or k <= 0:
        raise CheckpointError("The checkpoint's card does not say its number of classes (num_classes).")
    names, palette = _stored_classes(meta)
    if names is not None and palette is not None:
        return Classes(tuple(names), tuple(map(tuple, palette)), "class names and palette from the checkpoint's card.")
    fallback = _classes_without_card(meta, k)
    if names is not None:
        return Classes(
            tuple(names), fallback.palette, f"class names from the checkpoint's card; palette: {fallback.source}"
        )
    if palette is not None:
        return Classes(
            fallback.names, tuple(map(tuple, palette)), f"palette from the checkpoint's card; names: {fallback.source}"
        )
    return fallback


def _classes_without_card(meta: Mapping[str, Any], k: int) -> Classes:
    """What :func:`card_classes` uses for what the card does not hold (see there)."""
    dataset = card_dataset_name(meta)
    if dataset and dataset.strip().lower().replace("_", "-") in ("fashion-scenes", "fashionscenes"):
        if k == len(FASHION_SCENES_CLASSES):
            return Classes(
                FASHION_SCENES_CLASSES,
                FASHION_SCENES_PALETTE,
                "not in the card, so FashionScenes' (the card's dataset).",
            )
    elif dataset:
        try:
            found = classes_for(dataset=dataset_key(dataset), num_classes=k)
        except ConfigError:
            pass  # not one of the four real datasets, or another K: generic names below say so
        else:
            return found._replace(source=f"not in the card, so {found.source}")
    if meta.get("converted_from") == CONVERTED_FROM:
        found = classes_for(num_classes=k)
        return found._replace(source=f"not in the card (converted from an official checkpoint), so {found.source}")
    known = f" and its dataset {dataset!r} has no {k}-class table" if dataset else ""
    return Classes(
        tuple(f"class {i}" for i in range(k)),
        generated_palette(k),
        f"not in the card{known}, so generic names 'class 0' ... 'class {k - 1}' and a generated palette.",
    )


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a weights file belongs to (from its metadata) and load the weights.

    Returns:
        (model in eval mode on ``device``, metadata). The metadata always holds ``class_names``
        (K), ``palette`` (K ``[r, g, b]``) and ``classes_source`` (where they came from, see
        :func:`card_classes`; print it when the names are not the card's own).
    """
    meta = read_metadata(path)
    name, num_classes = meta.get("model"), meta.get("num_classes")
    if not name or num_classes is None:
        raise CheckpointError(
            f"Checkpoint {weights_path(path)} does not say which model it holds (no model / num_classes "
            f"in its metadata); build the model yourself and call load_weights(model, path)."
        )
    model_cfg = (meta.get("config") or {}).get("model") or {}
    model = build_model(
        name,
        num_classes=int(num_classes),
        classifier=meta.get("classifier") or model_cfg.get("classifier", "offset"),
        classifier_options=model_cfg.get("classifier_options") or None,
        **(model_cfg.get("options") or {}),
    )
    load_weights(model, path)
    classes = card_classes(meta)
    meta = {
        **meta,
        "class_names": list(classes.names),
        "palette": [list(rgb) for rgb in classes.palette],
        "classes_source": classes.source,
    }
    return model.to(device).eval(), meta


__all__ = [
    "card_classes",
    "card_dataset_name",
    "checkpoint_weights",
    "describe_model",
    "git_commit",
    "load_model",
    "load_training_state",
    "load_weights",
    "rng_state",
    "save_checkpoint",
    "save_weights",
    "set_rng_state",
    "state_path",
]
