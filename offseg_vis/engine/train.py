"""The training loop: one process or many (torchrun), CPU or CUDA, resumable, with periodic evaluation.

``train(config)`` runs a whole schedule and returns a :class:`TrainResult`. Under
``torchrun --nproc_per_node N -m offseg_vis.cli train ...`` each process runs the same function: it
joins the process group (nccl on GPU, gloo on CPU), reads its shard of every global batch, and only
rank 0 writes logs and checkpoints.

Recipe (spec §3.2): AdamW with the head at lr x ``head_lr_mult`` and no decay on norms, linear
warm-up, poly decay (:mod:`~offseg_vis.engine.optim`). Data, samplers: :mod:`~offseg_vis.engine.loading`;
devices, process group, AMP, logs: :mod:`~offseg_vis.engine.runtime`.

Exact resume: the data order is a pure function of (seed, epoch), the augmentation of sample i a
pure function of (seed, epoch, i), and the optimiser, scheduler, scaler and RNG states are saved, so
a resumed run continues bit for bit where the last checkpoint left it.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

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
from offseg_vis.engine.loading import (
    EpochIndexedDataset,
    ResumableDistributedSampler,
    batch_names,
    build_datasets,
)
from offseg_vis.engine.optim import build_optimizer, build_scheduler
from offseg_vis.engine.runtime import DistInfo, RunLogger, amp_setup, mean_across, setup_distributed
from offseg_vis.errors import ConfigError, OffSegError
from offseg_vis.models.weights import describe_model, load_weights

log = logging.getLogger("offseg_vis.train")

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


def _resolve_work_dir(config: Config, work_dir: str | os.PathLike | None) -> Path:
    if work_dir is not None:
        return Path(work_dir)
    if config.runtime.work_dir:
        return Path(config.runtime.work_dir)
    return Path("runs") / config.name


def model_from_config(config: Config) -> nn.Module:
    """The model a config describes (``config.model``), freshly built."""
    from offseg_vis.models.zoo import build_model

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


def _check_classes(config: Config, classes: list[str]) -> None:
    if classes and len(classes) != config.model.num_classes:
        raise ConfigError(
            f"The dataset {config.data.dataset!r} has {len(classes)} classes but model.num_classes is "
            f"{config.model.num_classes}; set model.num_classes={len(classes)}."
        )


def train(
    config: Config,
    *,
    resume: bool = False,
    work_dir: str | os.PathLike | None = None,
    model: nn.Module | None = None,
    train_dataset: Any = None,
    val_dataset: Any = None,
    callbacks: Sequence[Callable[..., None]] = (),
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
        return _train(config, info, resume, work_dir, model, train_dataset, val_dataset, callbacks)
    finally:
        torch.set_num_threads(threads)  # a notebook or test keeps its own setting
        if info.created_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(config, info: DistInfo, resume, work_dir, model, train_raw, val_raw, callbacks) -> TrainResult:
    rt, sched, d = config.runtime, config.schedule, config.data
    if sched.max_iters <= 0:
        raise ConfigError(f"schedule.max_iters must be positive, got {sched.max_iters}.")
    if rt.num_threads:
        torch.set_num_threads(int(rt.num_threads))
    if rt.deterministic:
        torch.use_deterministic_algorithms(True)

    run_dir = _resolve_work_dir(config, work_dir)
    if info.is_main:
        if not resume and state_path(run_dir, "last").exists() and not rt.overwrite:
            raise ConfigError(
                f"{run_dir} already holds a run; pass --resume to continue it, choose another --work-dir, "
                f"or set runtime.overwrite=true to start over."
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            for old in ("log.jsonl", "train.log"):
                (run_dir / old).unlink(missing_ok=True)
        save_config(config, run_dir / "config.yaml")
    logger = RunLogger(run_dir, info.is_main, rt.tensorboard)

    # --- seeds: the same initialisation on every rank (DDP also broadcasts rank 0's weights)
    random.seed(rt.seed)
    np.random.seed(rt.seed)
    torch.manual_seed(rt.seed)

    # --- data
    # rank 0 first: it builds any on-disk cache (e.g. FashionScenes val) while the others wait
    if info.distributed and not info.is_main:
        dist.barrier()
    train_ds, val_ds, val_transform, classes, palette = build_datasets(config, train_raw, val_raw)
    if info.distributed and info.is_main:
        dist.barrier()
    _check_classes(config, classes)
    sampler = ResumableDistributedSampler(train_ds, info.world_size, info.rank, seed=rt.seed)
    iters_per_epoch = len(sampler) // d.batch_size
    if iters_per_epoch == 0:
        raise ConfigError(
            f"The training set has {len(train_ds)} images, fewer than one global batch of "
            f"{d.batch_size * info.world_size}; lower data.batch_size or use more images."
        )

    # --- model, optimiser, schedule, AMP
    if model is None:
        model = model_from_config(config)
    model = model.to(info.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, sched)
    amp_dtype, use_scaler = amp_setup(rt.amp, info.device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    identity = describe_model(model)
    identity["model"] = getattr(model, "model_name", None) or config.model.name

    start_step, losses, evals, best_miou = 0, [], [], float("nan")
    if resume:
        state = load_training_state(run_dir, "last")
        load_weights(model, checkpoint_weights(run_dir, "last"))
        optimizer.load_state_dict(state["optimizer"])
        fresh = [f.__dict__.copy() for f in scheduler.lr_lambdas]
        scheduler.load_state_dict(state["scheduler"])
        for factor, values in zip(scheduler.lr_lambdas, fresh):
            factor.__dict__.update(values)  # the config's schedule wins (e.g. a longer max_iters)
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_step = int(state["step"])
        losses = [tuple(x) for x in state.get("losses", [])]
        evals = list(state.get("evals", []))
        best_miou = float(state.get("best_miou", float("nan")))
        per_rank = state.get("rng_per_rank") or []
        rng_after_resume = per_rank[info.rank] if len(per_rank) == info.world_size else state["rng"]
        logger.info(f"resumed {run_dir} at step {start_step}")
    else:
        rng_after_resume = None

    raw_model = model
    if info.distributed:
        if rt.sync_bn and info.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            raw_model = model
        model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=rt.find_unused_parameters,
        )
    if rng_after_resume is not None:
        set_rng_state(rng_after_resume)
    else:
        torch.manual_seed(rt.seed + info.rank)  # per-rank randomness (dropout, drop path)

    global_batch = d.batch_size * info.world_size
    n_params = sum(p.numel() for p in raw_model.parameters())
    logger.info(
        f"run {config.name}: model {identity['model']} ({identity['classifier']} classifier, "
        f"{config.model.num_classes} classes, {n_params / 1e6:.2f}M params) "
        f"on {info.device}"
        + (f" with {torch.get_num_threads()} CPU threads" if info.device.type == "cpu" else "")
        + f"; {info.world_size} process(es) x batch {d.batch_size} = global batch {global_batch}; "
        f"{len(train_ds)} training images ({iters_per_epoch} steps per epoch); "
        f"AMP {amp_dtype if amp_dtype is not None else 'off'}; work dir {run_dir}"
    )
    for g in optimizer.param_groups:
        logger.info(
            f"  param group {g['name']}: {len(g['params'])} tensors, lr {g['initial_lr']:.3g}, "
            f"weight decay {g['weight_decay']}"
        )
    if not resume:
        logger.record(
            {
                "type": "start",
                "step": 0,
                "world_size": info.world_size,
                "global_batch": global_batch,
                "threads": torch.get_num_threads(),
                "device": str(info.device),
            }
        )

    base_meta = {
        **identity,
        "classifier_options": dict(config.model.classifier_options),
        "class_names": classes,
        "palette": [list(map(int, c)) for c in palette] if palette is not None else None,
        "dataset": d.dataset,
        "config": config.to_dict(),
        "seed": rt.seed,
        "git_commit": git_commit() if info.is_main else None,
        "torch_version": torch.__version__,
        "test": {"mode": config.test.mode, "crop_size": config.test.crop_size, "stride": config.test.stride},
        "global_batch": global_batch,
    }

    def write_checkpoint(tag: str, step: int, metrics: dict | None, with_state: bool) -> None:
        # every rank gets here (same step, same all-reduced metrics): gather each rank's RNG state
        rngs = [rng_state()]
        if with_state and info.distributed:
            rngs = [None] * info.world_size
            dist.all_gather_object(rngs, rng_state())
        if not info.is_main:
            return
        meta = {**base_meta, "step": step, "metrics": metrics or {}}
        training_state = None
        if with_state:
            training_state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if use_scaler else {},
                "rng": rngs[0],
                "rng_per_rank": rngs,
                "losses": [list(x) for x in losses],
                "evals": evals,
                "best_miou": best_miou,
            }
        save_checkpoint(run_dir, tag, raw_model, meta, training_state, half=rt.save_half)

    def run_eval(step: int) -> SegMetrics:
        test = config.test
        metrics = evaluate(
            raw_model,
            val_ds,
            mode=test.mode,
            crop=as_pair(test.crop_size),
            stride=as_pair(test.stride),
            batch_size=test.batch_size,
            max_images=test.max_images,
            device=info.device,
            class_names=classes or None,
            transform=val_transform,
            autocast_dtype=amp_dtype,
            progress=rt.progress and info.is_main,
            distributed=info.distributed,
        )
        return metrics

    # --- the loop
    bar = None
    if rt.progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=sched.max_iters, initial=start_step, desc=config.name, unit="it", dynamic_ncols=True)
    step = start_step
    epoch, skip = divmod(step, iters_per_epoch)
    loader_ds = EpochIndexedDataset(train_ds)
    window_loss, window_n, window_start, job_start = 0.0, 0, time.perf_counter(), time.perf_counter()
    steps_done_here = 0
    final_metrics = None
    ckpt_every = sched.checkpoint_interval
    try:
        model.train()
        while step < sched.max_iters:
            sampler.set_epoch(epoch)
            train_ds.set_epoch(epoch)  # in this process too: names of a bad batch, workers=0
            sampler.start_index = skip * d.batch_size
            loader = DataLoader(
                loader_ds,
                batch_size=d.batch_size,
                sampler=sampler,
                drop_last=True,
                num_workers=d.num_workers,
                pin_memory=info.device.type == "cuda",
                persistent_workers=False,
            )
            for images, masks, indices in loader:
                images = images.to(info.device, non_blocking=True)
                masks = masks.to(info.device, non_blocking=True)
                if rt.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = model(images)
                    loss = raw_model.loss_from_logits(logits.float(), masks)
                _guard_finite(loss, info, train_ds, indices, step, logger, run_dir)

                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.optim.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(raw_model.parameters(), config.optim.grad_clip)
                lr = optimizer.param_groups[0]["lr"]
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                steps_done_here += 1

                loss_value = mean_across(loss.detach(), info)
                losses.append((step, loss_value))
                window_loss += loss_value
                window_n += 1
                now = time.perf_counter()
                img_s = steps_done_here * global_batch / max(now - job_start, 1e-9)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{img_s:.1f}")
                if step % max(1, sched.log_interval) == 0 or step == sched.max_iters:
                    logger.record(
                        {
                            "type": "train",
                            "step": step,
                            "epoch": epoch,
                            "loss": window_loss / max(window_n, 1),
                            "lr": lr,
                            "img_per_s": window_n * global_batch / max(now - window_start, 1e-9),
                        }
                    )
                    window_loss, window_n, window_start = 0.0, 0, now

                is_last = step == sched.max_iters
                do_eval = is_last or (sched.eval_interval > 0 and step % sched.eval_interval == 0)
                metrics_dict = None
                if do_eval:
                    final_metrics = run_eval(step)
                    metrics_dict = {
                        "mIoU": final_metrics.mIoU,
                        "aAcc": final_metrics.aAcc,
                        "mAcc": final_metrics.mAcc,
                    }
                    evals.append({"step": step, **metrics_dict})
                    logger.record({"type": "eval", "step": step, **metrics_dict})
                    logger.info(
                        f"step {step}: mIoU {100 * final_metrics.mIoU:.2f}  aAcc "
                        f"{100 * final_metrics.aAcc:.2f}  mAcc {100 * final_metrics.mAcc:.2f}"
                    )
                    if math.isnan(best_miou) or final_metrics.mIoU > best_miou:
                        best_miou = final_metrics.mIoU
                        write_checkpoint("best", step, metrics_dict, with_state=False)
                    model.train()
                if do_eval or (ckpt_every > 0 and step % ckpt_every == 0):
                    write_checkpoint("last", step, metrics_dict, with_state=True)
                for cb in callbacks:
                    cb(step=step, loss=loss_value, lr=lr, model=raw_model)
                if step >= sched.max_iters:
                    break
            epoch += 1
            skip = 0
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - job_start
    throughput = steps_done_here * global_batch / max(elapsed, 1e-9)
    if final_metrics is not None and info.is_main:
        logger.info("final evaluation:\n" + final_metrics.table())
    logger.info(f"done: {step} steps, {throughput:.1f} images/s; checkpoints in {run_dir}")
    logger.close()
    last = checkpoint_weights(run_dir, "last")
    best = checkpoint_weights(run_dir, "best")
    best = best if best.exists() else None
    return TrainResult(
        work_dir=run_dir if info.is_main else None,
        checkpoint=best or last,
        last_checkpoint=last,
        best_checkpoint=best,
        steps=step,
        losses=losses,
        evals=evals,
        best_miou=best_miou,
        final_metrics=final_metrics,
        images_per_second=throughput,
    )



def _guard_finite(
    loss: Tensor, info: DistInfo, dataset, indices: Tensor, step: int, logger: RunLogger, run_dir: Path
) -> None:
    """Stop every process together when any process's loss is NaN/inf, naming the batch's files."""
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device)
    if info.distributed:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item() == 0.0:
        return
    names = batch_names(dataset, indices.tolist())
    if info.distributed:
        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, names)
        names = [n for part in gathered for n in part]
    last = checkpoint_weights(run_dir, "last")
    kept = (
        f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint had been written yet"
    )
    message = (
        f"The training loss became non-finite (NaN or inf) at step {step + 1}; the run stopped and "
        f"{kept}. Lower optim.lr, enable optim.grad_clip, or check the images of that batch: "
        f"{', '.join(names) or 'n/a'}."
    )
    logger.record({"type": "nonfinite", "step": step + 1, "files": names})
    logger.info(message)
    raise NonFiniteLossError(message)
