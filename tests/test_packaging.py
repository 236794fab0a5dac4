"""`pip install .` is a complete install: the wheel carries every module, recipe, shipped checkpoint (with
its card) and app example, and an installed copy finds its recipes by name and its checkpoints without
the source tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "offseg_vis"


def _package_files(pattern: str) -> list[str]:
    """Files of the source package matching ``pattern``, as wheel member names (offseg_vis/...)."""
    return sorted(p.relative_to(REPO).as_posix() for p in PACKAGE.glob(pattern) if "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel the way `pip install .` does, from a copy of what setuptools reads (so the build
    never writes into the checkout other processes use); no index and no build isolation: nothing is
    downloaded."""
    src = tmp_path_factory.mktemp("src")
    shutil.copy2(REPO / "pyproject.toml", src)
    shutil.copy2(REPO / "README.md", src)
    shutil.copytree(PACKAGE, src / "offseg_vis", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
           "-q", "-w", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("offseg_vis-*.whl")
    return path


def test_clone_paths_are_relative_symlinks_into_the_package():
    # the README and users refer to configs/ and checkpoints/; the real files live in the package
    for name in ("configs", "checkpoints"):
        link = REPO / name
        assert link.is_symlink() and os.readlink(link) == f"offseg_vis/{name}"
        assert link.resolve() == (PACKAGE / name).resolve()


def test_wheel_holds_every_module_recipe_checkpoint_and_example(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = _package_files("**/*.py")
    assert len(modules) > 50
    assert not set(modules) - names, set(modules) - names  # every module, in every sub-package
    recipes = _package_files("configs/*.yaml")
    assert "offseg_vis/configs/offseg-mbv2_fashion-scenes.yaml" in recipes and len(recipes) >= 13
    assert not set(recipes) - names
    pairs = ("offset", "linear", "offset-looks", "linear-looks")  # plain FashionScenes and the +looks preset
    shipped = [f"offseg_vis/checkpoints/offseg-mbv2_{c}.{ext}" for c in pairs for ext in ("safetensors", "json")]
    assert not set(shipped) - names
    examples = _package_files("app/examples/*")
    assert len(examples) >= 2 and not set(examples) - names
    # the wheel's data is the repository's, byte for byte
    with zipfile.ZipFile(wheel) as z:
        for member in recipes + shipped + examples:
            assert z.read(member) == (REPO / member).read_bytes(), member
    sizes = {m: zipfile.ZipFile(wheel).getinfo(m).file_size / 1e6 for m in recipes + shipped + examples}
    assert max(sizes[m] for m in shipped) <= 10.0  # each checkpoint float16 and at most 10 MB
    assert sum(sizes.values()) <= 20.0  # two pairs of checkpoints, recipes and gallery: a lean package


def test_installed_copy_resolves_recipes_and_checkpoints_from_its_package_data(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel unpacked is its installed layout
    elsewhere = tmp_path / "elsewhere"  # no configs/ or checkpoints/ beside the process
    elsewhere.mkdir()
    probe = """
import json
import offseg_vis
from offseg_vis.analysis.notebook_support import checkpoints_dir, training_config
from offseg_vis.app.models import default_checkpoint_dir, find_checkpoints
from offseg_vis.experiment.budget import resolve_config_path
from offseg_vis.engine.config import load_config, resolve_config, shipped_checkpoints_dir
from pathlib import Path
cfg = load_config("offseg-mbv2_fashion-scenes")
print(json.dumps({
    "package": offseg_vis.__file__,
    "recipe": str(resolve_config("offseg-mbv2_fashion-scenes")),
    "recipe_via_configs": str(resolve_config("configs/offseg-t_ade20k.yaml")),
    "experiment": str(resolve_config_path(None)),
    "notebook": training_config("linear", 5, 2, 2, Path("w")).model.name,
    "model": [cfg.name, cfg.model.name, cfg.data.dataset],
    "checkpoints": [str(shipped_checkpoints_dir()), str(default_checkpoint_dir()), str(checkpoints_dir())],
    "app_finds": [p.name for p in find_checkpoints(default_checkpoint_dir())],
}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("OFFSEG_CHECKPOINTS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)  # ahead of the editable install, which resolves later on the meta path
    done = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    installed = site / "offseg_vis"
    assert Path(got["package"]) == installed / "__init__.py"  # the unpacked wheel, not the checkout
    assert Path(got["recipe"]) == installed / "configs" / "offseg-mbv2_fashion-scenes.yaml"
    assert Path(got["recipe_via_configs"]) == installed / "configs" / "offseg-t_ade20k.yaml"
    assert Path(got["experiment"]) == installed / "configs" / "offseg-mbv2_fashion-scenes.yaml"
    assert got["notebook"] == "offseg-mbv2"
    assert got["model"] == ["offseg-mbv2_fashion-scenes", "offseg-mbv2", "fashion-scenes"]
    assert [Path(p) for p in got["checkpoints"]] == [installed / "checkpoints"] * 3
    assert got["app_finds"] == [
        f"offseg-mbv2_{c}.safetensors" for c in ("linear-looks", "linear", "offset-looks", "offset")
    ]  # sorted by name
