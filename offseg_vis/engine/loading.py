"""Training data plumbing: samplers whose order is a pure function of (seed, epoch), so a resumed run
reads exactly the batches it would have read. The datasets themselves come from the one run API,
:func:`offseg_vis.engine.run.datasets_for`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler that yields ``(epoch, index)`` pairs and can skip the start of an epoch.

    The shuffled order is a pure function of (seed, epoch) and identical on every rank; rank r takes
    positions r, r + world, ... so the union of the ranks' b-th batches is the b-th global batch of a
    single process with the global batch size. ``start_index`` skips samples already consumed
    (exact resume in the middle of an epoch). Yielding the epoch with the index lets the dataset
    follow the epoch even inside persistent DataLoader workers.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
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


def batch_names(dataset, indices: Sequence[int]) -> list[str]:
    """The file names of a batch's items (``#i`` for a dataset without names), for error messages."""
    names = []
    for i in indices:
        try:
            names.append(str(dataset.name(int(i))))
        except Exception:  # a dataset without names: the index is still useful
            names.append(f"#{int(i)}")
    return names
