"""Every notebook runs end to end in fast mode (OFFSEG_FAST=1) with the project's Python.

The kernel is "python3" started by nbclient; jupyter_client replaces a kernelspec's "python" by the
interpreter running the tests (the venv's), so nothing needs registering. Training runs and caches of
the notebooks go to one temporary folder per test session (a small model is trained at most once per
classifier when no checkpoint ships).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Each notebook's source is its jupytext percent script (notebooks/NN_name.py); the .ipynb beside it
# is generated from it, stripped of outputs, for people who open notebooks directly.
SOURCES = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py"))
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
REGENERATE = "jupytext --to ipynb --update-metadata '{\"jupytext\":null}' notebooks/NAME.py"
EXPECTED = {
    "01_quickstart": ["mIoU"],
    "02_misalignment": [
        "Offset Learning fixed",  # the twin comparison comes first
        "both_wrong",
        "consistency",
        "alignment",
        "offset: after (E', W')",
        "linear (E, W)",
        "ridge λ 1e-03",  # the regulariser sweep and its ordering check
        "hold",
    ],
    "03_offsets": [
        "Offset Learning fixed",
        "both_wrong",
        "net fixed",
        "offseg-mbv2_offset-looks",  # the +looks pair against its twin
        "offsets switched off",
    ],
    "04_umap_embeddings": ["points; fit"],
    "05_train_offset_vs_linear": ["offset:", "linear:"],
    "06_explore_embeddings": [
        "fast mode: 8 validation scenes",
        "3,000 pixels of 8 image(s)",
        "one PCA map fitted on 6,000 points",
        "point(s) in",
        "trouser",
        "nearest pixels in E and in E′ share",
        "VBox",
    ],
}
MIN_PICTURES = {"06_explore_embeddings": 3}  # selection strip, maps, neighbours
NEEDS = {"06_explore_embeddings": ["jscatter"]}


def test_notebooks_exist_and_are_stripped():
    assert [p.stem for p in SOURCES] == sorted(EXPECTED) == [p.stem for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3"
        assert "jupytext" not in nb["metadata"]
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} has outputs"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_ipynb_is_the_jupytext_twin_of_its_script(source):
    jupytext = pytest.importorskip("jupytext")
    committed = json.loads(source.with_suffix(".ipynb").read_text())
    got = [(c["cell_type"], "".join(c["source"])) for c in committed["cells"]]
    want = [(c.cell_type, c.source) for c in jupytext.read(source).cells]
    how = REGENERATE.replace("NAME", source.stem)
    assert got == want, f"{source.stem}.ipynb differs from its .py; regenerate it: {how}"


@pytest.fixture(scope="session")
def notebook_workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("notebook-runs")


RUNNER = """
import sys, nbformat, nbclient
src, dst = sys.argv[1], sys.argv[2]
nb = nbformat.read(src, as_version=4)
nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                        resources={"metadata": {"path": sys.argv[3]}}).execute()
nbformat.write(nb, dst)
"""


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_fast_mode(path, notebook_workspace, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    for module in NEEDS.get(path.stem, ()):
        pytest.importorskip(module)
    env = {
        **os.environ,
        "OFFSEG_FAST": "1",
        "OFFSEG_RUNS": str(notebook_workspace / "runs"),
        "OFFSEG_CACHE": str(notebook_workspace / "cache"),
        "MPLBACKEND": "Agg",
        "TQDM_DISABLE": "1",  # progress bars only flood the kernel's IOPub channel
    }
    executed = tmp_path / path.name
    # Executed in a child process: run inside the pytest process, the UMAP notebook's kernel stalled
    # after its cells (reproducibly, whatever the capture setting); as a plain process it never did.
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(path), str(executed), str(path.parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"{path.name} failed:\n{done.stderr[-4000:]}"
    nb = nbformat.read(executed, as_version=4)
    texts, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")))
            images += "image/png" in out.get("data", {})
            assert out.get("output_type") != "error", out
    text = "\n".join(texts)
    for needle in EXPECTED[path.stem]:
        assert needle in text, f"{path.name}: expected {needle!r} in the outputs"
    assert images >= MIN_PICTURES.get(path.stem, 1), f"{path.name} drew {images} pictures"
