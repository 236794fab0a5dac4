"""Training checkpoints: weights (safetensors + JSON card) and the training state for exact resume.

A checkpoint tagged ``last`` in a run folder is three files, each written atomically:

    last.safetensors   model weights (see ``offseg_vis.models.weights``), metadata in the header
    last.json          the same metadata, readable (config, step, metrics, seed, commit, classes)
    last.state.pt      optimiser, scheduler, grad scaler, every RNG state, step (torch.save)

The state file is written first and the weights last; both carry the step, and loading refuses a
pair whose steps differ (a crash between the two renames), so a resumed run never mixes states.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from offseg_vis.errors import CheckpointError
from offseg_vis.models.weights import (
    _atomic_write,
    describe_model,
    load_weights,
    read_metadata,
    save_weights,
    weights_path,
)

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


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a weights file belongs to (from its metadata) and load the weights.

    Returns:
        (model in eval mode on ``device``, metadata).
    """
    from offseg_vis.models.zoo import build_model

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
    return model.to(device).eval(), meta


__all__ = [
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
