"""The budget every run of one comparison shares, and the resolved config of one run."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offseg_vis.data.fashion_scenes import FashionScenesConfig
from offseg_vis.engine.config import load_config, resolve_config
from offseg_vis.errors import ConfigError
from offseg_vis.experiment.arms import Arm

DEFAULT_CONFIG = "configs/offseg-mbv2_fashion-scenes.yaml"
DEFAULT_RESULTS = "docs/experiment/results.jsonl"
DEFAULT_WORK_DIR = "runs/experiment"
DEFAULT_DOC = "docs/experiment.md"
DEFAULT_ITERS = 1200  # ~4 it/s at batch 16, 128 px on 2 cores: about 5 minutes per run
VAL_GENERATOR_SEED = 0  # one fixed val set per style, shared by every seed and arm

# Overrides that change where or how fast a run executes, not what it computes: they do not enter
# the budget, so a grid can be finished with other threads or another data folder.
NON_IDENTITY_PREFIXES = ("runtime.", "data.num_workers", "data.root", "test.batch_size")
# Keys the runner sets for every arm and run; overriding them would break the comparison.
RUNNER_KEYS = {
    "model.classifier": "--arms",
    "model.classifier_options": "--arms",
    "runtime.seed": "--seeds",
    "schedule.max_iters": "--iters",
    "data.batch_size": "--batch-size",
    "data.crop_size": "--size",
    "data.train_options": "--train-scenes / --size",
    "data.val_options": "--val-scenes / --size",
    "schedule.eval_interval": "(evaluation runs once, at the end)",
}


@dataclass(frozen=True)
class Budget:
    """What every run of one comparison shares. Two runs are the same run when arm, seed and budget agree.

    Attributes:
        iters: optimiser steps.
        batch_size: images per step.
        size: scene side and training crop side in pixels.
        val_scenes: val scenes evaluated (of the arm's style).
        train_scenes: scenes per training epoch (the stream is fresh every epoch).
        warmup_iters: linear warm-up steps (the config's, capped at a tenth of ``iters``).
        config: name of the base config (its file stem).
        overrides: the user's overrides that change the computation (sorted, as given).
    """

    iters: int
    batch_size: int
    size: int
    val_scenes: int
    train_scenes: int
    warmup_iters: int
    config: str
    overrides: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON)."""
        d = dataclasses.asdict(self)
        d["overrides"] = list(self.overrides)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Budget:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "overrides": tuple(d.get("overrides", ()))})

    def key(self) -> str:
        """8-hex digest of the budget (names run folders)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def describe(self) -> str:
        """One line for people."""
        extra = f", overrides {' '.join(self.overrides)}" if self.overrides else ""
        return (
            f"{self.iters} iterations x batch {self.batch_size} at {self.size} px "
            f"(warm-up {self.warmup_iters}, {self.train_scenes} fresh scenes per epoch), "
            f"{self.val_scenes} val scenes of the arm's style; config {self.config}{extra}"
        )


def identity_overrides(overrides: Sequence[str]) -> tuple[str, ...]:
    """The overrides that enter the budget (see ``NON_IDENTITY_PREFIXES``), sorted.

    Raises:
        ConfigError: an override sets a key the runner controls.
    """
    kept = []
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if key in RUNNER_KEYS:
            raise ConfigError(
                f"The experiment sets {key} itself for every run; use {RUNNER_KEYS[key]} instead of the "
                f"override {text!r}."
            )
        if not key.startswith(NON_IDENTITY_PREFIXES):
            kept.append(text)
    return tuple(sorted(kept))


def resolve_config_path(path: str | os.PathLike | None) -> Path:
    """The base config file: ``path`` (a file or a shipped recipe's name), by default the CPU recipe
    shipped with the package (:func:`offseg_vis.engine.config.resolve_config`)."""
    return resolve_config(path or DEFAULT_CONFIG)


def load_base(
    config_path: str | os.PathLike | None,
    overrides: Sequence[str] = (),
    iters: int = DEFAULT_ITERS,
    batch_size: int | None = None,
    size: int | None = None,
    val_scenes: int | None = None,
    train_scenes: int | None = None,
):
    """Read the base config (with overrides) and fix the budget; missing sizes come from the config.

    Returns:
        (Config, Budget).

    Raises:
        ConfigError: a bad file, key or value, a dataset other than fashion-scenes, or a
            non-positive budget number.
    """
    path = resolve_config_path(config_path)
    ident = identity_overrides(overrides)
    # TensorBoard files are clutter for 27 short runs; an explicit override still wins.
    config = load_config(path, ["runtime.tensorboard=false", *overrides])
    if config.data.dataset != "fashion-scenes":
        raise ConfigError(
            f"The experiment runs on FashionScenes (its style knob is the point), but {path} uses "
            f"{config.data.dataset!r}; pass --config {DEFAULT_CONFIG}."
        )
    d = config.data
    crop = d.crop_size[0] if isinstance(d.crop_size, list) else int(d.crop_size)
    val_default = {**d.dataset_options, **d.val_options}.get("length", 1000)
    train_default = {**d.dataset_options, **d.train_options}.get("length", 2000)
    budget = Budget(
        iters=int(iters),
        batch_size=int(batch_size or d.batch_size),
        size=int(size or crop),
        val_scenes=int(val_scenes or val_default),
        train_scenes=int(train_scenes or train_default),
        warmup_iters=min(int(config.schedule.warmup_iters), int(iters) // 10),
        config=config.name,
        overrides=ident,
    )
    for name in ("iters", "batch_size", "size", "val_scenes", "train_scenes"):
        if getattr(budget, name) < 1:
            raise ConfigError(f"The experiment budget's {name} must be positive, got {getattr(budget, name)}.")
    if budget.train_scenes < budget.batch_size:
        raise ConfigError(
            f"--train-scenes ({budget.train_scenes}) must be at least --batch-size ({budget.batch_size})."
        )
    return config, budget


def generator_options(base_options: dict, size: int, style: float, seed: int) -> dict:
    """Full FashionScenes generator parameters for one split of one run.

    Args:
        base_options: generator parameters from the config's ``data.dataset_options.config``.
        size: scene side (item sizes scale with it unless the config fixes them).
        style, seed: the arm's style and the split's generator seed.
    """
    params = {**base_options, "style": float(style), "seed": int(seed)}
    params.pop("size", None)
    return dataclasses.asdict(FashionScenesConfig.for_size(int(size), **params))


def run_config(base, arm: Arm, seed: int, budget: Budget):
    """The resolved :class:`~offseg_vis.engine.config.Config` of one run.

    The training stream uses generator seed ``seed`` (the same for every arm at this seed), the val
    set generator seed ``VAL_GENERATOR_SEED`` (one fixed val set per style and size).
    """
    cfg = copy.deepcopy(base)
    variant = arm.spec
    cfg.name = f"experiment_{arm.slug}_seed{seed}"
    cfg.model.classifier = variant.classifier
    cfg.model.classifier_options = dict(variant.options)
    d = cfg.data
    shared = dict(d.dataset_options)
    base_gen = dict(shared.pop("config", None) or {})
    shared.pop("length", None)
    d.dataset_options = shared
    d.train_options = {
        **{k: v for k, v in d.train_options.items() if k != "config"},
        "length": budget.train_scenes,
        "config": generator_options({**base_gen, **arm.scene_options}, budget.size, arm.style, seed),
    }
    d.val_options = {
        **{k: v for k, v in d.val_options.items() if k != "config"},
        "length": budget.val_scenes,
        "config": generator_options({**base_gen, **arm.scene_options}, budget.size, arm.style, VAL_GENERATOR_SEED),
    }
    d.crop_size = [budget.size, budget.size]
    d.batch_size = budget.batch_size
    cfg.schedule.max_iters = budget.iters
    cfg.schedule.warmup_iters = budget.warmup_iters
    cfg.schedule.eval_interval = 0  # evaluate once, at the end
    cfg.runtime.seed = int(seed)
    cfg.test.max_images = None
    return cfg


def run_dir_for(work_root: str | os.PathLike, arm: Arm, seed: int, budget: Budget) -> Path:
    """``WORK/<variant>_style<s>/seed<k>-<budget key>``: one folder per run, so resuming is safe."""
    return Path(work_root) / arm.slug / f"seed{seed}-{budget.key()}"
