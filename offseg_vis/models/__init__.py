"""Models: backbones, heads ending in a named classifier, the segmentor, the registry and converters.

Importing this package registers every model: :mod:`~offseg_vis.models.zoo` (the backbone + head
models) and :mod:`~offseg_vis.models.mask2former` call :func:`register_model` at import.
"""

from offseg_vis.models import mask2former, zoo  # noqa: F401  (imported for their registrations)
from offseg_vis.models.offset_learning import (
    ClassifierOutput,
    LinearClassifier,
    OffsetLearning,
    build_classifier,
)
from offseg_vis.models.registry import (
    build_model,
    list_models,
    load_pretrained,
    model_entry,
    register_converter,
    register_model,
)

__all__ = [
    "ClassifierOutput",
    "LinearClassifier",
    "OffsetLearning",
    "build_classifier",
    "build_model",
    "list_models",
    "load_pretrained",
    "model_entry",
    "register_converter",
    "register_model",
]
