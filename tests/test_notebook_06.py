"""Notebook 06 (linked pixel <-> embedding views): its .ipynb is the jupytext twin of its .py, and it runs
end to end in fast mode in a child process (the runner of tests/test_notebooks.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_notebooks  # tests/ is on sys.path (rootdir conftest); reuse its runner, do not copy it

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "notebooks" / "06_explore_embeddings.py"
NOTEBOOK = REPO / "notebooks" / "06_explore_embeddings.ipynb"
REGENERATE = "jupytext --to ipynb --update-metadata '{\"jupytext\":null}' notebooks/06_explore_embeddings.py"


def test_ipynb_is_the_stripped_jupytext_twin_of_the_script():
    jupytext = pytest.importorskip("jupytext")
    committed = json.loads(NOTEBOOK.read_text())
    assert committed["metadata"]["kernelspec"]["name"] == "python3"
    assert "jupytext" not in committed["metadata"]
    for cell in committed["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, "06 has outputs"
    built = jupytext.read(SCRIPT)
    got = [(c["cell_type"], "".join(c["source"])) for c in committed["cells"]]
    want = [(c.cell_type, c.source) for c in built.cells]
    assert got == want, f"notebooks/06 .ipynb differs from its .py; regenerate it with: {REGENERATE}"


@pytest.mark.notebook
@pytest.mark.slow
def test_notebook_06_runs_in_fast_mode(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("jscatter")
    env = {
        **os.environ,
        "OFFSEG_FAST": "1",
        "OFFSEG_RUNS": str(tmp_path / "runs"),
        "OFFSEG_CACHE": str(tmp_path / "cache"),
        "MPLBACKEND": "Agg",
        "TQDM_DISABLE": "1",
    }
    executed = tmp_path / NOTEBOOK.name
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", test_notebooks.RUNNER, str(NOTEBOOK), str(executed), str(NOTEBOOK.parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, f"06 failed:\n{done.stderr[-4000:]}"
    nb = nbformat.read(executed, as_version=4)
    texts, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")))
            images += "image/png" in out.get("data", {})
            assert out.get("output_type") != "error", out
    text = "\n".join(texts)
    for needle in ("fast mode: 8 validation scenes", "3,000 pixels of 8 image(s)", "one PCA map fitted on 6,000 points",
                   "point(s) in", "trouser", "nearest pixels in E and in E′ share", "VBox"):  # fmt: skip
        assert needle in text, f"06: expected {needle!r} in the outputs"
    assert images >= 3, f"06 drew {images} pictures (selection strip, maps, neighbours expected)"
    print(f"notebook 06 ran in {seconds:.1f} s (fast mode)")
