"""``offseg bench experiment``: does Offset Learning beat per-pixel classification on FashionScenes?

The paper's claim: a per-pixel classifier fails when one class looks different from image to image,
and learned class / feature offsets fix it. This module tests it with identical budgets:

* an **arm** is a classifier variant at one scene ``style`` (the strength of FashionScenes'
  per-scene appearance shift), written ``variant@style``, e.g. ``offset-co@0.5``;
* the **grid**: ``linear`` and ``offset`` at style 0, 0.5 and 1 (main), plus at style 0.5
  ``offset-co`` (class offsets only), ``offset-fo`` (feature offsets only) and
  ``offset-scaled-ln`` (our variant, not the paper's: a learnable logit scale after the
  LayerNorm); ``offset-noln`` (no LayerNorm, also ours) on request;
* a **run** = one arm x one seed, trained with the CPU default config under a fixed
  :class:`Budget` (iterations, batch, scene size, val scenes: the same for every arm) and
  evaluated on val scenes of the arm's style. The seed fixes the training scene stream, the
  data order, the augmentation and the initialisation, so every arm sees the same data per seed
  and differences between arms at one seed are paired;
* every finished run appends one JSON line to a results file; runs already there (same arm, seed
  and budget) are skipped, an interrupted run resumes from its last checkpoint, so the grid can be
  completed over several sittings;
* ``--table`` turns the results file into a Markdown table (mean ± std of val mIoU per arm, paired
  differences vs ``linear`` at the same style, parameters, wall time) and writes
  ``docs/experiment.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offseg_vis.errors import ConfigError

DEFAULT_CONFIG = "configs/offseg-mbv2_fashion-scenes.yaml"
DEFAULT_RESULTS = "docs/experiment/results.jsonl"
DEFAULT_WORK_DIR = "runs/experiment"
DEFAULT_DOC = "docs/experiment.md"
DEFAULT_ITERS = 1200  # ~4 it/s at batch 16, 128 px on 2 cores: about 5 minutes per run
MAIN_STYLES = (0.0, 0.5, 1.0)
ABLATION_STYLE = 0.5  # FashionScenes' default style
VAL_GENERATOR_SEED = 0  # one fixed val set per style, shared by every seed and arm
CLOCK_FILE = "experiment_clock.json"

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


# ----------------------------------------------------------------------------------------------
# arms


@dataclass(frozen=True)
class Variant:
    """A classifier variant.

    Attributes:
        name: short name used in arm ids.
        classifier: "linear" or "offset" (``build_classifier`` name).
        options: OffsetLearning options (class_offsets, feature_offsets, logit_norm), spelled out.
        label: what the table prints.
        paper: False for our own variants (marked "not the paper's").
    """

    name: str
    classifier: str
    options: dict = field(default_factory=dict)
    label: str = ""
    paper: bool = True


def _ol(class_offsets: bool = True, feature_offsets: bool = True, logit_norm: str = "layernorm") -> dict:
    return {"class_offsets": class_offsets, "feature_offsets": feature_offsets, "logit_norm": logit_norm}


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("linear", "linear", {}, "per-pixel 1x1 conv (baseline)"),
        Variant("offset", "offset", _ol(), "Offset Learning (paper)"),
        Variant("offset-co", "offset", _ol(feature_offsets=False), "class offsets only (paper ablation)"),
        Variant("offset-fo", "offset", _ol(class_offsets=False), "feature offsets only (paper ablation)"),
        Variant(
            "offset-scaled-ln",
            "offset",
            _ol(logit_norm="scaled_layernorm"),
            "OL + learnable logit scale after the LayerNorm (ours, not the paper's)",
            paper=False,
        ),
        Variant(
            "offset-noln",
            "offset",
            _ol(logit_norm="none"),
            "OL without the LayerNorm (ours, not the paper's)",
            paper=False,
        ),
    )
}


def format_style(style: float) -> str:
    """0.0 -> "0", 0.5 -> "0.5", 1.0 -> "1" (as in arm ids)."""
    return f"{style:g}"


@dataclass(frozen=True, order=True)
class Arm:
    """One classifier variant at one scene style."""

    variant: str
    style: float

    @property
    def id(self) -> str:
        """``variant@style``, e.g. ``offset-co@0.5``."""
        return f"{self.variant}@{format_style(self.style)}"

    @property
    def slug(self) -> str:
        """Folder name: ``offset-co_style0.5``."""
        return f"{self.variant}_style{format_style(self.style)}"

    @property
    def spec(self) -> Variant:
        return VARIANTS[self.variant]


MAIN_GRID = tuple(Arm(v, s) for s in MAIN_STYLES for v in ("linear", "offset"))
ABLATION_ARMS = tuple(Arm(v, ABLATION_STYLE) for v in ("offset-co", "offset-fo", "offset-scaled-ln"))
DEFAULT_GRID = MAIN_GRID + ABLATION_ARMS
ALL_ARMS = DEFAULT_GRID + (Arm("offset-noln", ABLATION_STYLE),)
ARM_GROUPS = {"grid": DEFAULT_GRID, "main": MAIN_GRID, "ablation": ABLATION_ARMS, "all": ALL_ARMS}


def parse_arms(specs: Iterable[str] | None) -> list[Arm]:
    """Arms named on the command line, in order, without duplicates.

    Each spec is a group ("grid" = default, "main", "ablation", "all"), a variant name (its arms in
    "all": ``linear`` = the three styles, ``offset-co`` = style 0.5), or ``variant@style`` with any
    style in [0, 1].

    Raises:
        ConfigError: unknown group or variant, or a style that is not a number in [0, 1].
    """
    specs = list(specs or ["grid"])
    arms: list[Arm] = []
    for spec in specs:
        spec = spec.strip()
        if spec in ARM_GROUPS:
            found = list(ARM_GROUPS[spec])
        elif "@" in spec:
            name, _, raw = spec.partition("@")
            _check_variant(name)
            try:
                style = float(raw)
            except ValueError:
                style = float("nan")
            if not 0.0 <= style <= 1.0:
                raise ConfigError(f"Arm {spec!r}: the style after '@' must be a number in [0, 1], e.g. {name}@0.5.")
            found = [Arm(name, style)]
        else:
            _check_variant(spec)
            found = [a for a in ALL_ARMS if a.variant == spec]
        arms.extend(a for a in found if a not in arms)
    return arms


def _check_variant(name: str) -> None:
    if name not in VARIANTS:
        raise ConfigError(
            f"Unknown experiment arm {name!r}. Use a variant ({', '.join(VARIANTS)}), optionally with a "
            f"style as variant@0.5, or a group ({', '.join(ARM_GROUPS)})."
        )


# ----------------------------------------------------------------------------------------------
# budget and per-run config


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
    """The base config file: ``path`` if it exists, else (for the default) the repository's copy."""
    candidate = Path(path or DEFAULT_CONFIG)
    if candidate.is_file():
        return candidate
    if path is None or str(path) == DEFAULT_CONFIG:
        repo_copy = Path(__file__).resolve().parents[2] / DEFAULT_CONFIG
        if repo_copy.is_file():
            return repo_copy
    raise ConfigError(
        f"Experiment config {candidate} does not exist; pass --config with the CPU default recipe "
        f"({DEFAULT_CONFIG} in the repository)."
    )


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
    from offseg_vis.engine.config import load_config

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
    from offseg_vis.data.fashion_scenes import FashionScenesConfig

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
        "config": generator_options(base_gen, budget.size, arm.style, seed),
    }
    d.val_options = {
        **{k: v for k, v in d.val_options.items() if k != "config"},
        "length": budget.val_scenes,
        "config": generator_options(base_gen, budget.size, arm.style, VAL_GENERATOR_SEED),
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


# ----------------------------------------------------------------------------------------------
# results file


def run_key(arm_id: str, seed: int, budget: dict | Budget) -> str:
    """Identity of a run in the results file."""
    b = budget.to_dict() if isinstance(budget, Budget) else budget
    return json.dumps([arm_id, int(seed), b], sort_keys=True)


def read_results(path: str | os.PathLike) -> list[dict]:
    """Every complete record of a results file (missing file: none).

    A line that is not a JSON object (e.g. a hand edit gone wrong) is skipped with a warning that
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
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not {"arm", "seed", "budget"} <= set(record):
            warnings.warn(f"{path}:{number} is not an experiment record; it is ignored.", stacklevel=2)
            continue
        records.append(record)
    return records


def done_keys(records: Iterable[dict]) -> set[str]:
    """Run keys of the records."""
    return {run_key(r["arm"], r["seed"], r["budget"]) for r in records}


@contextlib.contextmanager
def _locked(path: Path):
    """Exclusive lock on ``path``'s folder where the platform has fcntl (two sittings at once stay safe).

    Locking the folder itself (flock works on a directory) leaves no lock file beside the results.
    """
    try:
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


def append_result(path: str | os.PathLike, record: dict) -> None:
    """Add ``record`` as one JSON line.

    The file is rewritten to a temporary file and renamed into place, so a reader or a crash sees
    the old file or the new one, never a partial line; a missing final newline is repaired.
    """
    from offseg_vis.models.weights import atomic_write_text

    path = Path(path)
    line = json.dumps(_clean(record), allow_nan=False)  # key order kept: per-class IoU in class order
    with _locked(path):
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        atomic_write_text(path, old + line + "\n")


# ----------------------------------------------------------------------------------------------
# running


def _machine(threads: int | None) -> dict:
    from offseg_vis.bench.timing import environment

    env = environment()
    if threads:
        env["threads"] = int(threads)
    return env


def _read_clock(run_dir: Path) -> dict | None:
    try:
        clock = json.loads((run_dir / CLOCK_FILE).read_text())
        return clock if isinstance(clock, dict) else None
    except (OSError, ValueError):
        return None


def _logit_scale(model) -> float | None:
    from offseg_vis.models.offset_learning import OffsetLearning

    for module in model.modules():
        if isinstance(module, OffsetLearning) and module.logit_scale is not None:
            return float(module.logit_scale.detach())
    return None


def _evaluate(cfg, model):
    """Val metrics of ``model`` (used when a resumed run had already finished training)."""
    from offseg_vis.engine.evaluate import evaluate
    from offseg_vis.engine.train import build_datasets

    _, val_raw, val_transform, classes, _ = build_datasets(cfg)
    t = cfg.test
    return evaluate(
        model,
        val_raw,
        mode=t.mode,
        crop=t.crop_size,
        stride=t.stride,
        batch_size=t.batch_size,
        class_names=classes or None,
        transform=val_transform,
    )


def run_one(
    base,
    arm: Arm,
    seed: int,
    budget: Budget,
    work_root: str | os.PathLike = DEFAULT_WORK_DIR,
    keep_checkpoints: bool = False,
    callbacks: Sequence[Callable[..., None]] = (),
) -> dict:
    """Train and evaluate one arm at one seed; return its record (not yet written).

    An earlier, interrupted attempt in the same run folder is resumed from its last checkpoint. The
    wall time counts the training and final evaluation of every attempt up to its last checkpoint.

    Args:
        base: the base Config (from :func:`load_base`).
        keep_checkpoints: keep ``last`` weights and the optimiser state (by default only the
            ``best`` weights + card stay, enough for the misalignment analysis).
        callbacks: passed on to ``train`` (``cb(step=..., loss=..., lr=..., model=...)``).
    """
    import torch

    from offseg_vis.data.fashion_scenes import GENERATOR_VERSION
    from offseg_vis.engine.checkpoint import checkpoint_weights, git_commit, state_path
    from offseg_vis.engine.train import train
    from offseg_vis.models.weights import read_metadata
    from offseg_vis.models.zoo import build_model

    cfg = run_config(base, arm, seed, budget)
    run_dir = run_dir_for(work_root, arm, seed, budget)
    resume = state_path(run_dir, "last").is_file()
    elapsed_before = 0.0
    if resume:
        clock = _read_clock(run_dir) or {}
        saved_step = int(read_metadata(checkpoint_weights(run_dir, "last")).get("step", 0))
        if clock.get("step"):  # scale to the checkpoint's step (a crash may fall between the two writes)
            elapsed_before = float(clock["elapsed_s"]) * saved_step / int(clock["step"])
    else:
        cfg.runtime.overwrite = True  # leftovers of an attempt that never reached a checkpoint
        (run_dir / CLOCK_FILE).unlink(missing_ok=True)

    m = cfg.model
    torch.manual_seed(int(seed))  # same decoder initialisation for every arm at this seed
    model = build_model(
        m.name,
        num_classes=m.num_classes,
        classifier=m.classifier,
        pretrained=m.pretrained,
        backbone_pretrained=m.backbone_pretrained,
        classifier_options=dict(m.classifier_options) or None,
        **m.options,
    )
    ckpt_every = cfg.schedule.checkpoint_interval
    start = time.perf_counter()

    def clock(step: int, **_: Any) -> None:
        # after train() wrote the step's checkpoint: remember how long the run took up to it
        if step == budget.iters or (ckpt_every > 0 and step % ckpt_every == 0):
            from offseg_vis.models.weights import atomic_write_text

            spent = elapsed_before + time.perf_counter() - start
            atomic_write_text(run_dir / CLOCK_FILE, json.dumps({"step": step, "elapsed_s": spent}))

    result = train(cfg, resume=resume, work_dir=run_dir, model=model, callbacks=[clock, *callbacks])
    metrics = result.final_metrics or _evaluate(cfg, model)
    wall = elapsed_before + time.perf_counter() - start
    summary = metrics.to_dict()
    tail = [loss for _, loss in result.losses[-max(1, len(result.losses) // 10) :]]
    record = {
        "arm": arm.id,
        "variant": arm.variant,
        "style": arm.style,
        "seed": int(seed),
        "classifier": arm.spec.classifier,
        "classifier_options": dict(arm.spec.options),
        "paper": arm.spec.paper,
        "model": m.name,
        "budget": budget.to_dict(),
        "budget_key": budget.key(),
        "steps": int(result.steps),
        "val": {
            "scenes": budget.val_scenes,
            "mIoU": summary["mIoU"],
            "aAcc": summary["aAcc"],
            "mAcc": summary["mAcc"],
            "per_class_IoU": {name: v["IoU"] for name, v in summary["per_class"].items()},
        },
        "train_loss_final": statistics.fmean(tail) if tail else None,
        "logit_scale": _logit_scale(model),
        "params": sum(p.numel() for p in model.parameters()),
        "wall_time_s": round(wall, 2),
        "resumed": resume,
        "machine": _machine(cfg.runtime.num_threads),
        "git_commit": git_commit(),
        "generator_version": GENERATOR_VERSION,
        "run_dir": str(run_dir.relative_to(work_root)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if not keep_checkpoints:
        state_path(run_dir, "last").unlink(missing_ok=True)
        if result.best_checkpoint is not None:  # "last" duplicates "best" when evaluating only at the end
            checkpoint_weights(run_dir, "last").unlink(missing_ok=True)
            checkpoint_weights(run_dir, "last").with_suffix(".json").unlink(missing_ok=True)
    return record


def plan(arms: Sequence[Arm], seeds: Sequence[int]) -> list[tuple[Arm, int]]:
    """Run order: seed-major, so a partial grid already holds complete paired seeds."""
    return [(arm, int(seed)) for seed in seeds for arm in arms]


def run_grid(
    base,
    budget: Budget,
    arms: Sequence[Arm],
    seeds: Sequence[int],
    results: str | os.PathLike = DEFAULT_RESULTS,
    work_root: str | os.PathLike = DEFAULT_WORK_DIR,
    keep_checkpoints: bool = False,
    callbacks: Sequence[Callable[..., None]] = (),
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run every (arm, seed) not yet in ``results`` and append each record as it finishes.

    The results file is re-read before each run, so two sittings can share it. Interrupting
    (Ctrl-C) loses at most the steps since the run's last checkpoint.

    Returns:
        The records written by this call.
    """
    todo = plan(arms, seeds)
    written = []
    for number, (arm, seed) in enumerate(todo, 1):
        tag = f"[{number}/{len(todo)}] {arm.id} seed {seed}"
        if run_key(arm.id, seed, budget) in done_keys(read_results(results)):
            log(f"{tag}: already in {results}, skipped")
            continue
        log(f"{tag}: {budget.describe()}")
        record = run_one(base, arm, seed, budget, work_root, keep_checkpoints, callbacks)
        append_result(results, record)
        written.append(record)
        log(
            f"{tag}: val mIoU {100 * (record['val']['mIoU'] or 0):.2f}, aAcc "
            f"{100 * (record['val']['aAcc'] or 0):.2f}, {record['wall_time_s'] / 60:.1f} min -> {results}"
        )
    return written


def status(
    budget: Budget, arms: Sequence[Arm], seeds: Sequence[int], results: str | os.PathLike, work_root
) -> list[tuple[str, int, str]]:
    """(arm id, seed, "done" | "partial (step N)" | "pending") for each planned run."""
    from offseg_vis.engine.checkpoint import checkpoint_weights, state_path
    from offseg_vis.models.weights import read_metadata

    done = done_keys(read_results(results))
    rows = []
    for arm, seed in plan(arms, seeds):
        run_dir = run_dir_for(work_root, arm, seed, budget)
        if run_key(arm.id, seed, budget) in done:
            state = "done"
        elif state_path(run_dir, "last").is_file():
            try:
                step = read_metadata(checkpoint_weights(run_dir, "last")).get("step")
            except Exception:  # a damaged checkpoint is reported, not fatal for a listing
                step = "?"
            state = f"partial (step {step})"
        else:
            state = "pending"
        rows.append((arm.id, seed, state))
    return rows


# ----------------------------------------------------------------------------------------------
# the table


@dataclass
class ArmSummary:
    """One table row: an arm's runs under one budget. Fractions in [0, 1]; std is the sample std.

    Attributes:
        delta_mean, delta_std, n_pairs: arm minus ``linear`` at the same style, per shared seed.
    """

    arm: str
    variant: str
    style: float
    seeds: list[int]
    miou_mean: float
    miou_std: float
    aacc_mean: float
    delta_mean: float | None
    delta_std: float | None
    n_pairs: int
    params: int | None
    wall_mean_s: float
    loss_mean: float | None

    @property
    def n(self) -> int:
        return len(self.seeds)


@dataclass
class BudgetSummary:
    """All rows of one budget, plus where the numbers came from."""

    budget: dict
    rows: list[ArmSummary]
    machines: list[str]
    commits: list[str]


def _finite(xs: Iterable[float | None]) -> list[float]:
    return [float(x) for x in xs if x is not None and math.isfinite(x)]


def _mean(xs: Iterable[float | None]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    xs = _finite(xs)
    return statistics.fmean(xs) if xs else math.nan


def _std(xs: Iterable[float | None]) -> float:
    """Sample standard deviation of the finite values (NaN for fewer than two)."""
    xs = _finite(xs)
    return statistics.stdev(xs) if len(xs) > 1 else math.nan


def _arm_order(record: dict) -> tuple:
    variants = list(VARIANTS)
    v = record["variant"] if record.get("variant") in variants else None
    return (float(record["style"]), variants.index(v) if v else len(variants), record["arm"])


def summarise(records: Iterable[dict]) -> list[BudgetSummary]:
    """Group records by budget, then by arm; compute means, stds and paired differences vs linear.

    A duplicate run (same arm, seed, budget) counts once (the first line wins). Records without a
    val mIoU are left out.
    """
    groups: dict[str, dict[str, dict[int, dict]]] = {}
    budgets: dict[str, dict] = {}
    for r in records:
        if r.get("val", {}).get("mIoU") is None:
            continue
        bkey = json.dumps(r["budget"], sort_keys=True)
        budgets.setdefault(bkey, r["budget"])
        groups.setdefault(bkey, {}).setdefault(r["arm"], {}).setdefault(int(r["seed"]), r)
    out = []
    for bkey, arms in groups.items():
        rows = []
        for arm_id, by_seed in sorted(arms.items(), key=lambda kv: _arm_order(next(iter(kv[1].values())))):
            first = next(iter(by_seed.values()))
            style = float(first["style"])
            baseline = arms.get(f"linear@{format_style(style)}", {})
            seeds = sorted(by_seed)
            mious = [by_seed[s]["val"]["mIoU"] for s in seeds]
            deltas = None
            if first.get("variant") != "linear":
                deltas = [by_seed[s]["val"]["mIoU"] - baseline[s]["val"]["mIoU"] for s in seeds if s in baseline]
            losses = [by_seed[s]["train_loss_final"] for s in seeds if by_seed[s].get("train_loss_final") is not None]
            rows.append(
                ArmSummary(
                    arm=arm_id,
                    variant=first.get("variant", arm_id.split("@")[0]),
                    style=style,
                    seeds=seeds,
                    miou_mean=_mean(mious),
                    miou_std=_std(mious),
                    aacc_mean=_mean([by_seed[s]["val"].get("aAcc") for s in seeds]),
                    delta_mean=_mean(deltas) if deltas else None,
                    delta_std=_std(deltas) if deltas else None,
                    n_pairs=len(deltas or []),
                    params=first.get("params"),
                    wall_mean_s=_mean([by_seed[s].get("wall_time_s") for s in seeds]),
                    loss_mean=_mean(losses) if losses else None,
                )
            )
        all_runs = [r for by_seed in arms.values() for r in by_seed.values()]
        machines = sorted(
            {
                f"{r['machine'].get('cpu')}, {r['machine'].get('threads')} threads, torch {r['machine'].get('torch')}"
                for r in all_runs
                if r.get("machine")
            }
        )
        commits = sorted({(r.get("git_commit") or "unknown")[:10] for r in all_runs})
        out.append(BudgetSummary(budgets[bkey], rows, machines, commits))
    return out


def _pm(mean: float, std: float, scale: float = 100.0, signed: bool = False) -> str:
    sign = "+" if signed else ""
    m = f"{scale * mean:{sign}.2f}"
    return f"{m} ± {scale * std:.2f}" if math.isfinite(std) else f"{m} ± n/a"


def _label(variant: str) -> str:
    spec = VARIANTS.get(variant)
    return spec.label if spec else variant


def grid_command(budget: dict, arms: Sequence[str], seeds: Sequence[int], results: str) -> str:
    """The ``offseg bench experiment`` command that produces (or completes) this budget's runs."""
    b = Budget.from_dict(budget)
    args = ["offseg", "bench", "experiment"]
    if sorted(arms) != sorted(a.id for a in DEFAULT_GRID):
        args += ["--arms", *arms]
    args += ["--seeds", *map(str, seeds), "--iters", str(b.iters), "--batch-size", str(b.batch_size)]
    args += ["--size", str(b.size), "--val-scenes", str(b.val_scenes), "--train-scenes", str(b.train_scenes)]
    if b.config != Path(DEFAULT_CONFIG).stem:
        args += ["--config", f"configs/{b.config}.yaml"]
    if results != DEFAULT_RESULTS:
        args += ["--results", results]
    args += list(b.overrides)
    return shlex.join(args)


def format_table(summary: BudgetSummary) -> str:
    """The Markdown table of one budget (val mIoU and differences in %, i.e. IoU points)."""
    lines = [
        "| arm | classifier | seeds | val mIoU % (mean ± std) | Δ mIoU vs linear, paired (points) "
        "| val aAcc % | final train loss | params | wall time / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary.rows:
        if row.variant == "linear":
            delta = "—"
        elif row.delta_mean is None:
            delta = "no paired linear run"
        else:
            delta = f"{_pm(row.delta_mean, row.delta_std or float('nan'), signed=True)} (n={row.n_pairs})"
        loss = f"{row.loss_mean:.4f}" if row.loss_mean is not None else "n/a"
        params = f"{row.params / 1e6:.3f} M" if row.params else "n/a"
        lines.append(
            f"| `{row.arm}` | {_label(row.variant)} | {row.n} ({', '.join(map(str, row.seeds))}) "
            f"| {_pm(row.miou_mean, row.miou_std)} | {delta} | {100 * row.aacc_mean:.2f} | {loss} "
            f"| {params} | {row.wall_mean_s / 60:.1f} min |"
        )
    return "\n".join(lines)


def format_doc(summaries: Sequence[BudgetSummary], results: str = DEFAULT_RESULTS) -> str:
    """The whole ``docs/experiment.md`` page: one section per budget found in the results file."""
    parts = [
        "# The offset-vs-per-pixel experiment",
        "",
        f"Generated by `offseg bench experiment --table` from `{results}`; regenerate it, do not edit it.",
        "",
        "Each run trains the CPU default model (OffSeg-MBV2) on FashionScenes with one classifier and "
        "evaluates it on val scenes of the same style. The seed fixes the training scene stream, data order, "
        "augmentation and initialisation, identical for every arm; the val set is fixed per style. "
        "Style 0 = no per-scene appearance shift, 1 = the strongest. mIoU and its differences are in "
        "percent (IoU points); ± is the sample standard deviation over seeds; Δ is the arm minus `linear` "
        'at the same style and seed, over the seeds both have. Arms marked "not the paper\'s" are our own '
        "variants.",
        "",
    ]
    if not summaries:
        parts += ["No finished runs yet. Run the grid:", "", "```", "offseg bench experiment", "```", ""]
    for s in summaries:
        b = Budget.from_dict(s.budget)
        arms = [r.arm for r in s.rows]
        seeds = sorted({seed for r in s.rows for seed in r.seeds})
        parts += [
            f"## Budget {b.key()}",
            "",
            b.describe() + ".",
            "",
            "```",
            grid_command(s.budget, arms, seeds, results),
            f"offseg bench experiment --table{'' if results == DEFAULT_RESULTS else ' --results ' + results}",
            "```",
            "",
            format_table(s),
            "",
            f"Machine: {'; '.join(s.machines) or 'n/a'}. Git commit: {', '.join(s.commits)}.",
            "",
        ]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# command line


class _ListThenOverrides(argparse.Action):
    """``nargs="+"`` option whose ``key=value`` tokens go to the overrides (so overrides may follow it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = [v for v in values if "=" not in v]
        if not items:
            parser.error(f"{option_string} needs at least one value")
        setattr(namespace, self.dest, items)
        namespace.extra_overrides = [*getattr(namespace, "extra_overrides", []), *(v for v in values if "=" in v)]


def register_experiment(bsub: argparse._SubParsersAction) -> None:
    """Add ``experiment`` to the ``offseg bench`` sub-commands."""
    p = bsub.add_parser(
        "experiment",
        help="offset vs per-pixel classifier on FashionScenes: run any part of the grid, or --table",
        description="Train and evaluate classifier arms (variant@style) x seeds under one budget, appending a "
        "JSON line per finished run to the results file and skipping runs already there; an interrupted "
        "run resumes. --table writes the Markdown summary instead. Overrides (key=value) change the base "
        "config for every arm.",
    )
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the base config")
    p.add_argument(
        "--arms",
        nargs="+",
        action=_ListThenOverrides,
        default=["grid"],
        help="variant@style (e.g. offset@1, offset-co@0.5), a variant (all its grid styles) or a group: "
        f"grid (default), main, ablation, all. Variants: {', '.join(VARIANTS)}",
    )
    p.add_argument("--seeds", nargs="+", action=_ListThenOverrides, default=["0", "1", "2"])
    p.add_argument("--iters", type=int, default=DEFAULT_ITERS, help=f"steps per run (default {DEFAULT_ITERS})")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: the config's)")
    p.add_argument("--size", type=int, default=None, help="scene and crop side in px (default: the config's)")
    p.add_argument("--val-scenes", type=int, default=None, help="val scenes per style (default: the config's)")
    p.add_argument("--train-scenes", type=int, default=None, help="training scenes per epoch (default: config)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"base config (default {DEFAULT_CONFIG})")
    p.add_argument("--results", default=DEFAULT_RESULTS, help=f"results file (default {DEFAULT_RESULTS})")
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help=f"run folders (default {DEFAULT_WORK_DIR})")
    p.add_argument(
        "--keep-checkpoints", action="store_true", help="keep last weights and optimiser state of finished runs"
    )
    p.add_argument("--list", action="store_true", help="show each planned run as done, partial or pending")
    p.add_argument("--table", action="store_true", help="write the Markdown table of the results file; run nothing")
    p.add_argument("--doc", default=DEFAULT_DOC, help=f"where --table writes the page (default {DEFAULT_DOC})")
    p.set_defaults(func=experiment_command, extra_overrides=[])


def _seeds(values: Sequence[str]) -> list[int]:
    try:
        seeds = [int(v) for v in values]
    except ValueError as err:
        raise ConfigError(f"--seeds takes non-negative integers, e.g. --seeds 0 1 2 ({err}).") from err
    if any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds takes non-negative integers, got {seeds}.")
    return list(dict.fromkeys(seeds))


def experiment_command(args: argparse.Namespace) -> int:
    """Entry point of ``offseg bench experiment``."""
    if args.table:
        from offseg_vis.models.weights import atomic_write_text

        text = format_doc(summarise(read_results(args.results)), args.results)
        print(text)
        if args.doc:
            atomic_write_text(args.doc, text)
            print(f"written to {args.doc}", file=sys.stderr)
        return 0
    overrides = [*args.overrides, *args.extra_overrides]
    arms = parse_arms(args.arms)
    seeds = _seeds(args.seeds)
    base, budget = load_base(
        args.config, overrides, args.iters, args.batch_size, args.size, args.val_scenes, args.train_scenes
    )
    if args.list:
        print(f"budget {budget.key()}: {budget.describe()}")
        for arm_id, seed, state in status(budget, arms, seeds, args.results, args.work_dir):
            print(f"  {arm_id:<22} seed {seed}: {state}")
        return 0
    run_grid(base, budget, arms, seeds, args.results, args.work_dir, args.keep_checkpoints)
    return 0
