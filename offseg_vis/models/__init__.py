"""Models: backbones, heads ending in a named classifier, the segmentor, the zoo and converters."""

from offseg_vis.models.offset_learning import (
    ClassifierOutput,
    LinearClassifier,
    OffsetLearning,
    build_classifier,
)

__all__ = ["ClassifierOutput", "LinearClassifier", "OffsetLearning", "build_classifier"]
