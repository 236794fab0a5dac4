"""Content hashes used to key on-disk caches (checkpoint, data, parameters) and the ``.npz`` cache itself."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn


def file_digest(path: str | Path, length: int = 16) -> str:
    """SHA-256 of a file's bytes (e.g. a checkpoint), first ``length`` hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


def arrays_digest(arrays: Iterable[np.ndarray | None], length: int = 16) -> str:
    """SHA-256 over the shapes, dtypes and bytes of several arrays (None entries allowed)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:length]


def model_fingerprint(model: nn.Module, length: int = 16) -> str:
    """SHA-256 of a model's state dict (names, shapes and values): identical weights, identical key."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:length]


def params_digest(params: dict, length: int = 16) -> str:
    """SHA-256 of a JSON-serialisable dict (keys sorted)."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def save_npz_atomic(path: str | Path, **arrays) -> None:
    """Write an ``.npz`` through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
