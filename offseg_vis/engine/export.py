"""Turn a training run into a shipped checkpoint: float16 weights + a JSON model card.

The card holds what a user needs to trust and reproduce the checkpoint: model, classes, config,
steps, wall time and machine, data generator version and seed, val mIoU / aAcc / per-class IoU
(re-measured here on the full val split), parameters, GMACs, git commit and the command.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from offseg_vis.data.fashion_scenes import GENERATOR_VERSION, FashionScenesConfig
from offseg_vis.engine.checkpoint import git_commit, load_model
from offseg_vis.engine.config import from_dict
from offseg_vis.engine.run import datasets_for, evaluate_split
from offseg_vis.engine.runtime import environment
from offseg_vis.errors import CheckpointError
from offseg_vis.models.cost import count_gmacs, count_parameters
from offseg_vis.models.weights import save_weights

RESUME_GAP_S = 900.0  # a silence this long between log lines is a stop and a resume, not training time


def _wall_time(run_dir: Path) -> float | None:
    """Seconds of training in the run's JSON-lines log: the sum of the gaps between consecutive lines,
    leaving out gaps over :data:`RESUME_GAP_S` (a run stopped and resumed later). None without a log."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return None
    times = [json.loads(line)["time"] for line in log.read_text().splitlines() if line.strip()]
    if len(times) < 2:
        return None
    return sum(b - a for a, b in zip(times, times[1:]) if b - a <= RESUME_GAP_S)


def _data_provenance(config: dict) -> dict[str, Any]:
    data = config.get("data", {})
    out: dict[str, Any] = {"dataset": data.get("dataset"), "seed": config.get("runtime", {}).get("seed")}
    if data.get("dataset") == "fashion-scenes":
        defaults = FashionScenesConfig()
        options = {**data.get("dataset_options", {})}
        out.update(
            generator_version=GENERATOR_VERSION,
            scene_seed=options.get("seed", defaults.seed),
            style=options.get("style", defaults.style),
            train=data.get("train_options", {}),
            val=data.get("val_options", {}),
        )
    return out


def export_checkpoint(
    weights: str | Path,
    dst: str | Path,
    command: str,
    val_dataset: Any = None,
    gmacs_size: int = 512,
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``weights`` on its val split and write ``dst.safetensors`` (float16) + ``dst.json``.

    Args:
        weights: a run's ``best.safetensors`` / ``last.safetensors``.
        dst: output path without suffix, e.g. ``checkpoints/offseg-mbv2_offset``.
        command: the command that reproduces the run (written into the card).
        val_dataset: override the raw val dataset (default: the run config's val split); it is
            scored with the config's test transform and protocol either way.
        report: called with one line naming the val set that was scored (e.g. ``print``).

    Returns:
        the model card.
    """
    weights = Path(weights)
    model, meta = load_model(weights)
    config = meta.get("config")
    if not config:
        raise CheckpointError(f"{weights} has no training config in its metadata; export needs a run checkpoint.")
    # the one run API: the same split, transform (test.scale) and protocol as `offseg eval`
    cfg = from_dict(config)
    val = datasets_for(cfg, "val", raw=val_dataset)
    if report is not None:
        report(f"scoring {val.describe()}")
    metrics = evaluate_split(model, val, cfg.test, class_names=meta.get("class_names"))
    card = {
        "name": Path(dst).name,
        "model": meta["model"],
        "classifier": meta["classifier"],
        "classifier_options": meta.get("classifier_options", {}),
        "num_classes": meta["num_classes"],
        "class_names": meta.get("class_names"),
        "palette": meta.get("palette"),
        "val_metrics": metrics.to_dict(),
        "params": count_parameters(model),
        f"gmacs_{gmacs_size}": count_gmacs(model, gmacs_size),
        "gmacs_128": count_gmacs(model, 128),
        "steps": meta.get("step"),
        "global_batch": meta.get("global_batch"),
        "wall_time_s": _wall_time(weights.parent),
        "machine": environment(),
        "data": _data_provenance(config),
        "trained_at_commit": meta.get("git_commit"),
        "exported_at_commit": git_commit(),
        "command": command,
        "config": config,
    }
    save_weights(model, dst, metadata=card, half=True)
    return card


def register(sub) -> None:
    """``offseg export WEIGHTS DST --command "..."``."""
    p = sub.add_parser("export", help="run checkpoint -> shipped float16 checkpoint + JSON model card")
    p.add_argument("weights", help="a run's best.safetensors or last.safetensors")
    p.add_argument("dst", help="output path without suffix, e.g. checkpoints/offseg-mbv2_offset")
    p.add_argument("--command", required=True, help="the command that reproduces the run (goes in the card)")
    p.set_defaults(func=_export_command)


def _export_command(args) -> int:
    card = export_checkpoint(args.weights, args.dst, args.command, report=print)
    m = card["val_metrics"]
    print(f"{args.dst}: val mIoU {m['mIoU']:.4f}, aAcc {m['aAcc']:.4f}, {card['params'] / 1e6:.2f} M params")
    return 0
