"""Model weights on disk: safetensors + a JSON sidecar, written atomically, loaded strictly.

A weights file ``NAME.safetensors`` holds the state dict; its metadata is stored twice: inside the
safetensors header (key ``offseg``, a JSON string, so a lone file is self-describing) and in the
human-readable sidecar ``NAME.json``. The header copy is the authority when both exist.

The metadata always names the model it belongs to (``model``, ``num_classes``, ``classifier``), so
loading a checkpoint into another architecture or class count fails with a sentence naming both.

This module imports nothing else of ours except errors and the classifier types (models/ may not
depend on engine/ or data/).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from offseg_vis.errors import CheckpointError
from offseg_vis.models.offset_learning import LinearClassifier, OffsetLearning

SUFFIX = ".safetensors"
METADATA_KEY = "offseg"
FORMAT_VERSION = 1


def weights_path(path: str | os.PathLike) -> Path:
    """``run/best`` or ``run/best.safetensors`` -> ``run/best.safetensors``."""
    path = Path(path)
    return path if path.name.endswith(SUFFIX) else path.with_name(path.name + SUFFIX)


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar next to a weights file: ``run/best.safetensors`` -> ``run/best.json``."""
    p = weights_path(path)
    return p.with_name(p.name[: -len(SUFFIX)] + ".json")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def classifier_kind(model: nn.Module) -> str | None:
    """'offset' or 'linear' for a Segmentor (by its classifier's type); None if unknown."""
    model = unwrap_model(model)
    head = getattr(model, "decode_head", None)
    clf = getattr(head, "classifier", None)
    if isinstance(clf, OffsetLearning):
        return "offset"
    if isinstance(clf, LinearClassifier):
        return "linear"
    return None


def describe_model(model: nn.Module) -> dict[str, Any]:
    """Identity of a model for metadata and error messages: name, num_classes, classifier.

    The name comes from ``model.model_name`` (set by the zoo's ``build_model``) or ``model.name``,
    falling back to the class name.
    """
    model = unwrap_model(model)
    name = getattr(model, "model_name", None) or getattr(model, "name", None)
    num_classes = getattr(model, "num_classes", None)
    return {
        "model": name if isinstance(name, str) else type(model).__name__,
        "num_classes": int(num_classes) if isinstance(num_classes, int) else None,
        "classifier": classifier_kind(model),
    }


def _describe(meta: Mapping[str, Any]) -> str:
    """'offseg-mbv2 (offset classifier, 11 classes)' from metadata."""
    name = meta.get("model") or "an unnamed model"
    parts = []
    if meta.get("classifier"):
        parts.append(f"{meta['classifier']} classifier")
    if meta.get("num_classes") is not None:
        parts.append(f"{meta['num_classes']} classes")
    return f"{name} ({', '.join(parts)})" if parts else str(name)


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temp file in ``path``'s folder, then rename it onto ``path``.

    The rename is atomic on POSIX and Windows (same file system), so readers see the old file or the
    complete new one, never a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # flush to disk before the rename makes it visible
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (temp file in the same folder + rename)."""
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | set):
        return list(value)
    if isinstance(value, Tensor):
        return value.tolist()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def save_weights(
    model_or_state: nn.Module | Mapping[str, Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write ``<path>.safetensors`` and its ``.json`` sidecar atomically.

    Args:
        model_or_state: a model (wrappers are unwrapped; its identity is added to the metadata) or a
            state dict of tensors.
        path: target, with or without the ``.safetensors`` suffix.
        metadata: JSON-serialisable facts (config, step, metrics, class names, ...). Must contain
            ``model``, ``num_classes`` and ``classifier`` when a bare state dict is given, so
            loading can check the architecture.
        half: store floating-point tensors as float16 (half the size; loading casts back to the
            model's dtype).

    Returns:
        The path of the ``.safetensors`` file.
    """
    meta: dict[str, Any] = {}
    if isinstance(model_or_state, nn.Module):
        model = unwrap_model(model_or_state)
        meta.update({k: v for k, v in describe_model(model).items() if v is not None})
        state = model.state_dict()
    else:
        state = dict(model_or_state)
    meta.update(metadata or {})
    meta["format_version"] = FORMAT_VERSION
    meta["dtype"] = "float16" if half else "native"

    tensors: dict[str, Tensor] = {}
    for key, value in state.items():
        t = value.detach().to("cpu")
        if half and t.is_floating_point():
            t = t.to(torch.float16)
        # clone: safetensors refuses tensors that share storage or are not contiguous
        tensors[key] = t.contiguous().clone()

    text = json.dumps(meta, indent=2, sort_keys=True, default=_json_default)
    target = weights_path(path)
    _atomic_write(target, lambda tmp: save_file(tensors, tmp, metadata={METADATA_KEY: text}))
    atomic_write_text(sidecar_path(target), text + "\n")
    return target


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a weights file (header copy, else the sidecar). Raises CheckpointError."""
    target = weights_path(path)
    if not target.is_file():
        raise CheckpointError(
            f"Checkpoint {target} does not exist; check the path (a training run writes "
            f"best.safetensors and last.safetensors in its work dir)."
        )
    try:
        with safe_open(str(target), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"Checkpoint {target} is corrupt or truncated and cannot be read ({exc}); "
            f"use another checkpoint (e.g. best instead of last) or re-run the training."
        ) from exc
    if METADATA_KEY in header:
        try:
            return json.loads(header[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"Checkpoint {target} has unreadable metadata ({exc}).") from exc
    side = sidecar_path(target)
    if side.is_file():
        try:
            return json.loads(side.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"The sidecar {side} is not valid JSON ({exc}); restore or delete it.") from exc
    return {}


def card_classes(meta: Mapping[str, Any]) -> tuple[list[str] | None, list[list[int]] | None]:
    """The class names and palette a card carries, each None when absent or inconsistent.

    Cards written by training and by ``offseg convert`` hold ``class_names`` (K strings) and
    ``palette`` (K ``[r, g, b]`` ints in 0..255), K = ``num_classes``. A list of another length, or
    a palette with a non-colour entry, counts as absent (the caller then decides, e.g. with
    ``offseg_vis.engine.checkpoint.card_classes``, which says so).

    Returns:
        (names or None, palette or None).
    """
    k = meta.get("num_classes")
    names = meta.get("class_names")
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        names = None
    elif isinstance(k, int) and len(names) != k:
        names = None
    palette = meta.get("palette")
    expected = k if isinstance(k, int) else (len(names) if names is not None else None)
    try:
        palette = [[int(c) for c in rgb] for rgb in palette] if isinstance(palette, list | tuple) else None
    except (TypeError, ValueError):
        palette = None
    if palette is not None and (
        (expected is not None and len(palette) != expected)
        or any(len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb) for rgb in palette)
    ):
        palette = None
    return (list(names) if names is not None else None), palette


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """All tensors of a weights file on CPU. Raises CheckpointError for corrupt files."""
    target = weights_path(path)
    read_metadata(target)  # existence and header checks with friendly errors
    try:
        tensors = {}
        with safe_open(str(target), framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
        return tensors
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"Checkpoint {target} is corrupt or truncated and cannot be read ({exc}); "
            f"use another checkpoint or re-run the training."
        ) from exc


def _check_identity(target: Path, meta: Mapping[str, Any], model: nn.Module) -> None:
    mine = describe_model(model)
    mismatch = []
    for key in ("num_classes", "classifier"):
        if meta.get(key) is not None and mine.get(key) is not None and meta[key] != mine[key]:
            mismatch.append(key)
    # names only compare when the model was built by the zoo (otherwise it is a class name)
    if meta.get("model") and getattr(unwrap_model(model), "model_name", None) and meta["model"] != mine["model"]:
        mismatch.append("model")
    if mismatch:
        raise CheckpointError(
            f"Checkpoint {target} holds {_describe(meta)}, but the model to load it into is "
            f"{_describe(mine)}; build the model with build_model({meta.get('model')!r}, "
            f"num_classes={meta.get('num_classes')}, classifier={meta.get('classifier')!r}) "
            f"or choose a checkpoint of this model."
        )


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict[str, Any]:
    """Load a weights file written by :func:`save_weights` into ``model`` (in place).

    Tensors are cast to the model's parameter dtypes (float16 files load into float32 models).

    Args:
        model: the target (wrappers are unwrapped).
        path: with or without the ``.safetensors`` suffix.
        strict: every key must match in name and shape.

    Returns:
        The checkpoint's metadata.

    Raises:
        CheckpointError: missing, corrupt or truncated file; another architecture or class count
            (the sentence names both models); missing/unexpected keys or shape mismatches.
    """
    target = weights_path(path)
    meta = read_metadata(target)
    bare = unwrap_model(model)
    _check_identity(target, meta, bare)
    state = read_state_dict(target)
    own = bare.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if wrong_shape or (strict and (missing or unexpected)):
        details = []
        if wrong_shape:
            k = wrong_shape[0]
            details.append(
                f"{len(wrong_shape)} tensors differ in shape (e.g. {k}: checkpoint "
                f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
            )
        if strict and missing:
            details.append(f"{len(missing)} model keys are missing from the file (e.g. {missing[0]})")
        if strict and unexpected:
            details.append(f"{len(unexpected)} file keys are unknown to the model (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"Checkpoint {target} holds {_describe(meta)} and does not fit the model "
            f"{_describe(describe_model(bare))}: {'; '.join(details)}. Build the model the checkpoint "
            f"was trained with, or pass strict=False to load the matching part only."
        )
    if not strict:
        state = {k: v for k, v in state.items() if k in own}
    bare.load_state_dict(state, strict=strict)
    return meta
