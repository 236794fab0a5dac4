"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


VENDORED_REFERENCE = REPO / "tests" / "reference"


def _reference_dir() -> Path:
    """``$OFFSEG_REFERENCE``, else the team's full copy beside the repo, else the vendored subset."""
    env = os.environ.get("OFFSEG_REFERENCE")
    if env:
        return Path(env)
    shared = REPO.parent / "shared" / "reference"
    return shared if (shared / "vectors").is_dir() else VENDORED_REFERENCE


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Official reference data: state-dict key lists and numeric test vectors of the official code.

    ``tests/reference/`` vendors everything except the 20 MB EfficientFormerV2-S1 backbone vector,
    whose test reads the full copy (``../shared/reference`` or ``$OFFSEG_REFERENCE``) and skips
    without it.
    """
    path = _reference_dir()
    if not (path / "vectors").is_dir():
        pytest.skip(f"reference data not found in {path}; set OFFSEG_REFERENCE")
    return path


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)
    yield
