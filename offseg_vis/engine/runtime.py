"""Where a training process runs: device, process group (torchrun), AMP, the run's logs, and the
machine line every measured number is printed beside.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from offseg_vis.errors import ConfigError

log = logging.getLogger("offseg_vis.train")


@dataclass
class DistInfo:
    """Where this process sits: rank, world size, local rank, device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    created_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("runtime.device asks for CUDA but no CUDA device is available; use runtime.device=cpu.")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def setup_distributed(device_name: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(device_name, local_rank)
    created = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
        created = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local_rank, device, created)


def amp_setup(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler)."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"runtime.amp must be auto, bf16, fp16 or off, got {amp!r}.")
    if device.type != "cuda" or amp == "off":
        return None, False
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return (torch.bfloat16, False) if amp == "bf16" else (torch.float16, True)


class RunLogger:
    """Human log (console via tqdm.write + train.log) and machine log (log.jsonl, TensorBoard).

    Only the main process writes anything.
    """

    def __init__(self, work_dir: Path | None, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.work_dir = work_dir
        self.tb = None
        if enabled and work_dir is not None and tensorboard:
            try:  # imported here: tensorboard is an optional dependency
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(work_dir / "tensorboard"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        tqdm.write(message, file=sys.stderr)
        log.info(message)
        if self.work_dir is not None:
            with open(self.work_dir / "train.log", "a", encoding="utf-8") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + message + "\n")

    def record(self, entry: dict[str, Any]) -> None:
        if not self.enabled or self.work_dir is None:
            return
        entry = {"time": round(time.time(), 3), **entry}
        with open(self.work_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        if self.tb is not None:
            step = entry.get("step", 0)
            prefix = entry.get("type", "train")
            for key, value in entry.items():
                if isinstance(value, int | float) and key not in ("step", "time"):
                    self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def mean_across(value: Tensor, info: DistInfo) -> float:
    """The loss averaged over processes (for the log; equals the global-batch loss)."""
    if info.distributed:
        value = value.clone()
        dist.all_reduce(value)
        value /= info.world_size
    return float(value)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where available)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """What every benchmark number and experiment run is recorded beside: torch version, threads,
    device, CPU model, Python version."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu": cpu_model(),
        "python": platform.python_version(),
    }
