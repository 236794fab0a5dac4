"""The one run API: a config's data splits and a checkpoint's model, each built one way for train,
eval, export, predict, the experiment, the app and the notebooks.

:func:`datasets_for` builds a split of a :class:`~offseg_vis.engine.config.Config` with the transform
that split uses (the training recipe, or the test transform with ``test.scale``) and its class names;
:func:`evaluate_split` scores a model on it with the config's test protocol. Every caller goes
through these two, so an exported card's mIoU and ``offseg eval``'s cannot drift apart.
:func:`load_run` loads a checkpoint with its card, class names and palette.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from offseg_vis.data.datasets import build_dataset, canonical_name
from offseg_vis.data.fashion_scenes import open_stored_set
from offseg_vis.data.transforms import TestTransform, TrainTransform, TransformedDataset
from offseg_vis.engine.checkpoint import load_model
from offseg_vis.engine.config import Config, TestConfig, as_pair
from offseg_vis.engine.evaluate import SegMetrics, evaluate
from offseg_vis.errors import ConfigError
from offseg_vis.models.weights import weights_path

ROLES = ("train", "val")


@dataclass
class DataSplit:
    """One split of a config's dataset with the transform it is used with.

    Attributes:
        role: "train" (the training recipe's augmentation) or "val" (the test transform).
        dataset: the raw dataset; items are ``(image uint8 (H, W, 3), mask int64 (H, W), name)``.
        transform: :class:`TrainTransform` for train, :class:`TestTransform` (``test.scale``) for val.
        classes: the K class names in label order (empty when the dataset names none).
        palette: K RGB triples, or None.
        note: how the set was chosen when that is not obvious from the config (or None).
    """

    role: str
    dataset: Any
    transform: TrainTransform | TestTransform
    classes: list[str] = field(default_factory=list)
    palette: Any = None
    note: str | None = None

    def transformed(self, seed: int = 0) -> TransformedDataset:
        """The dataset seen through the transform: items ``(image float32 (3, h, w), mask int64 (h, w))``;
        the random draws of item i depend only on (seed, epoch, i)."""
        return TransformedDataset(self.dataset, self.transform, seed=seed)

    def describe(self) -> str:
        """One line naming the set: dataset, split, number of images, folder and (FashionScenes)
        generator parameters."""
        describe = getattr(self.dataset, "describe", None)
        what = describe() if callable(describe) else f"{type(self.dataset).__name__} ({len(self.dataset)} images)"
        note = f" ({self.note})" if self.note else ""
        return f"{what}{note}; {self.role} transform {self.transform!r}"


def _split_options(cfg: Config, role: str) -> tuple[str, dict]:
    d = cfg.data
    if role == "train":
        return d.train_split, {**d.dataset_options, **d.train_options}
    return d.val_split, {**d.dataset_options, **d.val_options}


def datasets_for(cfg: Config, split: str, raw: Any = None, stored_root: str | Path | None = None) -> DataSplit:
    """Build the ``split`` of ``cfg``'s dataset with its transform and class names.

    Args:
        cfg: the run's config (``data`` and ``test`` sections are read).
        split: "train" (``data.train_split``, ``train_options``, the training augmentation) or "val"
            (``data.val_split``, ``val_options``, ``TestTransform(test.scale)``).
        raw: use this dataset instead of building one (tests, callers that already hold it).
        stored_root: a folder whose stored data is to be used as it is: for FashionScenes the one
            stored set of the split under it, read by its manifest (seed and parameters from the
            manifest, not from ``cfg``; several sets are refused; with none, ``cfg``'s set is
            generated there and the split's ``note`` says so); for the other datasets the dataset
            root. Without it, FashionScenes follows ``cfg``'s generator parameters (cached under
            ``data.root``).

    Returns:
        a :class:`DataSplit`.

    Raises:
        ConfigError: ``split`` is not "train" or "val"; DatasetError: the data is missing or ambiguous.
    """
    if split not in ROLES:
        raise ConfigError(f"datasets_for builds the 'train' or 'val' split of a config, not {split!r}.")
    d = cfg.data
    name, options = _split_options(cfg, split)
    note = None
    if raw is None and stored_root is not None and canonical_name(d.dataset) == "fashion-scenes":
        raw = open_stored_set(stored_root, name)
        if raw is None:
            note = f"{stored_root} held no stored {name} set, so the config's set is generated there"
    if raw is None:
        raw = build_dataset(d.dataset, root=stored_root if stored_root is not None else d.root, split=name, **options)
    if split == "train":
        transform = TrainTransform(
            crop_size=as_pair(d.crop_size),
            scale=as_pair(d.scale),
            ratio_range=tuple(d.ratio_range),
            cat_max_ratio=d.cat_max_ratio,
            flip_prob=d.flip_prob,
            photometric=d.photometric,
        )
    else:
        transform = TestTransform(scale=as_pair(cfg.test.scale))
    classes = list(getattr(raw, "classes", None) or [])
    return DataSplit(split, raw, transform, classes, getattr(raw, "palette", None), note)


def evaluate_split(
    model: Any,
    data: DataSplit,
    test: TestConfig,
    class_names: list[str] | None = None,
    max_images: int | None = None,
    **options: Any,
) -> SegMetrics:
    """Score ``model`` on ``data`` (its transform) with the protocol of ``test``: mode, crop, stride
    and batch size.

    Args:
        class_names: K names for the table (default: the split's).
        max_images: score only the first N images (default: all; ``test.max_images`` is the
            trainer's shortcut for periodic evaluations and is not applied here).
        options: further keyword arguments of :func:`evaluate` (``device``, ``progress``, ...).
    """
    return evaluate(
        model,
        data.dataset,
        mode=test.mode,
        crop=as_pair(test.crop_size),
        stride=as_pair(test.stride),
        batch_size=test.batch_size,
        max_images=max_images,
        class_names=class_names or data.classes or None,
        transform=data.transform,
        **options,
    )


@dataclass
class LoadedRun:
    """A checkpoint, loaded: the model with everything its card says.

    Attributes:
        path: the weights file.
        model: the Segmentor in eval mode.
        card: the checkpoint's card (metadata), with ``class_names``, ``palette`` and ``classes_source``.
        class_names: K names in label order.
        palette: (K, 3) uint8 colours.
        classes_source: where names and palette came from (print it when they are not the card's own).
    """

    path: Path
    model: nn.Module
    card: dict
    class_names: list[str]
    palette: np.ndarray
    classes_source: str

    @property
    def model_name(self) -> str:
        return str(self.card.get("model"))

    @property
    def classifier(self) -> str:
        """ "offset" or "linear"."""
        return str(self.card.get("classifier") or (self.card.get("config") or {}).get("model", {}).get("classifier"))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_run(checkpoint: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Build the model a checkpoint's card names, load its weights (strict) and its classes.

    Raises:
        CheckpointError: missing or damaged file, or a card that does not name its model.
    """
    model, card = load_model(checkpoint, device)
    return LoadedRun(
        path=weights_path(checkpoint),
        model=model,
        card=card,
        class_names=list(card["class_names"]),
        palette=np.asarray(card["palette"], dtype=np.uint8).reshape(-1, 3),
        classes_source=str(card["classes_source"]),
    )
