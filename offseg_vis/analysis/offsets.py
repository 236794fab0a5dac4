"""Scalar maps of what Offset Learning did to one image (spec §5, "quantities the OL module exposes").

All functions take an :class:`ImageProbe` of an Offset Learning model and return numpy arrays at the
feature grid (h, w) or per class (K,).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from offseg_vis.analysis.probe import ImageProbe
from offseg_vis.errors import InputError

_EPS = 1e-12


def _need_offsets(p: ImageProbe) -> None:
    if not p.is_offset_model:
        raise InputError(
            "This quantity exists only for Offset Learning models; the probe comes from a per-pixel "
            "(linear) classifier. Build the model with classifier='offset'."
        )


def feature_offset_ratio(p: ImageProbe) -> np.ndarray:
    """‖ΔE‖ / ‖E‖ per pixel, (h, w): how far each pixel's feature is moved, relative to its length."""
    _need_offsets(p)
    return np.linalg.norm(p.feature_offset, axis=-1) / (np.linalg.norm(p.features, axis=-1) + _EPS)


def class_offset_ratio(p: ImageProbe) -> np.ndarray:
    """‖ΔW_k‖ / ‖W_k‖ per class, (K,), for this image."""
    _need_offsets(p)
    return np.linalg.norm(p.class_offset, axis=-1) / (np.linalg.norm(p.class_embed, axis=-1) + _EPS)


def feature_cosine(p: ImageProbe) -> np.ndarray:
    """cos(E, E') per pixel, (h, w): 1 = the offset kept the feature's direction."""
    _need_offsets(p)
    num = (p.features * p.refined_features).sum(-1)
    den = np.linalg.norm(p.features, axis=-1) * np.linalg.norm(p.refined_features, axis=-1)
    return num / (den + _EPS)


def class_cosine(p: ImageProbe) -> np.ndarray:
    """cos(W_k, W'_k) per class, (K,)."""
    _need_offsets(p)
    num = (p.class_embed * p.refined_class_embed).sum(-1)
    den = np.linalg.norm(p.class_embed, axis=-1) * np.linalg.norm(p.refined_class_embed, axis=-1)
    return num / (den + _EPS)


def position_entropy(p: ImageProbe, normalized: bool = True) -> np.ndarray:
    """Entropy of each pixel's position attention (softmax over classes of E·Wᵀ), (h, w).

    normalized: divide by log K so 0 = one class takes all, 1 = uniform over the K classes.
    """
    _need_offsets(p)
    a = np.clip(p.position_attention.astype(np.float64), _EPS, 1.0)  # (h, w, K)
    ent = -(a * np.log(a)).sum(-1)
    return ent / np.log(a.shape[-1]) if normalized else ent


def class_attention_peak(p: ImageProbe) -> np.ndarray:
    """Largest class-attention weight of each class, (K,): near 1/N = diffuse, near 1 = one pixel."""
    _need_offsets(p)
    return p.class_attention.reshape(p.num_classes, -1).max(1)


def mean_class_offset_ratio(probes: Sequence[ImageProbe]) -> np.ndarray:
    """:func:`class_offset_ratio` averaged over images, (K,)."""
    if not probes:
        raise InputError("mean_class_offset_ratio needs at least one probe.")
    return np.mean([class_offset_ratio(p) for p in probes], axis=0)
