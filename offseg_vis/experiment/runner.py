"""Running the grid: one run = one arm x one seed under a budget, resumable, appended when done."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from offseg_vis.data.fashion_scenes import GENERATOR_VERSION
from offseg_vis.engine.checkpoint import checkpoint_weights, git_commit, state_path
from offseg_vis.engine.evaluate import SegMetrics
from offseg_vis.engine.run import datasets_for, evaluate_split
from offseg_vis.engine.runtime import environment
from offseg_vis.engine.train import TrainResult, model_from_config, train
from offseg_vis.experiment.arms import Arm
from offseg_vis.experiment.budget import DEFAULT_RESULTS, DEFAULT_WORK_DIR, Budget, run_config, run_dir_for
from offseg_vis.experiment.record import RunRecord, ValScores
from offseg_vis.experiment.results import append_result, done_keys, read_results, run_key
from offseg_vis.models.offset_learning import OffsetLearning
from offseg_vis.models.weights import atomic_write_text, read_metadata

CLOCK_FILE = "experiment_clock.json"  # per run folder: wall time spent up to the last checkpoint


def _machine(threads: int | None) -> dict:
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
    for module in model.modules():
        if isinstance(module, OffsetLearning) and module.logit_scale is not None:
            return float(module.logit_scale.detach())
    return None


def _evaluate(cfg, model):
    """Val metrics of ``model`` (used when a resumed run had already finished training)."""
    # as the trainer's final evaluation: the whole val split (the budget sets test.max_images=None)
    return evaluate_split(model, datasets_for(cfg, "val"), cfg.test)


def run_one(
    base,
    arm: Arm,
    seed: int,
    budget: Budget,
    work_root: str | os.PathLike = DEFAULT_WORK_DIR,
    keep_checkpoints: bool = False,
    callbacks: Sequence[Callable[..., None]] = (),
) -> RunRecord:
    """Train and evaluate one arm at one seed; return its record (not yet written).

    An earlier, interrupted attempt in the same run folder is resumed from its last checkpoint. The
    wall time counts the training and final evaluation of every attempt up to its last checkpoint.

    Args:
        base: the base Config (from :func:`load_base`).
        keep_checkpoints: keep ``last`` weights and the optimiser state (by default only the
            ``best`` weights + card stay, enough for the misalignment analysis).
        callbacks: passed on to ``train`` (``cb(step=..., loss=..., lr=..., model=...)``).
    """
    cfg = run_config(base, arm, seed, budget)
    run_dir = run_dir_for(work_root, arm, seed, budget)
    resume = state_path(run_dir, "last").is_file()
    if resume:
        elapsed_before = _time_before(run_dir)
    else:
        elapsed_before = 0.0
        cfg.runtime.overwrite = True  # leftovers of an attempt that never reached a checkpoint
        (run_dir / CLOCK_FILE).unlink(missing_ok=True)

    torch.manual_seed(int(seed))  # same decoder initialisation for every arm at this seed
    model = model_from_config(cfg)
    ckpt_every = cfg.schedule.checkpoint_interval
    start = time.perf_counter()

    def clock(step: int, **_: Any) -> None:
        # after train() wrote the step's checkpoint: remember how long the run took up to it
        if step == budget.iters or (ckpt_every > 0 and step % ckpt_every == 0):
            spent = elapsed_before + time.perf_counter() - start
            atomic_write_text(run_dir / CLOCK_FILE, json.dumps({"step": step, "elapsed_s": spent}))

    result = train(cfg, resume=resume, work_dir=run_dir, model=model, callbacks=[clock, *callbacks])
    metrics = result.final_metrics or _evaluate(cfg, model)
    wall = elapsed_before + time.perf_counter() - start
    record = _record(cfg, arm, seed, budget, result, metrics, model)
    record.wall_time_s = round(wall, 2)
    record.resumed = resume
    record.run_dir = str(run_dir.relative_to(work_root))
    if not keep_checkpoints:
        state_path(run_dir, "last").unlink(missing_ok=True)
        if result.best_checkpoint is not None:  # "last" duplicates "best" when evaluating only at the end
            checkpoint_weights(run_dir, "last").unlink(missing_ok=True)
            checkpoint_weights(run_dir, "last").with_suffix(".json").unlink(missing_ok=True)
    return record


def _time_before(run_dir: Path) -> float:
    """Wall time of the earlier attempts, up to the step of the ``last`` checkpoint."""
    clock = _read_clock(run_dir) or {}
    saved_step = int(read_metadata(checkpoint_weights(run_dir, "last")).get("step", 0))
    if clock.get("step"):  # scale to the checkpoint's step (a crash may fall between the two writes)
        return float(clock["elapsed_s"]) * saved_step / int(clock["step"])
    return 0.0


def _record(cfg, arm: Arm, seed: int, budget: Budget, result: TrainResult, metrics: SegMetrics, model) -> RunRecord:
    """The run's record; wall time, resumed and run folder are filled in by the caller."""
    summary = metrics.to_dict()
    tail = [loss for _, loss in result.losses[-max(1, len(result.losses) // 10) :]]
    return RunRecord(
        arm=arm.id,
        variant=arm.variant,
        style=arm.style,
        scene=arm.scene,
        scene_options=arm.scene_options,
        seed=int(seed),
        classifier=arm.spec.classifier,
        classifier_options=dict(arm.spec.options),
        paper=arm.spec.paper,
        model=cfg.model.name,
        budget=budget,
        budget_key=budget.key(),
        steps=int(result.steps),
        val=ValScores(
            scenes=budget.val_scenes,
            mIoU=summary["mIoU"],
            aAcc=summary["aAcc"],
            mAcc=summary["mAcc"],
            per_class_IoU={name: v["IoU"] for name, v in summary["per_class"].items()},
        ),
        train_loss_final=statistics.fmean(tail) if tail else None,
        logit_scale=_logit_scale(model),
        params=sum(p.numel() for p in model.parameters()),
        wall_time_s=0.0,
        resumed=False,
        machine=_machine(cfg.runtime.num_threads),
        git_commit=git_commit(),
        generator_version=GENERATOR_VERSION,
        run_dir="",
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


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
) -> list[RunRecord]:
    """Run every (arm, seed) not yet in ``results`` and append each record as it finishes.

    The results file is re-read before each run, so two sittings can share it. Interrupting
    (Ctrl-C) loses at most the steps since the run's last checkpoint.

    Returns:
        The records written by this call.
    """
    todo = plan(arms, seeds)
    code = (git_commit(), GENERATOR_VERSION)
    written = []
    for number, (arm, seed) in enumerate(todo, 1):
        tag = f"[{number}/{len(todo)}] {arm.id} seed {seed}"
        if run_key(arm.id, seed, budget, *code) in done_keys(read_results(results)):
            log(f"{tag}: already in {results}, skipped")
            continue
        log(f"{tag}: {budget.describe()}")
        record = run_one(base, arm, seed, budget, work_root, keep_checkpoints, callbacks)
        append_result(results, record)
        written.append(record)
        log(
            f"{tag}: val mIoU {100 * (record.val.mIoU or 0):.2f}, aAcc "
            f"{100 * (record.val.aAcc or 0):.2f}, {record.wall_time_s / 60:.1f} min -> {results}"
        )
    return written


def status(
    budget: Budget, arms: Sequence[Arm], seeds: Sequence[int], results: str | os.PathLike, work_root
) -> list[tuple[str, int, str]]:
    """(arm id, seed, "done" | "partial (step N)" | "pending") for each planned run."""
    done = done_keys(read_results(results))
    code = (git_commit(), GENERATOR_VERSION)
    rows = []
    for arm, seed in plan(arms, seeds):
        run_dir = run_dir_for(work_root, arm, seed, budget)
        if run_key(arm.id, seed, budget, *code) in done:
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
