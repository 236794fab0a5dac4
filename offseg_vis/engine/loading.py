"""Training data plumbing: datasets from a config, and samplers whose order is a pure function of
(seed, epoch), so a resumed run reads exactly the batches it would have read.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DistributedSampler

from offseg_vis.engine.config import Config, as_pair
from offseg_vis.errors import ConfigError


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler that yields ``(epoch, index)`` pairs and can skip the start of an epoch.

    The shuffled order is a pure function of (seed, epoch) and identical on every rank; rank r takes
    positions r, r + world, ... so the union of the ranks' b-th batches is the b-th global batch of a
    single process with the global batch size. ``start_index`` skips samples already consumed
    (exact resume in the middle of an epoch). Yielding the epoch with the index lets the dataset
    follow the epoch even inside persistent DataLoader workers.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
        )
        self.start_index = 0

    def __iter__(self):
        epoch = self.epoch
        for position, index in enumerate(super().__iter__()):
            if position >= self.start_index:
                yield (epoch, index)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start_index)


class EpochIndexedDataset(torch.utils.data.Dataset):
    """Wraps a TransformedDataset: item ``(epoch, i)`` -> (image (3, H, W), mask (H, W), i)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self._epoch = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if epoch != self._epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
            self._epoch = epoch
        image, mask = self.dataset[index][:2]
        return image, mask, index


def build_datasets(config: Config, train_raw=None, val_raw=None):
    """(train TransformedDataset, raw val dataset, val transform, class names, palette)."""
    from offseg_vis.data.transforms import TestTransform, TrainTransform, TransformedDataset

    d = config.data
    if train_raw is None:
        train_raw = build_dataset(
            d.dataset, root=d.root, split=d.train_split, **{**d.dataset_options, **d.train_options}
        )
    if val_raw is None:
        val_raw = build_dataset(
            d.dataset, root=d.root, split=d.val_split, **{**d.dataset_options, **d.val_options}
        )
    transform = TrainTransform(
        crop_size=as_pair(d.crop_size),
        scale=as_pair(d.scale),
        ratio_range=tuple(d.ratio_range),
        cat_max_ratio=d.cat_max_ratio,
        flip_prob=d.flip_prob,
        photometric=d.photometric,
    )
    train_ds = TransformedDataset(train_raw, transform, seed=config.runtime.seed)
    val_transform = TestTransform(scale=as_pair(config.test.scale))
    classes = list(getattr(train_raw, "classes", None) or getattr(val_raw, "classes", None) or [])
    palette = getattr(train_raw, "palette", None) or getattr(val_raw, "palette", None)
    return train_ds, val_raw, val_transform, classes, palette


def build_dataset(name: str, root=None, split: str = "train", **options):
    """``offseg_vis.data.datasets.build_dataset``; FashionScenes also works without that module."""
    try:
        from offseg_vis.data.datasets import build_dataset as build
    except ImportError:  # the real-dataset readers are optional for FashionScenes
        build = _build_fashion_scenes
    return build(name, root=root, split=split, **options)


def _build_fashion_scenes(name: str, root=None, split: str = "train", **options):
    """FashionScenes without ``offseg_vis.data.datasets`` (generator options go to its config)."""
    from offseg_vis.data.fashion_scenes import FashionScenes, config_from_dict

    if name != "fashion-scenes":
        raise ConfigError(f"Dataset {name!r} needs offseg_vis.data.datasets, which is not available.")
    config = options.pop("config", None)
    if isinstance(config, dict):
        config = config_from_dict(config)
    return FashionScenes(split=split, root=root, config=config, **options)


def batch_names(dataset, indices: Sequence[int]) -> list[str]:
    names = []
    for i in indices:
        try:
            names.append(str(dataset.name(int(i))))
        except Exception:  # a dataset without names: the index is still useful
            names.append(f"#{int(i)}")
    return names
