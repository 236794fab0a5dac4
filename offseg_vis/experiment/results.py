"""The results file: one JSON line per finished run, appended atomically, read tolerantly."""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from offseg_vis.experiment.budget import Budget
from offseg_vis.experiment.record import RunRecord
from offseg_vis.models.weights import atomic_write_text


def run_key(
    arm_id: str, seed: int, budget: dict | Budget, commit: str | None = None, generator: str | None = None
) -> str:
    """Identity of a run in the results file: arm, seed, budget, code commit and scene generator version.

    The commit and generator version belong to the identity so that both arms of a comparison are
    always trained by the same code on the same scenes; a run made at another commit is run again.
    """
    b = budget.to_dict() if isinstance(budget, Budget) else budget
    return json.dumps([arm_id, int(seed), b, commit, generator], sort_keys=True)


def read_results(path: str | os.PathLike) -> list[RunRecord]:
    """Every complete record of a results file (missing file: none).

    A line that is not a run record (e.g. a hand edit gone wrong) is skipped with a warning that
    names its line number; it never stops the table or the grid.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = RunRecord.from_dict(json.loads(line))
        except (ValueError, KeyError, TypeError, AttributeError):
            warnings.warn(f"{path}:{number} is not an experiment record; it is ignored.", stacklevel=2)
            continue
        records.append(record)
    return records


def done_keys(records: Iterable[RunRecord]) -> set[str]:
    """Run keys of the records."""
    return {run_key(r.arm, r.seed, r.budget, r.git_commit, r.generator_version) for r in records}


@contextlib.contextmanager
def _locked(path: Path):
    """Exclusive lock on ``path``'s folder where the platform has fcntl (two sittings at once stay safe).

    Locking the folder itself (flock works on a directory) leaves no lock file beside the results.
    """
    try:  # imported here: fcntl exists only on POSIX
        import fcntl
    except ImportError:  # Windows: no lock; the rename in append_result still keeps the file whole
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _clean(value: Any) -> Any:
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def append_result(path: str | os.PathLike, record: RunRecord) -> None:
    """Add ``record`` as one JSON line (:meth:`RunRecord.to_dict`; NaN/inf written as null).

    The file is rewritten to a temporary file and renamed into place, so a reader or a crash sees
    the old file or the new one, never a partial line; a missing final newline is repaired.
    """
    path = Path(path)
    line = json.dumps(_clean(record.to_dict()), allow_nan=False)  # key order kept: per-class IoU in class order
    with _locked(path):
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        atomic_write_text(path, old + line + "\n")
