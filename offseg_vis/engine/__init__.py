"""Training and evaluation: configs, the trainer (CPU/GPU, torchrun DDP), metrics and checkpoints."""

from offseg_vis.engine.config import Config, apply_overrides, load_config, save_config
from offseg_vis.engine.evaluate import SegMetrics, confusion_matrix, evaluate, metrics_from_confusion
from offseg_vis.engine.train import NonFiniteLossError, TrainResult, train

__all__ = [
    "Config",
    "NonFiniteLossError",
    "SegMetrics",
    "TrainResult",
    "apply_overrides",
    "confusion_matrix",
    "evaluate",
    "load_config",
    "metrics_from_confusion",
    "save_config",
    "train",
]
