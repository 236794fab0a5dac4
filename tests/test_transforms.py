"""Transforms: image and mask stay aligned, masks keep their values, cat_max_ratio, photometric, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offseg_vis.constants import IMAGENET_MEAN, IMAGENET_STD
from offseg_vis.data.transforms import (
    TestTransform,
    TrainTransform,
    TransformedDataset,
    photometric_distortion,
    random_crop_box,
    rescaled_size,
    resize_mask,
    to_normalized_tensor,
)
from offseg_vis.errors import InputError

COLOURS = np.array([[230, 20, 20], [20, 200, 40], [30, 40, 220], [240, 240, 30]], dtype=np.uint8)


def cell_pattern(height=64, width=80, cell=8, seed=0):
    """Cells of random class; each class has its own colour, so the label is computable from the pixel."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, len(COLOURS), size=(height // cell + 1, width // cell + 1))
    mask = np.kron(classes, np.ones((cell, cell), dtype=np.int64))[:height, :width]
    return COLOURS[mask], mask.astype(np.int64)


def denormalize(image: torch.Tensor) -> np.ndarray:
    mean, std = np.asarray(IMAGENET_MEAN) * 255, np.asarray(IMAGENET_STD) * 255
    return image.numpy().transpose(1, 2, 0) * std + mean  # (H, W, 3)


def colour_labels(pixels: np.ndarray, tolerance: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Nearest pattern colour of each pixel and whether the pixel is that colour (not a blend)."""
    distance = np.linalg.norm(pixels[:, :, None, :] - COLOURS[None, None].astype(float), axis=-1)
    return distance.argmin(-1), distance.min(-1) < tolerance


def alignment(image: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Share of pure-colour labelled pixels whose colour class equals their label, and their count."""
    nearest, pure = colour_labels(denormalize(image))
    labelled = mask.numpy() != 255
    checked = pure & labelled
    return float((nearest[checked] == mask.numpy()[checked]).mean()), int(checked.sum())


def test_train_transform_keeps_image_and_mask_aligned():
    image, mask = cell_pattern()
    transform = TrainTransform(crop_size=48, photometric=False)
    for seed in range(12):
        out_image, out_mask = transform(image, mask, np.random.default_rng(seed))
        assert out_image.shape == (3, 48, 48) and out_image.dtype == torch.float32
        assert out_mask.shape == (48, 48) and out_mask.dtype == torch.int64
        agreement, checked = alignment(out_image, out_mask)
        assert checked > 0.3 * (out_mask != 255).sum().item()
        assert agreement == 1.0, seed
        # The check can fail: a one-pixel shift of the mask breaks it.
        shifted = torch.roll(out_mask, shifts=2, dims=1)
        assert alignment(out_image, shifted)[0] < 0.97


def test_masks_never_gain_values():
    rng = np.random.default_rng(1)
    mask = rng.choice(np.array([0, 3, 7, 255]), size=(37, 53)).astype(np.int64)
    image = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    transform = TrainTransform(crop_size=(40, 64), ratio_range=(0.3, 2.7))
    for seed in range(20):
        _, out_mask = transform(image, mask, np.random.default_rng(seed))
        assert set(out_mask.unique().tolist()) <= {0, 3, 7, 255}
    for size in [(11, 19), (74, 106), (50, 50)]:
        assert set(np.unique(resize_mask(mask, size))) <= {0, 3, 7, 255}


def test_resize_mask_is_nearest_neighbour():
    mask = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(resize_mask(mask, (6, 8)), np.repeat(np.repeat(mask, 2, 0), 2, 1))
    np.testing.assert_array_equal(resize_mask(np.repeat(mask, 2, 0), (3, 4)), mask)


def test_cat_max_ratio_is_honoured():
    # 64 x 64: left 40 columns class 0, right 24 class 1. A 32 x 32 crop has class 0 under 75 %
    # only when x0 > 16 (15 of 33 positions), so an unconstrained crop often violates it.
    mask = np.zeros((64, 64), dtype=np.int64)
    mask[:, 40:] = 1

    def dominant_share(box):
        y0, y1, x0, x1 = box
        counts = np.bincount(mask[y0:y1, x0:x1].ravel(), minlength=2)
        return counts.max() / counts.sum()

    constrained = [
        dominant_share(random_crop_box(mask, (32, 32), np.random.default_rng(s), 0.75)) for s in range(60)
    ]
    free = [dominant_share(random_crop_box(mask, (32, 32), np.random.default_rng(s), 1.0)) for s in range(60)]
    assert max(constrained) < 0.75
    assert max(free) >= 0.75  # the test can fail
    # Ignored pixels do not count: the crop is judged on labelled pixels only.
    mask_ignored = mask.copy()
    mask_ignored[:, :20] = 255
    box = random_crop_box(mask_ignored, (32, 32), np.random.default_rng(0), 0.75)
    window = mask_ignored[box[0] : box[1], box[2] : box[3]]
    labelled = window[window != 255]
    assert np.bincount(labelled).max() / labelled.size < 0.75


def test_photometric_step_never_touches_the_mask():
    image, mask = cell_pattern(seed=3)
    with_photo = TrainTransform(crop_size=48, photometric=True)
    without = TrainTransform(crop_size=48, photometric=False)
    changed = 0
    for seed in range(8):
        image_a, mask_a = with_photo(image, mask, np.random.default_rng(seed))
        image_b, mask_b = without(image, mask, np.random.default_rng(seed))
        torch.testing.assert_close(mask_a, mask_b, rtol=0, atol=0)
        changed += not torch.allclose(image_a, image_b)
    assert changed >= 4


def test_photometric_distortion_stays_in_range_and_varies():
    image = np.random.default_rng(0).uniform(0, 255, size=(16, 16, 3)).astype(np.float32)
    outputs = [photometric_distortion(image, np.random.default_rng(s)) for s in range(10)]
    assert all(o.shape == image.shape and o.min() >= 0 and o.max() <= 255 for o in outputs)
    assert sum(not np.allclose(o, image) for o in outputs) >= 7


def test_padding_to_crop_size():
    image, mask = cell_pattern(height=20, width=30)
    transform = TrainTransform(crop_size=32, ratio_range=(1.0, 1.0), flip_prob=0.0, photometric=False)
    out_image, out_mask = transform(image, mask, np.random.default_rng(0))
    assert out_image.shape == (3, 32, 32) and out_mask.shape == (32, 32)
    assert (out_mask[20:] == 255).all() and (out_mask[:, 30:] == 255).all()
    assert (out_image[:, 20:] == 0).all() and (out_image[:, :, 30:] == 0).all()
    np.testing.assert_array_equal(out_mask[:20, :30].numpy(), mask)


def test_flip_moves_image_and_mask_together():
    image, mask = cell_pattern(height=32, width=32)
    transform = TrainTransform(crop_size=32, ratio_range=(1.0, 1.0), flip_prob=1.0, photometric=False)
    out_image, out_mask = transform(image, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(out_mask.numpy(), mask[:, ::-1])
    np.testing.assert_allclose(denormalize(out_image), image[:, ::-1].astype(float), atol=1e-3)


def test_rescaled_size_follows_the_keep_ratio_rule():
    assert rescaled_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert rescaled_size(1024, 2048, (2048, 1024), ratio=0.5) == (512, 1024)
    assert rescaled_size(375, 500, (2048, 512)) == (512, 683)  # short side bound
    assert rescaled_size(128, 128, None, ratio=1.5) == (192, 192)


def test_test_transform_normalises_and_keeps_mask():
    image, mask = cell_pattern(height=40, width=60)
    out_image, out_mask = TestTransform()(image, mask)
    expected = (image[5, 7] / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    np.testing.assert_allclose(out_image[:, 5, 7].numpy(), expected, rtol=1e-5)
    np.testing.assert_array_equal(out_mask.numpy(), mask)
    resized, kept = TestTransform(scale=(120, 80))(image, mask)
    assert resized.shape == (3, 80, 120) and kept.shape == (40, 60)
    assert to_normalized_tensor(image).shape == (3, 40, 60)


def test_bad_inputs_raise_input_error():
    image, mask = cell_pattern(height=16, width=16)
    with pytest.raises(InputError, match="differ"):
        TrainTransform(8)(image, mask[:8], np.random.default_rng(0))
    with pytest.raises(InputError, match="uint8"):
        TestTransform()(image.astype(np.float32), mask)


class _Toy:
    """Tiny stand-in dataset that records set_epoch calls."""

    classes = ("a", "b", "c", "d")
    palette = tuple(map(tuple, COLOURS))

    def __init__(self):
        self.epoch = 0
        self.items = [cell_pattern(seed=s) for s in range(3)]

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return self.items[i][0], self.items[i][1], f"toy{i}"


def test_transformed_dataset_is_reproducible_per_seed_epoch_index():
    toy = _Toy()
    data = TransformedDataset(toy, TrainTransform(crop_size=40), seed=7)
    first = data[1]
    again = TransformedDataset(_Toy(), TrainTransform(crop_size=40), seed=7)[1]
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    data.set_epoch(1)
    assert toy.epoch == 1
    assert not torch.equal(data[1][0], first[0])
    data.set_epoch(0)
    torch.testing.assert_close(data[1], first, rtol=0, atol=0)
    assert data.name(2) == "toy2" and len(data) == 3 and data.num_classes == 4
