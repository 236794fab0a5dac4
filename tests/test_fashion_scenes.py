"""FashionScenes: determinism, disjoint train/val, labels that agree with pixels, the cache, errors."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import missing
from scipy import ndimage

from offseg_vis.data import fashion_scenes as fs
from offseg_vis.data.backgrounds import TRAIN_BACKGROUNDS, VAL_BACKGROUNDS, background_pyramid
from offseg_vis.data.fashion_mnist import FMNIST_FILES, find_fashion_mnist, load_fashion_mnist
from offseg_vis.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def fmnist_dir():
    """The installed Fashion-MNIST (Debian package or $OFFSEG_FMNIST); `make setup` installs it."""
    try:
        return find_fashion_mnist()
    except DatasetError as err:
        missing(str(err))


SMALL = fs.FashionScenesConfig(size=64, item_min=16, item_max=32, min_items=2, max_items=4)


def test_classes_and_palette():
    assert len(fs.CLASSES) == 11 and fs.CLASSES[0] == "background"
    assert fs.CLASSES[1:] == (
        "T-shirt/top", "trouser", "pullover", "dress", "coat",
        "sandal", "shirt", "sneaker", "bag", "ankle boot",
    )  # fmt: skip
    assert len(fs.PALETTE) == 11 and len(set(fs.PALETTE)) == 11
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in fs.PALETTE)


def test_scene_is_a_pure_function_of_seed_split_index_config(fmnist_dir):
    image, mask = fs.generate_scene("val", 3)
    again_image, again_mask = fs.generate_scene("val", 3, fs.FashionScenesConfig())
    assert image.dtype == np.uint8 and image.shape == (128, 128, 3)
    assert mask.dtype == np.int64 and mask.shape == (128, 128)
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(mask, again_mask)
    assert set(np.unique(mask)) <= set(range(11)) and mask.max() > 0
    other_index, _ = fs.generate_scene("val", 4)
    other_seed, _ = fs.generate_scene("val", 3, fs.FashionScenesConfig(seed=1))
    other_split, _ = fs.generate_scene("train", 3)
    for other in (other_index, other_seed, other_split):
        assert not np.array_equal(image, other)


def test_style_changes_look_not_layout(fmnist_dir):
    plain, plain_mask = fs.generate_scene("train", 5, replace(SMALL, style=0.0))
    styled, styled_mask = fs.generate_scene("train", 5, replace(SMALL, style=1.0))
    np.testing.assert_array_equal(plain_mask, styled_mask)
    assert np.abs(plain.astype(int) - styled.astype(int)).mean() > 1.0


def test_train_and_val_are_disjoint(fmnist_dir):
    assert set(TRAIN_BACKGROUNDS).isdisjoint(VAL_BACKGROUNDS)
    assert len(VAL_BACKGROUNDS) >= 5 and len(TRAIN_BACKGROUNDS) >= 15
    pools = {"train": load_fashion_mnist("train"), "val": load_fashion_mnist("t10k")}
    assert len(pools["train"].labels) == 60000 and len(pools["val"].labels) == 10000
    seen = {"train": set(), "val": set()}
    for split, names in (("train", TRAIN_BACKGROUNDS), ("val", VAL_BACKGROUNDS)):
        for i in range(12):
            _, mask, info = fs.generate_scene_with_info(split, i, SMALL)
            assert info.background in names
            seen[split].add(info.background)
            for item in info.items:
                # Items come from the split's own Fashion-MNIST file (train vs t10k): the class
                # written into the mask is that file's label of the drawn index.
                assert item["class_id"] == pools[split].labels[item["fmnist_index"]] + 1
                assert item["class_id"] in mask
    assert seen["train"].isdisjoint(seen["val"])


def test_every_background_source_loads_offline():
    for name in list(TRAIN_BACKGROUNDS) + list(VAL_BACKGROUNDS):
        levels, _ = background_pyramid(name)
        assert levels[0].mode == "RGB" and min(levels[0].size) >= 100, name


def _repaint(split, index, config):
    """Redraw a scene's items from its info with style 0: what each pixel must show and be labelled."""
    image, mask, info = fs.generate_scene_with_info(split, index, config)
    pool = load_fashion_mnist(fs.FMNIST_SPLIT[split])
    expected_mask = np.zeros_like(mask)
    expected_colour = np.full(image.shape, -1.0)
    for item in info.items:
        tint = None if item["tint"] is None else np.asarray(item["tint"], dtype=np.float32)
        silhouette, colour = fs._render_item(
            pool, item["fmnist_index"], item["size"], item["flip"], tint, config.silhouette_threshold
        )
        window = (slice(item["y"], item["y"] + item["size"]), slice(item["x"], item["x"] + item["size"]))
        expected_mask[window][silhouette] = item["class_id"]
        expected_colour[window][silhouette] = colour[silhouette]
    return image, mask, expected_mask, expected_colour, info


def test_labels_are_the_opaque_filled_silhouettes(fmnist_dir):
    config = replace(SMALL, style=0.0)
    for index in range(6):
        image, mask, expected_mask, expected_colour, info = _repaint("val", index, config)
        np.testing.assert_array_equal(mask, expected_mask)
        drawn = expected_colour[..., 0] >= 0
        assert drawn.sum() == (mask > 0).sum() > 0
        # Opaque: item pixels are exactly the item's colour (no blend with the background).
        np.testing.assert_allclose(image[drawn].astype(float), np.rint(expected_colour[drawn]), atol=1.0)
        assert 255 not in mask


def test_silhouettes_have_no_holes_and_rarely_split(fmnist_dir):
    pool = load_fashion_mnist("t10k")
    pieces = {}
    for cls in (5, 7, 8):  # sandal, sneaker, bag: the classes a plain threshold broke
        indices = np.flatnonzero(pool.labels == cls)[:60]
        counts = []
        for index in indices:
            silhouette, _ = fs._render_item(pool, int(index), 48, False, None, 0.05)
            np.testing.assert_array_equal(ndimage.binary_fill_holes(silhouette), silhouette)
            counts.append(ndimage.label(silhouette)[1])
        pieces[cls] = np.mean(np.asarray(counts) > 1)
    assert all(share <= 0.05 for share in pieces.values()), pieces


def test_no_item_is_less_than_half_visible(fmnist_dir):
    shares = []
    for index in range(40):
        _, mask, info = fs.generate_scene_with_info("val", index, replace(SMALL, min_items=4, max_items=5))
        for item in info.items:
            shares.append(item["visible"] / item["area"])
    assert len(shares) >= 140 and min(shares) >= 0.5
    # The check is not vacuous: allowing 95 % occlusion leaves some items mostly hidden.
    loose = replace(SMALL, min_items=4, max_items=5, max_hidden=0.95)
    loose_shares = [
        item["visible"] / item["area"]
        for index in range(40)
        for item in fs.generate_scene_with_info("val", index, loose)[2].items
    ]
    assert min(loose_shares) < 0.5


def test_config_validation():
    with pytest.raises(ConfigError, match="item_max"):
        fs.FashionScenesConfig(item_min=40, item_max=30)
    with pytest.raises(ConfigError, match="style"):
        fs.FashionScenesConfig(style=1.5)
    with pytest.raises(ConfigError, match="Unknown"):
        fs.config_from_dict({"sise": 64})
    with pytest.raises(ConfigError, match="split"):
        fs.generate_scene("test", 0)


def test_cache_is_byte_identical_and_read_back(tmp_path, fmnist_dir):
    first = fs.build_cache(tmp_path / "a", "val", 5, SMALL, progress=False)
    second = fs.build_cache(tmp_path / "b", "val", 5, SMALL, progress=False)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 2 * 5 + 2
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["generator_version"] == fs.GENERATOR_VERSION and manifest["count"] == 5
    assert manifest["config"]["size"] == 64 and manifest["seed"] == 0
    assert abs(sum(manifest["class_pixel_share"].values()) - 1.0) < 1e-4
    assert manifest["share_items_less_than_half_visible"] == 0.0
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temp leftovers

    dataset = fs.FashionScenes("val", root=tmp_path / "a", config=SMALL, length=5, progress=False)
    assert dataset.folder == first and len(dataset) == 5 and dataset.num_classes == 11
    image, mask, name = dataset[2]
    ref_image, ref_mask = fs.generate_scene("val", 2, SMALL)
    np.testing.assert_array_equal(image, ref_image)
    np.testing.assert_array_equal(mask, ref_mask)
    assert mask.dtype == np.int64 and name == "val_000002"
    # A shorter request reuses the longer cache (scenes are prefixes of each other).
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert len(fs.FashionScenes("val", root=tmp_path / "a", config=SMALL, length=3, progress=False)) == 3
    assert (first / "manifest.json").stat().st_mtime_ns == stamp


def test_stale_cache_is_rebuilt(tmp_path, fmnist_dir):
    folder = fs.build_cache(tmp_path, "val", 2, SMALL, progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["generator_version"] = "0.1"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    dataset = fs.FashionScenes("val", root=tmp_path, config=SMALL, length=3, progress=False)
    assert json.loads((folder / "manifest.json").read_text())["generator_version"] == fs.GENERATOR_VERSION
    assert len(dataset) == 3 and dataset[2][1].shape == (64, 64)


def test_default_config_uses_plain_split_folder(tmp_path):
    assert fs.split_dir(tmp_path, "val", fs.FashionScenesConfig()) == tmp_path / "val"
    assert fs.split_dir(tmp_path, "val", SMALL).name.startswith("val-")


def test_default_root_follows_offseg_data(monkeypatch, tmp_path):
    monkeypatch.setenv("OFFSEG_DATA", str(tmp_path))
    assert fs.default_root() == tmp_path / "fashion_scenes"


def test_stream_gives_fresh_scenes_each_epoch(fmnist_dir, tmp_path):
    stream = fs.FashionScenes("train", root=tmp_path, config=SMALL, length=4)
    assert stream.stream and len(stream) == 4 and not any(tmp_path.iterdir())
    first = stream[1]
    stream.set_epoch(2)
    second = stream[1]
    assert first[2] == "train_000001" and second[2] == "train_000009"  # scene id = epoch * length + i
    np.testing.assert_array_equal(second[0], fs.generate_scene("train", 9, SMALL)[0])
    assert not np.array_equal(first[0], second[0])


def test_missing_fashion_mnist_names_files_and_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFSEG_FMNIST", str(tmp_path))
    with pytest.raises(DatasetError) as err:
        find_fashion_mnist(tmp_path)
    message = str(err.value)
    for pair in FMNIST_FILES.values():
        for name in pair:
            assert name in message
    assert "--fmnist" in message and "OFFSEG_FMNIST" in message


def test_fashion_mnist_from_env_and_truncated_file(tmp_path, monkeypatch, fmnist_dir):
    for pair in FMNIST_FILES.values():
        for name in pair:
            (tmp_path / name).symlink_to(fmnist_dir / name)
    monkeypatch.setenv("OFFSEG_FMNIST", str(tmp_path))
    assert find_fashion_mnist() == tmp_path
    broken = tmp_path / "broken"
    broken.mkdir()
    for pair in FMNIST_FILES.values():
        for name in pair:
            (broken / name).symlink_to(fmnist_dir / name)
    (broken / "t10k-labels-idx1-ubyte.gz").unlink()
    with gzip.open(broken / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(np.array([2049, 10000], dtype=">i4").tobytes() + bytes(10))  # 9,990 labels short
    with pytest.raises(DatasetError, match="truncated"):
        load_fashion_mnist("t10k", broken)


# Digest of 24 scenes of generator version 2.0 (train and val, indices 0-3, style 0 / 0.5 / 1) as
# generated before the class looks were added. If it changes, scenes changed: bump
# GENERATOR_VERSION (caches and the experiment's results depend on it).
V2_0_DIGEST = "56d9c7778ebdbbdf0204a15c51af8abc66afe6b96e7aa76de53eb06a1bfe6363"


def test_class_looks_off_leave_version_2_0_scenes_unchanged(fmnist_dir):
    import hashlib

    digest = hashlib.sha256()
    for split in ("train", "val"):
        for index in range(4):
            for style in (0.0, 0.5, 1.0):
                image, mask = fs.generate_scene(split, index, fs.FashionScenesConfig(style=style))
                digest.update(image.tobytes())
                digest.update(mask.astype(np.uint8).tobytes())
    assert digest.hexdigest() == V2_0_DIGEST
    # new parameters at their "off" values do not rename earlier caches
    assert fs.FashionScenesConfig(class_style=0.0, classes_per_scene=0).key() == fs.FashionScenesConfig().key()
    assert fs.FashionScenesConfig(class_style=1.0).key() != fs.FashionScenesConfig().key()


def test_class_looks_are_shared_within_a_scene_and_differ_across_scenes(fmnist_dir):
    looks = replace(SMALL, style=0.0, class_style=1.0, classes_per_scene=2, min_items=4, max_items=4)
    colours: dict[int, list[np.ndarray]] = {}
    for index in range(12):
        image, mask, info = fs.generate_scene_with_info("train", index, looks)
        present = {item["class_id"] for item in info.items}
        assert 1 <= len(present) <= 2  # two classes per scene
        assert set(np.unique(mask)) - {0} <= present
        for class_id in present:
            pixels = image[mask == class_id].astype(float)
            bright = pixels[pixels.sum(1) > pixels.sum(1).mean()]  # skip the dark stripes
            colours.setdefault(class_id, []).append(bright.mean(0) / max(bright.mean(), 1e-6))
    # the same class changes colour from scene to scene (chromaticity spread across scenes)
    spreads = [np.std(np.stack(c), axis=0).mean() for c in colours.values() if len(c) >= 3]
    assert spreads and max(spreads) > 0.1
    # within a scene, every item of a class carries the same look: at full strength an item's
    # colour is shade x look colour x stripes, so separate items of one class share a chromaticity
    pairs = 0
    for index in range(40):
        image, mask, _ = fs.generate_scene_with_info("train", index, looks)
        for class_id in set(np.unique(mask)) - {0}:
            parts, count = ndimage.label(mask == class_id)
            chroma = []
            for part in range(1, count + 1):
                px = image[parts == part].astype(float)
                px = px[px.sum(1) > 30]  # lit pixels only
                if len(px) > 20:
                    chroma.append(px.mean(0) / px.mean())
            for other in chroma[1:]:
                assert np.abs(chroma[0] - other).max() < 0.15
                pairs += 1
    assert pairs >= 3


def test_class_look_parameters_are_validated():
    with pytest.raises(ConfigError, match="class_style"):
        fs.FashionScenesConfig(class_style=1.5)
    with pytest.raises(ConfigError, match="classes_per_scene"):
        fs.FashionScenesConfig(classes_per_scene=11)


def test_scene_preset_of_names_each_preset_and_nothing_else():
    from dataclasses import asdict

    for name, options in fs.SCENE_PRESETS.items():
        assert fs.scene_preset_of(asdict(fs.FashionScenesConfig(**options, style=0.2, seed=3))) == name
        assert fs.scene_preset_of(dict(options)) == name  # missing keys at their defaults
    assert fs.scene_preset_of({"class_style": 0.5}) is None
    assert fs.scene_preset_of({"class_style": 1.0, "classes_per_scene": 3}) is None
