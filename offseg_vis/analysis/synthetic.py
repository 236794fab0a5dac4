"""Hand-made :class:`ImageProbe` objects with known answers, for tests and documentation examples."""

from __future__ import annotations

import numpy as np

from offseg_vis.analysis.probe import ImageProbe


def make_probe(
    features: np.ndarray,
    class_embed: np.ndarray,
    label: np.ndarray | None = None,
    feature_offset: np.ndarray | None = None,
    class_offset: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    prediction_before_offsets: np.ndarray | None = None,
) -> ImageProbe:
    """An ImageProbe whose image grid equals its feature grid (stride 1), built from given arrays.

    Args:
        features: E (h, w, C).
        class_embed: W (K, C).
        label: (h, w) ground truth or None.
        feature_offset, class_offset: ΔE (h, w, C) and ΔW (K, C); giving either makes it an offset probe
            (the other defaults to zeros). Attentions are computed from A = E·Wᵀ as the module does.
        prediction, prediction_before_offsets: default argmax of E'·W'ᵀ and of E·Wᵀ.
    """
    features = np.asarray(features, dtype=np.float32)
    w = np.asarray(class_embed, dtype=np.float32)
    h, wd, _ = features.shape
    k = w.shape[0]
    is_offset = feature_offset is not None or class_offset is not None
    d_e = np.zeros_like(features) if feature_offset is None else np.asarray(feature_offset, np.float32)
    d_w = np.zeros_like(w) if class_offset is None else np.asarray(class_offset, np.float32)
    a = features @ w.T  # (h, w, K) coupled logits
    after = (features + d_e) @ (w + d_w).T  # (h, w, K)
    flat = a.reshape(-1, k)  # (N, K)
    class_att = np.exp(flat - flat.max(0))
    class_att = (class_att / class_att.sum(0)).T.reshape(k, h, wd)  # softmax over pixels -> (K, h, w)
    pos_att = np.exp(a - a.max(-1, keepdims=True))
    pos_att = pos_att / pos_att.sum(-1, keepdims=True)  # softmax over classes (h, w, K)
    image = np.zeros((h, wd, 3), dtype=np.uint8)
    return ImageProbe(
        image=image,
        label=None if label is None else np.asarray(label, dtype=np.int64),
        prediction=after.argmax(-1) if prediction is None else np.asarray(prediction, np.int64),
        num_classes=k,
        feature_size=(h, wd),
        prediction_before_offsets=(
            a.argmax(-1) if prediction_before_offsets is None else np.asarray(prediction_before_offsets, np.int64)
        ),
        logits=after.transpose(2, 0, 1),
        logits_without_offsets=a.transpose(2, 0, 1),
        features=features,
        class_embed=w,
        is_offset_model=is_offset,
        input_size=(h, wd),
        padded_size=(h, wd),
        feature_offset=d_e if is_offset else None,
        refined_features=features + d_e if is_offset else None,
        class_offset=d_w if is_offset else None,
        refined_class_embed=w + d_w if is_offset else None,
        class_attention=class_att if is_offset else None,
        position_attention=pos_att if is_offset else None,
    )
