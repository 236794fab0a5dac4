"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _reference_dir() -> Path:
    env = os.environ.get("OFFSEG_REFERENCE")
    return Path(env) if env else REPO.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The official reference data (keys and test vectors); skips when it is not beside the repo."""
    path = _reference_dir()
    if not (path / "vectors").is_dir():
        pytest.skip(f"reference data not found (looked in {path}); set OFFSEG_REFERENCE")
    return path


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)
    yield
