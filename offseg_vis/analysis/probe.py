"""Run a segmentor once on a few images and keep, per image, what its classifier computed.

``probe`` is the single entry point the notebooks, the figures and the Gradio app use to look inside a
model. It calls ``Segmentor.forward(images, return_intermediates=True)`` once per group of equally sized
images (one forward pass, no hooks, no private attributes) and turns the batched
:class:`~offseg_vis.models.offset_learning.ClassifierOutput` into one :class:`ImageProbe` of numpy
arrays per image.

Resolutions: "input" = the image's own (H, W); "feature" = the classifier's grid (h, w), i.e. the head's
output stride applied to the (possibly padded) input. Feature-level arrays are kept on the full grid,
including any padding the backbone needed; ``input_size`` and ``padded_size`` say how the two relate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from offseg_vis.constants import IGNORE_INDEX
from offseg_vis.errors import InputError
from offseg_vis.models.segmentor import Segmentor, SegmentorOutput
from offseg_vis.models.upsample import upsampled_argmax

# What only an Offset Learning classifier computes, by ImageProbe field name.
_OFFSET_OUTPUTS = (
    "feature_offset",
    "refined_features",
    "class_offset",
    "refined_class_embed",
    "class_attention",
    "position_attention",
)
# Everything probe() can return, by ImageProbe field name.
OUTPUTS = (
    "prediction",
    "logits",
    "prediction_before_offsets",
    "logits_without_offsets",
    "features",
    "class_embed",
    *_OFFSET_OUTPUTS,
)
# What the model's plain forward gives (the fused Offset Learning path: no ΔE, E', attentions formed).
FAST_OUTPUTS = frozenset({"prediction", "logits"})
OFFSET_ONLY = frozenset(_OFFSET_OUTPUTS)


@dataclass
class ImageProbe:
    """What one forward pass revealed about one image (numpy arrays, float32 unless noted).

    Only the outputs the caller asked for (``probe(..., need=...)``) are filled; the others are None and
    ``computed`` lists the filled ones. Use :meth:`require` before reading an optional field.

    Attributes:
        image: (H, W, 3) uint8, the input.
        label: (H, W) int64 ground truth (``IGNORE_INDEX`` = unlabelled), or None.
        prediction: (H, W) int64, argmax of the final logits upsampled to the input size.
        num_classes: K.
        feature_size: (h, w) of the classifier's grid.
        is_offset_model: True when the classifier is Offset Learning.
        input_size: (H, W) of the image.
        padded_size: (Hp, Wp) of the canvas the backbone saw (= input_size unless it needed padding).
        computed: the names of the filled outputs (see ``OUTPUTS``).
        prediction_before_offsets: (H, W) int64, argmax of ``logits_without_offsets`` upsampled the same
            way: what the classifier would have said with ΔW = ΔE = 0 (the "ablation: offsets switched
            off"). Equals ``prediction`` for the per-pixel (linear) classifier.
        logits: (K, h, w) final class scores at feature resolution.
        logits_without_offsets: (K, h, w) the classifier's scores with both offsets zero.
        features: E, (h, w, C) pixel features fed to the classifier.
        class_embed: W, (K, C) the learned class representations (shared by all images).
        feature_offset: ΔE (h, w, C); offset models only, else None.
        refined_features: E' = E + ΔE (h, w, C); offset models only.
        class_offset: ΔW (K, C), this image's class offset; offset models only.
        refined_class_embed: W' = W + ΔW (K, C); offset models only.
        class_attention: (K, h, w) softmax over pixels of A = E·Wᵀ (each map sums to 1); offset models only.
        position_attention: (h, w, K) softmax over classes of A (each pixel sums to 1); offset models only.
        classifier_input: (C, h, w) tensor the classifier received, kept by ``probe(...,
            keep_classifier_input=True)`` so that :func:`complete_probe` can add the intermediates later
            by running the classifier alone; None otherwise.
    """

    image: np.ndarray
    label: np.ndarray | None
    prediction: np.ndarray
    num_classes: int
    feature_size: tuple[int, int]
    is_offset_model: bool
    input_size: tuple[int, int]
    padded_size: tuple[int, int]
    computed: frozenset[str] = frozenset(OUTPUTS)
    prediction_before_offsets: np.ndarray | None = None
    logits: np.ndarray | None = None
    logits_without_offsets: np.ndarray | None = None
    features: np.ndarray | None = None
    class_embed: np.ndarray | None = None
    feature_offset: np.ndarray | None = None
    refined_features: np.ndarray | None = None
    class_offset: np.ndarray | None = None
    refined_class_embed: np.ndarray | None = None
    class_attention: np.ndarray | None = None
    position_attention: np.ndarray | None = None
    classifier_input: Tensor | None = None

    @property
    def embed_dims(self) -> int:
        """C."""
        self.require("features")
        return int(self.features.shape[2])

    def require(self, *names: str) -> None:
        """Raise InputError naming the outputs this probe was computed without (offset-only outputs of a
        per-pixel model are not "missing": they do not exist; callers check ``is_offset_model``)."""
        missing = [n for n in names if n not in self.computed]
        if missing:
            raise InputError(
                f"This probe was computed without {', '.join(missing)}; call probe(model, images, "
                f"need={{{', '.join(repr(n) for n in sorted(self.computed | set(missing)))}}}) to get them."
            )


def _check_need(need) -> frozenset[str]:
    """``need`` (None = everything, or an iterable of OUTPUTS names) -> frozenset, with a sentence for typos."""
    if need is None:
        return frozenset(OUTPUTS)
    if isinstance(need, str):
        need = {need}
    need = frozenset(need)
    unknown = sorted(need - set(OUTPUTS))
    if unknown:
        raise InputError(f"probe cannot compute {', '.join(unknown)}; need= takes names among {', '.join(OUTPUTS)}.")
    return need | {"prediction"}  # the prediction is always there (it is what every caller shows)


def _as_hwc_uint8_list(images: Sequence[np.ndarray] | np.ndarray | Tensor) -> list[np.ndarray]:
    """Accept a list of (H, W, 3) uint8 arrays, or a batch array/tensor (B, H, W, 3) or (B, 3, H, W)."""
    if isinstance(images, Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise InputError(
                f"probe expects images as (B, H, W, 3) or (B, 3, H, W), got an array of shape {images.shape}."
            )
        if images.shape[-1] != 3 and images.shape[1] == 3:
            images = images.transpose(0, 2, 3, 1)  # (B, 3, H, W) -> (B, H, W, 3)
        images = list(images)
    out = []
    for i, img in enumerate(images):
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] != 3:
            raise InputError(f"Image {i} has shape {img.shape}; probe needs RGB images of shape (H, W, 3).")
        if img.dtype != np.uint8:
            raise InputError(
                f"Image {i} has dtype {img.dtype}; probe needs uint8 RGB in [0, 255] "
                "(convert with np.clip(x, 0, 255).astype(np.uint8))."
            )
        out.append(img)
    if not out:
        raise InputError("probe got no images; pass at least one (H, W, 3) uint8 array.")
    return out


def _check_labels(labels, images: list[np.ndarray]) -> list[np.ndarray | None]:
    if labels is None:
        return [None] * len(images)
    labels = list(labels)
    if len(labels) != len(images):
        raise InputError(f"probe got {len(images)} images but {len(labels)} labels; give one label per image.")
    out = []
    for i, (lab, img) in enumerate(zip(labels, images)):
        if lab is None:
            out.append(None)
            continue
        lab = np.asarray(lab.cpu() if isinstance(lab, Tensor) else lab).astype(np.int64)
        if lab.shape != img.shape[:2]:
            raise InputError(f"Label {i} has shape {lab.shape} but its image is {img.shape[:2]}; they must match.")
        out.append(lab)
    return out


def _padded_size(model: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    """The size the model runs an image of ``size`` at (a model without ``padded_size`` does not pad)."""
    return tuple(model.padded_size(*size)) if hasattr(model, "padded_size") else tuple(size)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _grid(x: Tensor | None, size: tuple[int, int]) -> np.ndarray | None:
    """(N, D) flattened per-pixel tensor -> (h, w, D) float32 numpy."""
    if x is None:
        return None
    return x.reshape(*size, x.shape[-1]).float().cpu().numpy()  # (h, w, D)


def _np(x: Tensor | None) -> np.ndarray | None:
    return None if x is None else x.float().cpu().numpy()


def probe(
    model: nn.Module,
    images: Sequence[np.ndarray] | np.ndarray | Tensor,
    labels: Sequence[np.ndarray | None] | None = None,
    batch_size: int = 8,
    need: Iterable[str] | None = None,
    keep_classifier_input: bool = False,
) -> list[ImageProbe]:
    """Run ``model`` (a Segmentor) on uint8 images and return one :class:`ImageProbe` per image.

    Args:
        model: a :class:`~offseg_vis.models.segmentor.Segmentor` (anything with ``normalize`` and
            ``forward(x, return_intermediates=...)``). It is put in eval mode for the call and restored
            afterwards.
        images: list of (H, W, 3) uint8 arrays (sizes may differ), or a (B, H, W, 3) / (B, 3, H, W)
            uint8 array or tensor.
        labels: optional list of (H, W) integer masks, one per image (None entries allowed).
        batch_size: images per forward pass (equally sized images are batched together).
        need: which outputs to compute (names in ``OUTPUTS``; None = all). ``prediction`` is always
            included. When only ``prediction`` / ``logits`` are asked for, the model's plain forward runs
            (Offset Learning's fused path: no attention maps, ΔE or E' are formed); otherwise the
            intermediates are requested and only the asked-for ones are copied out.
        keep_classifier_input: keep each image's classifier input (``ImageProbe.classifier_input``), so
            that :func:`complete_probe` can later compute the other outputs without running the backbone
            and decoder again (Segmentor models; others keep None).

    Returns:
        list of ImageProbe in the order of ``images``.
    """
    wanted = _check_need(need)
    imgs = _as_hwc_uint8_list(images)
    labs = _check_labels(labels, imgs)
    device = _model_device(model)
    results: list[ImageProbe | None] = [None] * len(imgs)
    # Group equal sizes so each group is one batched forward pass.
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(imgs):
        groups.setdefault(img.shape[:2], []).append(i)
    was_training = model.training
    model.eval()
    fast = wanted <= FAST_OUTPUTS
    kept: list[Tensor] = []
    hook = (
        model.classifier.register_forward_pre_hook(lambda _module, args: kept.append(args[0]))
        if keep_classifier_input and isinstance(model, Segmentor)
        else None
    )
    try:
        with torch.inference_mode():
            for size, indices in groups.items():
                for start in range(0, len(indices), batch_size):
                    chunk = indices[start : start + batch_size]
                    batch = torch.from_numpy(np.stack([imgs[i] for i in chunk])).to(device)
                    batch = batch.permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
                    x = model.normalize(batch)
                    split = _split_logits if fast else _split_output
                    out = model(x) if fast else model(x, return_intermediates=True)
                    chunk_imgs, chunk_labs = [imgs[i] for i in chunk], [labs[i] for i in chunk]
                    for j, probe_ in enumerate(split(model, out, size, chunk_imgs, chunk_labs, wanted)):
                        if kept:
                            probe_.classifier_input = kept[-1][j]  # (C, h, w)
                        results[chunk[j]] = probe_
    finally:
        model.train(was_training)
        if hook is not None:
            hook.remove()
    return results  # type: ignore[return-value]


def complete_probe(model: nn.Module, earlier: ImageProbe, need: Iterable[str] | None = None) -> ImageProbe:
    """The probe of ``earlier``'s image with the outputs in ``need`` (None = all).

    When ``earlier`` kept its classifier input (``probe(..., keep_classifier_input=True)``), only the
    classifier runs (with its intermediates): the backbone and decoder are deterministic functions of the
    image, so the result is what a full probe gives, at a fraction of the cost. Otherwise the whole
    model runs again.
    """
    labels = None if earlier.label is None else [earlier.label]
    if earlier.classifier_input is None:
        return probe(model, [earlier.image], labels, need=need)[0]
    wanted = _check_need(need)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            cls = model.classifier(earlier.classifier_input[None], return_intermediates=True)
            out = SegmentorOutput(logits=cls.logits, classifier=cls, input_size=earlier.input_size)
            full = _split_output(model, out, earlier.input_size, [earlier.image], [earlier.label], wanted)[0]
    finally:
        model.train(was_training)
    full.classifier_input = earlier.classifier_input
    return full


def _is_offset_classifier(model: nn.Module) -> bool:
    """Offset Learning classifiers have a class-offset projection; the per-pixel one does not."""
    classifier = getattr(model, "classifier", None)
    return classifier is not None and hasattr(classifier, "fused_scores")


def _split_logits(model, logits: Tensor, size, images, labels, wanted) -> list[ImageProbe]:
    """Logits (B, K, h, w) of the plain forward -> one ImageProbe per image (prediction, logits)."""
    padded = _padded_size(model, size)
    b, k, h, w = logits.shape
    pred = upsampled_argmax(logits.float(), padded, crop=size)  # (B, H, W)
    return _per_image(
        images,
        labels,
        pred,
        k,
        (h, w),
        _is_offset_classifier(model),
        size,
        padded,
        wanted,
        lambda i: {"logits": _np(logits[i]) if "logits" in wanted else None},
    )


def _per_image(
    images, labels, pred: Tensor, k: int, fsize, is_offset: bool, size, padded, wanted, outputs: Callable[[int], dict]
) -> list[ImageProbe]:
    """One ImageProbe per image of a batch: pred (B, H, W) class ids, K classes, the (h, w) feature grid;
    ``outputs(i)`` gives image i's requested outputs by field name."""
    return [
        ImageProbe(
            image=images[i],
            label=labels[i],
            prediction=pred[i].cpu().numpy().astype(np.int64),
            num_classes=int(k),
            feature_size=(int(fsize[0]), int(fsize[1])),
            is_offset_model=is_offset,
            input_size=tuple(size),
            padded_size=padded,
            computed=wanted,
            **outputs(i),
        )
        for i in range(pred.shape[0])
    ]


def _split_output(model, out, size, images, labels, wanted) -> list[ImageProbe]:
    """Batched SegmentorOutput -> one ImageProbe per image, keeping the ``wanted`` outputs only."""
    cls = out.classifier
    padded = _padded_size(model, size)
    fsize = tuple(cls.spatial_size) if cls.spatial_size is not None else tuple(out.logits.shape[-2:])
    b, k = out.logits.shape[:2]
    before = cls.logits_without_offsets.transpose(1, 2).reshape(b, k, *fsize)  # (B, N, K) -> (B, K, h, w)
    pred = upsampled_argmax(out.logits.float(), padded, crop=size)  # (B, H, W)
    pred_before = (
        upsampled_argmax(before.float(), padded, crop=size)  # (B, H, W)
        if "prediction_before_offsets" in wanted
        else None
    )
    is_offset = cls.feature_offset is not None
    available = set(OUTPUTS) - {"prediction"} - (set() if is_offset else OFFSET_ONLY)

    def take(name: str, i: int) -> np.ndarray:
        """Output ``name`` of image i as numpy, converted only when asked for."""
        if name == "prediction_before_offsets":
            return pred_before[i].cpu().numpy().astype(np.int64)
        if name == "logits":
            return _np(out.logits[i])
        if name == "logits_without_offsets":
            return _np(before[i])
        if name == "class_embed":
            w = cls.class_embed
            return _np(w if w.dim() == 2 else w[i])
        if name == "class_offset":
            return _np(cls.class_offset[i])
        if name == "refined_class_embed":
            return _np(cls.refined_class_embed[i])
        grid = _grid(getattr(cls, name)[i], fsize)  # (N, D) -> (h, w, D)
        return grid.transpose(2, 0, 1) if name == "class_attention" else grid  # class attention: (K, h, w)

    return _per_image(
        images,
        labels,
        pred,
        k,
        fsize,
        is_offset,
        size,
        padded,
        wanted,
        lambda i: {name: take(name, i) for name in sorted(wanted & available)},
    )


def label_at_features(
    label: np.ndarray,
    feature_size: tuple[int, int],
    padded_size: tuple[int, int] | None = None,
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Downsample an (H, W) label to the classifier grid (h, w) by majority vote inside each cell.

    Label pixel (y, x) of the (padded) canvas (Hp, Wp) falls in cell (y·h // Hp, x·w // Wp); each cell
    takes the most frequent value among its pixels, ``ignore_index`` counted as its own value (ties go to
    the lower class id, ignore last). Padding added for the backbone counts as ignore. Returns (h, w)
    int64 with ``ignore_index`` where ignore wins.
    """
    label = np.asarray(label).astype(np.int64)
    h_in, w_in = label.shape
    if padded_size is not None and tuple(padded_size) != (h_in, w_in):
        canvas = np.full(padded_size, ignore_index, dtype=np.int64)
        canvas[:h_in, :w_in] = label
        label = canvas
    hp, wp = label.shape
    h, w = feature_size
    valid = (label != ignore_index) & (label >= 0)
    k = int(num_classes if num_classes is not None else (label[valid].max() + 1 if valid.any() else 1))
    if valid.any() and label[valid].max() >= k:
        raise InputError(f"Label values go up to {label[valid].max()} but the model has {k} classes.")
    codes = np.where(valid, label, k)  # ignore -> extra value k
    rows = np.arange(hp) * h // hp  # (Hp,) cell row of each label row
    cols = np.arange(wp) * w // wp  # (Wp,)
    cell = rows[:, None] * w + cols[None, :]  # (Hp, Wp) flat cell index
    votes = np.bincount((cell * (k + 1) + codes).ravel(), minlength=h * w * (k + 1)).reshape(h, w, k + 1)
    winner = votes.argmax(-1).astype(np.int64)  # (h, w)
    winner[winner == k] = ignore_index
    return winner


def label_probe_at_features(p: ImageProbe, ignore_index: int = IGNORE_INDEX) -> np.ndarray | None:
    """The probe's label at its feature resolution (see :func:`label_at_features`), or None."""
    if p.label is None:
        return None
    return label_at_features(p.label, p.feature_size, p.padded_size, p.num_classes, ignore_index)
