"""Where data lives when the user does not say: ``$OFFSEG_DATA`` or ``data/`` of the repository."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "OFFSEG_DATA"


def default_data_dir() -> Path:
    """The folder that holds generated and downloaded datasets.

    ``$OFFSEG_DATA`` when set; otherwise ``data/`` at the root of the source checkout this package
    runs from (the folder is git-ignored); for an installed (non-editable) package, ``./data``.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "offseg_vis").is_dir():
        return repo / "data"
    return Path.cwd() / "data"
