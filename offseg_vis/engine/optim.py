"""Optimiser and schedule of the OffSeg recipe (spec §3.2): AdamW param groups, warm-up + poly.

Parameters under ``decode_head.`` get lr x ``head_lr_mult``; names containing "norm" or
"pos_block" — and, by our choice, every parameter of a BatchNorm / GroupNorm / LayerNorm whatever its
name — get no weight decay (biases and ``cls_repr`` keep it, as in the official config).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

NORM_LAYERS = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)



def param_groups(model: nn.Module, cfg) -> list[dict[str, Any]]:
    """AdamW parameter groups: (backbone | head) x (decay | no decay).

    Args:
        model: the bare model (parameter names as in its state dict).
        cfg: :class:`~offseg_vis.engine.config.OptimConfig`.

    Returns:
        Non-empty groups with ``lr``, ``weight_decay`` and a ``name`` for the log.
    """
    norm_params = set()
    if cfg.no_decay_norm_layers:
        for module in model.modules():
            if isinstance(module, NORM_LAYERS):
                norm_params.update(id(p) for p in module.parameters(recurse=False))
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = name.startswith(cfg.head_prefix)
        no_decay = any(key in name for key in cfg.no_decay_keys) or id(param) in norm_params
        groups.setdefault((is_head, no_decay), []).append(param)
    result = []
    for (is_head, no_decay), params in sorted(groups.items()):
        result.append(
            {
                "params": params,
                "lr": cfg.lr * (cfg.head_lr_mult if is_head else 1.0),
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                "name": f"{'head' if is_head else 'backbone'}{'_no_decay' if no_decay else ''}",
            }
        )
    return result


def build_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


class WarmupPolyFactor:
    """lr factor at optimiser step ``s`` (0-based): linear warm-up, then poly decay.

    warm-up (s < W):  f = a + (1 - a) * s / W
    after:            f = m + (1 - m) * (1 - (s - W) / (T - W)) ** p,   m = min_lr / base_lr

    A plain object (not a closure) so LambdaLR can save and restore it.
    """

    def __init__(
        self, max_iters: int, warmup_iters: int, start_factor: float, power: float, min_ratio: float
    ):
        self.max_iters = int(max_iters)
        self.warmup_iters = int(warmup_iters)
        self.start_factor = float(start_factor)
        self.power = float(power)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_iters:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_iters
        span = max(1, self.max_iters - self.warmup_iters)
        progress = min(1.0, (step - self.warmup_iters) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * (1.0 - progress) ** self.power


def build_scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR with one :class:`WarmupPolyFactor` per group; ``cfg`` is a ScheduleConfig."""
    factors = []
    for group in optimizer.param_groups:
        base = group["lr"]
        min_ratio = cfg.min_lr / base if base > 0 else 0.0
        factors.append(
            WarmupPolyFactor(
                cfg.max_iters, cfg.warmup_iters, cfg.warmup_start_factor, cfg.poly_power, min_ratio
            )
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
