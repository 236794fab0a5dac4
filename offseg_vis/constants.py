"""Values every part of the package shares (models, data, engine, analysis, app).

This module imports nothing, so any module may import it without creating a dependency between
the package's layers.
"""

from __future__ import annotations

# Label value that marks "no class" in masks: excluded from the loss and from every metric
# (the mmseg convention; ADE20K's "other" becomes this after reduce_zero_label).
IGNORE_INDEX = 255

# ImageNet statistics of RGB images scaled to [0, 1]: every pretrained backbone expects them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD"]
