"""OffSeg workbench: Offset Learning for efficient semantic segmentation in plain PyTorch."""

__version__ = "0.1.0"

from offseg_vis.models import build_model, list_models  # noqa: E402

__all__ = ["__version__", "build_model", "list_models"]
