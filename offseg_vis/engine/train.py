"""The training loop: one process or many (torchrun), CPU or CUDA, resumable, with periodic evaluation.

``train(config)`` runs a whole schedule and returns a :class:`TrainResult`. Under
``torchrun --nproc_per_node N -m offseg_vis.cli train ...`` each process runs the same function: it
joins the process group (nccl on GPU, gloo on CPU), reads its shard of every global batch, and only
rank 0 writes logs and checkpoints.

The run is a :class:`Trainer` whose steps are named methods, called in this order by
:meth:`Trainer.run`: run folder, seeds, data (:func:`~offseg_vis.engine.run.datasets_for`), model and
optimiser, resume, DDP, start log, then the loop (one optimiser step, its log line, evaluation,
checkpoint, callbacks) and the result.

Recipe (spec §3.2): AdamW with the head at lr x ``head_lr_mult`` and no decay on norms, linear
warm-up, poly decay (:mod:`~offseg_vis.engine.optim`). Samplers: :mod:`~offseg_vis.engine.loading`;
devices, process group, AMP, logs: :mod:`~offseg_vis.engine.runtime`.

Exact resume: the data order is a pure function of (seed, epoch), the augmentation of sample i a
pure function of (seed, epoch, i), and the optimiser, scheduler, scaler and RNG states are saved, so
a resumed run continues bit for bit where the last checkpoint left it.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from offseg_vis.engine.checkpoint import (
    checkpoint_weights,
    git_commit,
    load_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    state_path,
)
from offseg_vis.engine.config import Config, as_pair, save_config
from offseg_vis.engine.evaluate import SegMetrics, evaluate
from offseg_vis.engine.loading import EpochIndexedDataset, ResumableDistributedSampler, batch_names
from offseg_vis.engine.optim import build_optimizer, build_scheduler
from offseg_vis.engine.run import DataSplit, datasets_for
from offseg_vis.engine.runtime import DistInfo, RunLogger, amp_setup, mean_across, setup_distributed
from offseg_vis.errors import ConfigError, OffSegError
from offseg_vis.models import build_model
from offseg_vis.models.weights import describe_model, load_weights

Callback = Callable[..., None]


class NonFiniteLossError(OffSegError):
    """The training loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


@dataclass
class TrainResult:
    """What a finished run produced.

    Attributes:
        work_dir: the run folder (None when nothing was written, i.e. on ranks > 0).
        checkpoint: best weights by mIoU (the last ones when no evaluation ran).
        last_checkpoint, best_checkpoint: both weights files.
        steps: optimiser steps done.
        losses: (step, loss) of every step of this process (resumed runs include the saved history).
        evals: one dict per evaluation: step, mIoU, aAcc, mAcc.
        best_miou: best evaluated mIoU (NaN without evaluation).
        final_metrics: metrics of the last evaluation.
        images_per_second: training throughput of the whole job (all processes).
    """

    work_dir: Path | None
    checkpoint: Path | None
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    steps: int
    losses: list[tuple[int, float]]
    evals: list[dict[str, Any]]
    best_miou: float
    final_metrics: SegMetrics | None
    images_per_second: float

    @property
    def history(self) -> dict[str, list]:
        """{"step", "loss"} per step and {"eval_step", "mIoU"} per evaluation, ready to plot."""
        return {
            "step": [s for s, _ in self.losses],
            "loss": [v for _, v in self.losses],
            "eval_step": [e["step"] for e in self.evals],
            "mIoU": [e["mIoU"] for e in self.evals],
        }


@dataclass
class Progress:
    """Where the run is: what a ``last`` checkpoint saves and a resume restores (besides the
    model, optimiser, scheduler, scaler and RNG states)."""

    step: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    best_miou: float = float("nan")

    def to_state(self) -> dict[str, Any]:
        """The entries of the training state file (without ``step``, which the card holds too)."""
        return {"losses": [list(x) for x in self.losses], "evals": self.evals, "best_miou": self.best_miou}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        """Inverse of :meth:`to_state` plus the saved ``step``."""
        return cls(
            step=int(state["step"]),
            losses=[tuple(x) for x in state.get("losses", [])],
            evals=list(state.get("evals", [])),
            best_miou=float(state.get("best_miou", float("nan"))),
        )


@dataclass
class _Window:
    """Losses and time since the last train log line, and since the job started."""

    loss: float = 0.0
    n: int = 0
    start: float = field(default_factory=time.perf_counter)
    job_start: float = field(default_factory=time.perf_counter)
    steps_here: int = 0  # optimiser steps of this process's attempt (not the resumed ones)


def resolve_work_dir(config: Config, work_dir: str | os.PathLike | None) -> Path:
    """The run folder: ``work_dir``, else ``config.runtime.work_dir``, else ``runs/<name>``."""
    if work_dir is not None:
        return Path(work_dir)
    if config.runtime.work_dir:
        return Path(config.runtime.work_dir)
    return Path("runs") / config.name


def model_from_config(config: Config) -> nn.Module:
    """The model a config describes (``config.model``), freshly built."""
    m = config.model
    return build_model(
        m.name,
        num_classes=m.num_classes,
        classifier=m.classifier,
        pretrained=m.pretrained,
        backbone_pretrained=m.backbone_pretrained,
        classifier_options=dict(m.classifier_options) or None,
        **m.options,
    )


def train(
    config: Config,
    *,
    resume: bool = False,
    work_dir: str | os.PathLike | None = None,
    model: nn.Module | None = None,
    train_dataset: Any = None,
    val_dataset: Any = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train a model as ``config`` says and return the history and checkpoint paths.

    Args:
        config: the resolved :class:`Config`.
        resume: continue the run in the work dir from its ``last`` checkpoint (exactly).
        work_dir: run folder (overrides ``config.runtime.work_dir``; default ``runs/<name>``).
        model: use this model instead of building ``config.model`` (its state is trained in place).
        train_dataset, val_dataset: raw datasets (items ``(image uint8 HxWx3, mask HxW, name)``)
            instead of building ``config.data``; the training transform is applied here.
        callbacks: called after every step as ``cb(step=..., loss=..., lr=..., model=...)``, after the
            step's checkpoint, if any, was written.

    Returns:
        :class:`TrainResult`.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept; the batch's
            file names are in the log).
        ConfigError, CheckpointError, DatasetError: bad settings, files or data.
    """
    info = setup_distributed(config.runtime.device)
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(config, info, resolve_work_dir(config, work_dir), resume, callbacks)
        return trainer.run(model, train_dataset, val_dataset)
    finally:
        torch.set_num_threads(threads)  # a notebook or test keeps its own setting
        if info.created_group and dist.is_initialized():
            dist.destroy_process_group()


class Trainer:
    """One training run in named steps; :meth:`run` calls them in order.

    Attributes set by the steps: ``logger``; ``train_split``, ``val_split`` (:class:`DataSplit`),
    ``train_ds`` (transformed), ``sampler``, ``iters_per_epoch``; ``model`` (what is called: DDP when
    distributed), ``raw_model`` (the bare module), ``optimizer``, ``scheduler``, ``scaler``,
    ``amp_dtype``; ``progress`` (:class:`Progress`); ``card`` (metadata every checkpoint carries).
    """

    def __init__(self, config: Config, info: DistInfo, run_dir: Path, resume: bool, callbacks: Sequence[Callback] = ()):
        if config.schedule.max_iters <= 0:
            raise ConfigError(f"schedule.max_iters must be positive, got {config.schedule.max_iters}.")
        self.config, self.info, self.run_dir, self.resume = config, info, run_dir, resume
        self.callbacks = list(callbacks)
        self.progress = Progress()
        self.final_metrics: SegMetrics | None = None

    def run(self, model: nn.Module | None = None, train_raw: Any = None, val_raw: Any = None) -> TrainResult:
        """Every step, in order (the order fixes the random draws, so it is part of exact resume)."""
        self.apply_runtime_settings()
        self.prepare_run_dir()
        self.logger = RunLogger(self.run_dir, self.info.is_main, self.config.runtime.tensorboard)
        self.seed_everything()
        self.build_data(train_raw, val_raw)
        self.build_model(model)
        rng_after_resume = self.restore() if self.resume else None
        self.wrap_distributed()
        if rng_after_resume is not None:
            set_rng_state(rng_after_resume)
        else:
            torch.manual_seed(self.config.runtime.seed + self.info.rank)  # per-rank dropout, drop path
        self.log_start()
        self.card = self.checkpoint_card()
        window = self.loop()
        return self.finish(window)

    # --- set-up -----------------------------------------------------------------------------------

    def apply_runtime_settings(self) -> None:
        """Threads and deterministic algorithms, as ``runtime`` says."""
        rt = self.config.runtime
        if rt.num_threads:
            torch.set_num_threads(int(rt.num_threads))
        if rt.deterministic:
            torch.use_deterministic_algorithms(True)

    def prepare_run_dir(self) -> None:
        """Refuse to overwrite a run (unless told), clear a fresh run's logs, save the config."""
        if not self.info.is_main:
            return
        run_dir, rt = self.run_dir, self.config.runtime
        if not self.resume and state_path(run_dir, "last").exists() and not rt.overwrite:
            raise ConfigError(
                f"{run_dir} already holds a run; pass --resume to continue it, choose another --work-dir, "
                f"or set runtime.overwrite=true to start over."
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        if not self.resume:
            for old in ("log.jsonl", "train.log"):
                (run_dir / old).unlink(missing_ok=True)
        save_config(self.config, run_dir / "config.yaml")

    def seed_everything(self) -> None:
        """The same initialisation on every rank (DDP also broadcasts rank 0's weights)."""
        seed = self.config.runtime.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def build_data(self, train_raw: Any, val_raw: Any) -> None:
        """Both splits (:func:`datasets_for`), the resumable sampler and the steps per epoch."""
        info, config = self.info, self.config
        # rank 0 first: it builds any on-disk cache (e.g. FashionScenes val) while the others wait
        if info.distributed and not info.is_main:
            dist.barrier()
        self.train_split: DataSplit = datasets_for(config, "train", raw=train_raw)
        self.val_split: DataSplit = datasets_for(config, "val", raw=val_raw)
        if info.distributed and info.is_main:
            dist.barrier()
        self.classes = self.train_split.classes or self.val_split.classes
        self.palette = self.train_split.palette or self.val_split.palette
        if self.classes and len(self.classes) != config.model.num_classes:
            raise ConfigError(
                f"The dataset {config.data.dataset!r} has {len(self.classes)} classes but model.num_classes "
                f"is {config.model.num_classes}; set model.num_classes={len(self.classes)}."
            )
        self.train_ds = self.train_split.transformed(seed=config.runtime.seed)
        self.sampler = ResumableDistributedSampler(self.train_ds, info.world_size, info.rank, seed=config.runtime.seed)
        batch = config.data.batch_size
        self.iters_per_epoch = len(self.sampler) // batch
        if self.iters_per_epoch == 0:
            raise ConfigError(
                f"The training set has {len(self.train_ds)} images, fewer than one global batch of "
                f"{batch * info.world_size}; lower data.batch_size or use more images."
            )

    def build_model(self, model: nn.Module | None) -> None:
        """The model on its device, the optimiser, the schedule and AMP."""
        rt = self.config.runtime
        if model is None:
            model = model_from_config(self.config)
        model = model.to(self.info.device)
        if rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = self.raw_model = model
        self.optimizer = build_optimizer(model, self.config.optim)
        self.scheduler = build_scheduler(self.optimizer, self.config.schedule)
        self.amp_dtype, self.use_scaler = amp_setup(rt.amp, self.info.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_scaler)
        self.identity = describe_model(model)
        self.identity["model"] = getattr(model, "model_name", None) or self.config.model.name

    def restore(self) -> Any:
        """Load the ``last`` checkpoint's weights and training state; return this rank's RNG state.

        The schedule's factors are not restored: this config's schedule wins (e.g. a longer
        ``max_iters``); only the scheduler's position (step count, last lrs) comes from the file.
        """
        state = load_training_state(self.run_dir, "last")
        load_weights(self.raw_model, checkpoint_weights(self.run_dir, "last"))
        self.optimizer.load_state_dict(state["optimizer"])
        keep_factors = [None] * len(self.scheduler.lr_lambdas)  # None: LambdaLR leaves that factor as built
        self.scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": keep_factors})
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress.from_state(state)
        self.logger.info(f"resumed {self.run_dir} at step {self.progress.step}")
        per_rank = state.get("rng_per_rank") or []
        return per_rank[self.info.rank] if len(per_rank) == self.info.world_size else state["rng"]

    def wrap_distributed(self) -> None:
        """DistributedDataParallel (and SyncBatchNorm on CUDA) when launched with several processes."""
        info, rt = self.info, self.config.runtime
        if not info.distributed:
            return
        if rt.sync_bn and info.device.type == "cuda":
            self.raw_model = nn.SyncBatchNorm.convert_sync_batchnorm(self.raw_model)
        self.model = nn.parallel.DistributedDataParallel(
            self.raw_model,
            device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=rt.find_unused_parameters,
        )

    @property
    def global_batch(self) -> int:
        return self.config.data.batch_size * self.info.world_size

    def log_start(self) -> None:
        """The run's start line (model, device, batch, both data sets, AMP, folder) and param groups."""
        info, config, identity = self.info, self.config, self.identity
        n_params = sum(p.numel() for p in self.raw_model.parameters())
        threads = f" with {torch.get_num_threads()} CPU threads" if info.device.type == "cpu" else ""
        amp = self.amp_dtype if self.amp_dtype is not None else "off"
        self.logger.info(
            f"run {config.name}: model {identity['model']} ({identity['classifier']} classifier, "
            f"{config.model.num_classes} classes, {n_params / 1e6:.2f}M params) on {info.device}{threads}; "
            f"{info.world_size} process(es) x batch {config.data.batch_size} = global batch {self.global_batch}; "
            f"{len(self.train_ds)} training images ({self.iters_per_epoch} steps per epoch); "
            f"val set: {self.val_split.describe()}; AMP {amp}; work dir {self.run_dir}"
        )
        for g in self.optimizer.param_groups:
            self.logger.info(
                f"  param group {g['name']}: {len(g['params'])} tensors, lr {g['initial_lr']:.3g}, "
                f"weight decay {g['weight_decay']}"
            )
        if not self.resume:
            self.logger.record(
                {
                    "type": "start",
                    "step": 0,
                    "world_size": info.world_size,
                    "global_batch": self.global_batch,
                    "threads": torch.get_num_threads(),
                    "device": str(info.device),
                }
            )

    def checkpoint_card(self) -> dict[str, Any]:
        """Metadata every checkpoint of this run carries (step and metrics are added per write)."""
        config = self.config
        test = config.test
        return {
            **self.identity,
            "classifier_options": dict(config.model.classifier_options),
            "class_names": self.classes,
            "palette": [list(map(int, c)) for c in self.palette] if self.palette is not None else None,
            "dataset": config.data.dataset,
            "config": config.to_dict(),
            "seed": config.runtime.seed,
            "git_commit": git_commit() if self.info.is_main else None,
            "torch_version": torch.__version__,
            "test": {"mode": test.mode, "crop_size": test.crop_size, "stride": test.stride},
            "global_batch": self.global_batch,
        }

    # --- the loop ---------------------------------------------------------------------------------

    def loop(self) -> _Window:
        """Epochs of steps until ``schedule.max_iters``; returns the throughput window."""
        sched, rt = self.config.schedule, self.config.runtime
        bar = None
        if rt.progress and self.info.is_main:
            bar = tqdm(
                total=sched.max_iters, initial=self.progress.step, desc=self.config.name, unit="it",
                dynamic_ncols=True,
            )  # fmt: skip
        epoch, skip = divmod(self.progress.step, self.iters_per_epoch)
        loader_ds = EpochIndexedDataset(self.train_ds)
        window = _Window()
        try:
            self.model.train()
            while self.progress.step < sched.max_iters:
                for images, masks, indices in self.epoch_loader(loader_ds, epoch, skip):
                    loss, lr = self.train_step(images, masks, indices)
                    self.after_step(loss, lr, epoch, window, bar)
                    if self.progress.step >= sched.max_iters:
                        break
                epoch += 1
                skip = 0
        finally:
            if bar is not None:
                bar.close()
        return window

    def epoch_loader(self, loader_ds: EpochIndexedDataset, epoch: int, skip: int) -> DataLoader:
        """The DataLoader of one epoch, skipping its first ``skip`` batches (exact resume)."""
        d = self.config.data
        self.sampler.set_epoch(epoch)
        self.train_ds.set_epoch(epoch)  # in this process too: names of a bad batch, workers=0
        self.sampler.start_index = skip * d.batch_size
        return DataLoader(
            loader_ds,
            batch_size=d.batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=d.num_workers,
            pin_memory=self.info.device.type == "cuda",
            persistent_workers=False,
        )

    def train_step(self, images: Tensor, masks: Tensor, indices: Tensor) -> tuple[Tensor, float]:
        """One optimiser step on a batch: images (B, 3, H, W), masks (B, H, W).

        Returns:
            (the step's loss, the lr it used).
        """
        info, optim = self.info, self.config.optim
        images = images.to(info.device, non_blocking=True)
        masks = masks.to(info.device, non_blocking=True)
        if self.config.runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(info.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model(images)
            loss = self.raw_model.loss_from_logits(logits.float(), masks)
        self.guard_finite(loss, indices)

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), optim.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.progress.step += 1
        return loss, lr

    def after_step(self, loss: Tensor, lr: float, epoch: int, window: _Window, bar: Any) -> None:
        """Log the step, evaluate and checkpoint when due, then call the callbacks."""
        sched, progress = self.config.schedule, self.progress
        step = progress.step
        window.steps_here += 1
        loss_value = mean_across(loss.detach(), self.info)
        progress.losses.append((step, loss_value))
        window.loss += loss_value
        window.n += 1
        now = time.perf_counter()
        if bar is not None:
            img_s = window.steps_here * self.global_batch / max(now - window.job_start, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{img_s:.1f}")
        if step % max(1, sched.log_interval) == 0 or step == sched.max_iters:
            self.logger.record(
                {
                    "type": "train",
                    "step": step,
                    "epoch": epoch,
                    "loss": window.loss / max(window.n, 1),
                    "lr": lr,
                    "img_per_s": window.n * self.global_batch / max(now - window.start, 1e-9),
                }
            )
            window.loss, window.n, window.start = 0.0, 0, now

        do_eval = step == sched.max_iters or (sched.eval_interval > 0 and step % sched.eval_interval == 0)
        metrics = self.evaluate_and_keep_best() if do_eval else None
        if do_eval or (sched.checkpoint_interval > 0 and step % sched.checkpoint_interval == 0):
            self.write_checkpoint("last", metrics, with_state=True)
        for cb in self.callbacks:
            cb(step=step, loss=loss_value, lr=lr, model=self.raw_model)

    def evaluate_and_keep_best(self) -> dict[str, float]:
        """Evaluate, log, write ``best`` on a new best mIoU; return {"mIoU", "aAcc", "mAcc"}."""
        step, test = self.progress.step, self.config.test
        m = evaluate(
            self.raw_model,
            self.val_split.dataset,
            mode=test.mode,
            crop=as_pair(test.crop_size),
            stride=as_pair(test.stride),
            batch_size=test.batch_size,
            max_images=test.max_images,
            device=self.info.device,
            class_names=self.classes or None,
            transform=self.val_split.transform,
            autocast_dtype=self.amp_dtype,
            progress=self.config.runtime.progress and self.info.is_main,
            distributed=self.info.distributed,
        )
        self.final_metrics = m
        metrics = {"mIoU": m.mIoU, "aAcc": m.aAcc, "mAcc": m.mAcc}
        self.progress.evals.append({"step": step, **metrics})
        self.logger.record({"type": "eval", "step": step, **metrics})
        self.logger.info(f"step {step}: mIoU {100 * m.mIoU:.2f}  aAcc {100 * m.aAcc:.2f}  mAcc {100 * m.mAcc:.2f}")
        if math.isnan(self.progress.best_miou) or m.mIoU > self.progress.best_miou:
            self.progress.best_miou = m.mIoU
            self.write_checkpoint("best", metrics, with_state=False)
        self.model.train()
        return metrics

    def write_checkpoint(self, tag: str, metrics: dict | None, with_state: bool) -> None:
        """Weights + card (rank 0); with the optimiser, schedule, scaler, every rank's RNG and the
        progress when ``with_state``. Every rank calls it (same step, same all-reduced metrics)."""
        info = self.info
        rngs = [rng_state()]
        if with_state and info.distributed:
            rngs = [None] * info.world_size
            dist.all_gather_object(rngs, rng_state())
        if not info.is_main:
            return
        meta = {**self.card, "step": self.progress.step, "metrics": metrics or {}}
        training_state = None
        if with_state:
            training_state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.use_scaler else {},
                "rng": rngs[0],
                "rng_per_rank": rngs,
                **self.progress.to_state(),
            }
        save_checkpoint(self.run_dir, tag, self.raw_model, meta, training_state, half=self.config.runtime.save_half)

    def guard_finite(self, loss: Tensor, indices: Tensor) -> None:
        """Stop every process together when any process's loss is NaN/inf, naming the batch's files."""
        info = self.info
        bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device)
        if info.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item() == 0.0:
            return
        names = batch_names(self.train_ds, indices.tolist())
        if info.distributed:
            gathered: list[Any] = [None] * info.world_size
            dist.all_gather_object(gathered, names)
            names = [n for part in gathered for n in part]
        last = checkpoint_weights(self.run_dir, "last")
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint had been written yet"
        step = self.progress.step + 1
        message = (
            f"The training loss became non-finite (NaN or inf) at step {step}; the run stopped and "
            f"{kept}. Lower optim.lr, enable optim.grad_clip, or check the images of that batch: "
            f"{', '.join(names) or 'n/a'}."
        )
        self.logger.record({"type": "nonfinite", "step": step, "files": names})
        self.logger.info(message)
        raise NonFiniteLossError(message)

    # --- the end ----------------------------------------------------------------------------------

    def finish(self, window: _Window) -> TrainResult:
        """Final log lines and the :class:`TrainResult`."""
        progress, info = self.progress, self.info
        elapsed = time.perf_counter() - window.job_start
        throughput = window.steps_here * self.global_batch / max(elapsed, 1e-9)
        if self.final_metrics is not None and info.is_main:
            self.logger.info("final evaluation:\n" + self.final_metrics.table())
        self.logger.info(f"done: {progress.step} steps, {throughput:.1f} images/s; checkpoints in {self.run_dir}")
        self.logger.close()
        last = checkpoint_weights(self.run_dir, "last")
        best = checkpoint_weights(self.run_dir, "best")
        best = best if best.exists() else None
        return TrainResult(
            work_dir=self.run_dir if info.is_main else None,
            checkpoint=best or last,
            last_checkpoint=last,
            best_checkpoint=best,
            steps=progress.step,
            losses=progress.losses,
            evals=progress.evals,
            best_miou=progress.best_miou,
            final_metrics=self.final_metrics,
            images_per_second=throughput,
        )
