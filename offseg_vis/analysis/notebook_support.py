"""What the notebooks share: fast/full settings, the models (shipped checkpoint or a small one trained
now), FashionScenes validation samples and evaluation — so every notebook cell stays a one-liner.

Fast mode (``OFFSEG_FAST=1``, used by the test suite) shrinks images, points and training steps so a
notebook runs in well under three minutes on 2 CPU cores; without it the notebooks do the full version.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from offseg_vis.analysis.cache import file_digest
from offseg_vis.data.fashion_scenes import SCENE_PRESETS
from offseg_vis.engine.config import Config, load_config, shipped_checkpoints_dir
from offseg_vis.engine.evaluate import SegMetrics
from offseg_vis.engine.run import DataSplit, LoadedRun, datasets_for, evaluate_split, load_run
from offseg_vis.errors import CheckpointError

MODEL_NAME = "offseg-mbv2"
DEFAULT_CONFIG = "offseg-mbv2_fashion-scenes"  # a shipped recipe, resolved by name


def fast_mode() -> bool:
    """True when ``OFFSEG_FAST`` is set to 1/true/yes."""
    return os.environ.get("OFFSEG_FAST", "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class NotebookSettings:
    """Sizes the notebooks use (fast vs full).

    Attributes:
        fast: fast mode on.
        n_images: validation images probed (misalignment, offsets, embeddings).
        eval_images: validation images for mIoU tables.
        max_points: points of the joint UMAP (before + after).
        umap_epochs: UMAP optimisation epochs.
        fallback_steps: steps of the small model trained when no checkpoint ships.
        compare_steps: steps per classifier in the offset-vs-linear training notebook.
        batch_size: training batch size of those runs.
    """

    fast: bool
    n_images: int
    eval_images: int
    max_points: int
    umap_epochs: int | None
    fallback_steps: int
    compare_steps: int
    batch_size: int


def settings(fast: bool | None = None) -> NotebookSettings:
    """The settings for fast mode (``OFFSEG_FAST=1``) or the full notebooks."""
    fast = fast_mode() if fast is None else fast
    if fast:
        return NotebookSettings(
            True,
            n_images=12,
            eval_images=8,
            max_points=4000,
            umap_epochs=60,
            fallback_steps=20,
            compare_steps=10,
            batch_size=4,
        )
    return NotebookSettings(
        False,
        n_images=60,
        eval_images=200,
        max_points=50_000,
        umap_epochs=100,
        fallback_steps=600,
        compare_steps=800,
        batch_size=16,
    )


def setup(fast: bool | None = None) -> NotebookSettings:
    """A notebook's first call: the settings, and in fast mode one torch thread (the test suite shares
    the cores with other jobs, where two OpenMP threads waiting for each other run far slower)."""
    s = settings(fast)
    if s.fast:
        import torch

        torch.set_num_threads(1)
    return s


def repo_root() -> Path:
    """The repository folder (the package is installed in editable mode from it)."""
    return Path(__file__).resolve().parents[2]


def checkpoints_dir() -> Path:
    """``$OFFSEG_CHECKPOINTS`` or the checkpoints shipped with the package (``checkpoints/`` of a clone)."""
    env = os.environ.get("OFFSEG_CHECKPOINTS")
    return Path(env) if env else shipped_checkpoints_dir()


def checkpoint_name(classifier: str, preset: str = "", model_name: str = MODEL_NAME) -> str:
    """The shipped checkpoint's name: ``offseg-mbv2_offset``, or ``offseg-mbv2_offset-looks`` for the pair
    trained on a FashionScenes scene preset (:data:`~offseg_vis.data.fashion_scenes.SCENE_PRESETS`)."""
    _check_preset(preset)
    return f"{model_name}_{classifier}" + (f"-{preset}" if preset else "")


def shipped_checkpoint(classifier: str, preset: str = "", model_name: str = MODEL_NAME) -> Path | None:
    """``checkpoints/<checkpoint_name>.safetensors`` when it exists, else None."""
    path = checkpoints_dir() / f"{checkpoint_name(classifier, preset, model_name)}.safetensors"
    return path if path.is_file() else None


def _check_preset(preset: str) -> None:
    if preset not in SCENE_PRESETS:
        known = ", ".join(repr(k) for k in SCENE_PRESETS)
        raise ValueError(f"Unknown scene preset {preset!r}; the FashionScenes presets are {known}.")


def _scenes_overrides(preset: str) -> list[str]:
    """Config overrides that draw both splits from a scene preset (none for plain scenes)."""
    _check_preset(preset)
    return [f"data.dataset_options={{config: {json.dumps(SCENE_PRESETS[preset])}}}"] if preset else []


def runs_dir() -> Path:
    """Where notebook training runs go: ``$OFFSEG_RUNS`` or the repository's ``runs/notebooks``."""
    env = os.environ.get("OFFSEG_RUNS")
    return Path(env) if env else repo_root() / "runs" / "notebooks"


def cache_dir() -> Path:
    """Where analysis caches (UMAP maps) go: ``$OFFSEG_CACHE`` or the repository's ``.cache/analysis``."""
    env = os.environ.get("OFFSEG_CACHE")
    return Path(env) if env else repo_root() / ".cache" / "analysis"


@dataclass
class NotebookModel(LoadedRun):
    """A model ready for analysis: the :class:`~offseg_vis.engine.run.LoadedRun` of a checkpoint (model in
    eval mode on the CPU, card, class names, palette) plus where it came from.

    Attributes:
        source: a sentence saying which checkpoint was loaded or that a small model was trained now.
        key: digest of the weights file (keys analysis caches).
        trained_now: True when no shipped checkpoint existed and one was trained for the notebook.
    """

    source: str = ""
    key: str = ""
    trained_now: bool = False

    @property
    def checkpoint(self) -> Path:
        """The weights file (``path``)."""
        return self.path

    @property
    def metadata(self) -> dict:
        """The checkpoint's card (``card``)."""
        return self.card


def _notebook_model(path: Path, source: str, trained_now: bool) -> NotebookModel:
    run = load_run(path, device="cpu")
    fields = {f.name: getattr(run, f.name) for f in dataclasses.fields(LoadedRun)}
    return NotebookModel(**fields, source=source, key=file_digest(path), trained_now=trained_now)


def training_config(
    classifier: str,
    steps: int,
    batch_size: int,
    eval_images: int,
    work_dir: Path,
    num_threads: int | None = None,
    preset: str = "",
):
    """The CPU default config (the shipped recipe ``offseg-mbv2_fashion-scenes``), shortened to ``steps``
    and made quiet for a notebook; ``preset`` trains and scores on that scene preset's scenes."""

    overrides = [
        f"model.classifier={classifier}",
        f"schedule.max_iters={steps}",
        f"schedule.warmup_iters={max(1, min(200, steps // 10))}",
        "schedule.eval_interval=0",
        f"schedule.checkpoint_interval={steps}",
        f"schedule.log_interval={max(1, steps // 50)}",
        f"data.batch_size={batch_size}",
        "data.num_workers=0",
        f"data.val_options={{length: {eval_images}}}",
        f"test.max_images={eval_images}",
        "runtime.progress=false",
        "runtime.tensorboard=false",
        "runtime.overwrite=true",
        f"runtime.work_dir={work_dir.as_posix()}",
        f"runtime.num_threads={'null' if num_threads is None else int(num_threads)}",
        *_scenes_overrides(preset),
    ]
    return load_config(DEFAULT_CONFIG, overrides)


def train_small(
    classifier: str,
    steps: int,
    batch_size: int = 8,
    eval_images: int = 16,
    work_dir: Path | None = None,
    preset: str = "",
):
    """Train OffSeg-MBV2 with ``classifier`` for ``steps`` steps from the CPU default config (on the
    scenes of ``preset``).

    In fast mode torch uses one thread: on cores shared with other jobs, two OpenMP threads that wait
    for each other at every operator were measured 100x slower than one (0.2 vs 28 images/s).

    Returns the engine's ``TrainResult`` (history, checkpoint paths, final metrics).
    """
    from offseg_vis.engine.train import train

    work_dir = work_dir or runs_dir() / f"{checkpoint_name(classifier, preset)}_{steps}steps"
    threads = 1 if fast_mode() else None
    return train(training_config(classifier, steps, batch_size, eval_images, work_dir, threads, preset))


def load_or_train(classifier: str = "offset", fast: bool | None = None, preset: str = "") -> NotebookModel:
    """The shipped checkpoint of OffSeg-MBV2 with ``classifier`` (trained on ``preset``'s scenes, e.g.
    "looks"); if none ships, a small model trained now (``settings().fallback_steps`` steps; reused from
    ``runs/notebooks`` on later calls)."""
    shipped = shipped_checkpoint(classifier, preset)
    if shipped is not None:
        return _notebook_model(shipped, f"loaded the shipped checkpoint {shipped.name}", False)
    s = settings(fast)
    work_dir = runs_dir() / f"{checkpoint_name(classifier, preset)}_{s.fallback_steps}steps"
    weights = work_dir / "last.safetensors"
    if not weights.is_file():
        result = train_small(classifier, s.fallback_steps, s.batch_size, s.eval_images, work_dir, preset)
        weights = Path(result.last_checkpoint or result.checkpoint)
    if not weights.is_file():
        raise CheckpointError(f"Training finished but wrote no weights in {work_dir}; check its train.log.")
    note = (
        f"no shipped checkpoint in {checkpoints_dir().name}/, so a small model was trained for "
        f"{s.fallback_steps} steps ({'fast mode' if s.fast else 'full mode'}); expect weak results"
    )
    return _notebook_model(weights, note, True)


def load_twins(fast: bool | None = None, preset: str = "") -> tuple[NotebookModel, NotebookModel]:
    """The Offset Learning model of ``preset`` and its per-pixel twin (:func:`load_or_train` each), checked to
    be twins from their cards; prints where each came from and how they were paired.

    Raises:
        CheckpointError: the two cards record different recipes, data, seeds or training steps.
    """
    from offseg_vis.engine.checkpoint import twin_pairing

    offset, linear = load_or_train("offset", fast, preset), load_or_train("linear", fast, preset)
    pairing = twin_pairing(offset.card, linear.card, offset.path.name, linear.path.name, "load_twins")
    print(f"Offset Learning: {offset.source}\nper-pixel twin: {linear.source}\n{pairing}")
    return offset, linear


def val_config(n: int, preset: str = "") -> Config:
    """The notebooks' recipe (``DEFAULT_CONFIG``) with its val split cut to the first ``n`` scenes (of the
    scene preset ``preset``), quiet."""
    return load_config(
        DEFAULT_CONFIG, [f"data.val_options={{length: {int(n)}, progress: false}}", *_scenes_overrides(preset)]
    )


def val_split(n: int, preset: str = "") -> DataSplit:
    """The first ``n`` validation scenes (of ``preset``), built by the one run API like every other caller's:
    the FashionScenes val set (its cache, built on first use), the recipe's test transform and the class names."""
    return datasets_for(val_config(n, preset), "val")


def val_samples(n: int, start: int = 0, preset: str = "") -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """The first ``n`` FashionScenes validation scenes from ``start`` (of ``preset``): (images, masks, names)."""
    ds = val_split(start + n, preset).dataset
    items = [ds[i] for i in range(start, start + n)]
    return [a for a, _, _ in items], [b for _, b, _ in items], [c for _, _, c in items]


def class_names() -> list[str]:
    """FashionScenes' 11 class names."""
    from offseg_vis.data.fashion_scenes import CLASSES

    return list(CLASSES)


def palette() -> np.ndarray:
    """FashionScenes' colours (11, 3) uint8."""
    from offseg_vis.data.fashion_scenes import PALETTE

    return np.asarray(PALETTE, dtype=np.uint8)


def evaluate_val(model: nn.Module, n_images: int, preset: str = "") -> SegMetrics:
    """mIoU / per-class IoU on the first ``n_images`` validation scenes of ``preset`` (the engine's
    evaluator, with the recipe's test protocol)."""
    cfg = val_config(n_images, preset)
    return evaluate_split(model, datasets_for(cfg, "val"), cfg.test, class_names=class_names())
