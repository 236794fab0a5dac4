"""Dataset readers on tiny fixture trees in every layout, the label converters, bad data, `offseg data`."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from conftest import missing
from PIL import Image

from offseg_vis.data import commands
from offseg_vis.data.class_names import ADE20K_CLASSES, CITYSCAPES_CLASSES, COCO_STUFF_CLASSES
from offseg_vis.data.datasets import (
    ADE20K,
    Cityscapes,
    COCOStuff,
    FolderDataset,
    PascalContext59,
    build_dataset,
    check_dataset,
    cityscapes_label_ids_to_train_ids,
    coco_stuff_raw_to_train_ids,
    convert_cityscapes,
    convert_coco_stuff,
)
from offseg_vis.errors import ConfigError, DatasetError


def write_pair(image_path: Path, mask_path: Path, mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """Write an RGB image (PNG or JPEG by suffix) and a single-channel mask; returns the image."""
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, size=(*mask.shape, 3), dtype=np.uint8)
    Image.fromarray(image).save(image_path)
    Image.fromarray(mask.astype(np.uint8)).save(mask_path)
    return image


def ramp(values, shape=(6, 8)) -> np.ndarray:
    """A mask cycling through ``values`` (so every value appears)."""
    return np.resize(np.asarray(values), shape[0] * shape[1]).reshape(shape)


# ----------------------------------------------------------------------------- converters


def test_cityscapes_label_ids_to_train_ids_matches_the_official_table():
    ids = np.array([0, 1, 6, 7, 8, 9, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 31, 32, 33, 34])
    expected = [
        255,
        255,
        255,
        0,
        1,
        255,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        10,
        11,
        12,
        13,
        14,
        15,
        255,
        16,
        17,
        18,
        255,
    ]
    np.testing.assert_array_equal(cityscapes_label_ids_to_train_ids(ids), expected)
    assert CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[13] == "car" and CITYSCAPES_CLASSES[18] == "bicycle"


def test_coco_stuff_raw_to_171_train_ids():
    raw = np.array([0, 10, 11, 12, 25, 26, 90, 91, 181, 182, 255])
    expected = [0, 10, 255, 11, 255, 24, 255, 80, 170, 255, 255]
    np.testing.assert_array_equal(coco_stuff_raw_to_train_ids(raw), expected)
    # The ids that survive are exactly 0..170, in order.
    np.testing.assert_array_equal(np.unique(coco_stuff_raw_to_train_ids(np.arange(182))), list(range(171)) + [255])
    assert COCO_STUFF_CLASSES[11] == "stop sign" and COCO_STUFF_CLASSES[80] == "banner"
    assert COCO_STUFF_CLASSES[170] == "wood" and len(COCO_STUFF_CLASSES) == 171


# ----------------------------------------------------------------------------- readers


def test_ade20k_reduces_zero_label(tmp_path):
    raw = ramp([0, 1, 2, 150, 255])
    image = write_pair(
        tmp_path / "images/validation/ADE_val_1.jpg", tmp_path / "annotations/validation/ADE_val_1.png", raw
    )
    write_pair(tmp_path / "images/training/ADE_train_1.jpg", tmp_path / "annotations/training/ADE_train_1.png", raw)
    data = ADE20K(tmp_path, "val")
    assert len(data) == 1 and data.num_classes == 150 and data.classes == ADE20K_CLASSES
    assert len(data.palette) == 150 and len(set(data.palette)) == 150
    out_image, mask, name = data[0]
    assert name == "ADE_val_1" and out_image.shape == image.shape and out_image.dtype == np.uint8
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, np.select([raw == 0, raw == 255], [255, 255], raw - 1))
    assert len(ADE20K(tmp_path, "train")) == 1


def test_cityscapes_train_ids_and_label_ids_fallback(tmp_path):
    city = "leftImg8bit/val/aachen"
    train_ids = ramp([0, 5, 18, 255])
    write_pair(tmp_path / city / "aachen_000000_000019_leftImg8bit.png",
               tmp_path / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelTrainIds.png", train_ids)  # fmt: skip
    label_ids = ramp([7, 26, 33, 0, 9])
    write_pair(tmp_path / city / "aachen_000001_000019_leftImg8bit.png",
               tmp_path / "gtFine/val/aachen/aachen_000001_000019_gtFine_labelIds.png", label_ids)  # fmt: skip
    data = Cityscapes(tmp_path, "val")
    assert [data.name(i) for i in range(len(data))] == ["aachen_000000_000019", "aachen_000001_000019"]
    np.testing.assert_array_equal(data[0][1], train_ids)
    np.testing.assert_array_equal(data[1][1], cityscapes_label_ids_to_train_ids(label_ids))
    assert set(np.unique(data[1][1])) == {0, 13, 18, 255}
    assert convert_cityscapes(tmp_path, splits=("val",), progress=False) == 1
    written = tmp_path / "gtFine/val/aachen/aachen_000001_000019_gtFine_labelTrainIds.png"
    np.testing.assert_array_equal(np.asarray(Image.open(written)), cityscapes_label_ids_to_train_ids(label_ids))


def test_coco_stuff_train_ids_and_raw_fallback(tmp_path):
    trained = ramp([0, 170, 255])
    write_pair(tmp_path / "images/val2017/000000000139.jpg",
               tmp_path / "annotations/val2017/000000000139_labelTrainIds.png", trained)  # fmt: skip
    raw = ramp([0, 12, 91, 181, 11, 255])
    write_pair(tmp_path / "images/val2017/000000000285.jpg", tmp_path / "annotations/val2017/000000000285.png", raw)
    data = COCOStuff(tmp_path, "val")
    assert data.num_classes == 171 and len(data) == 2
    np.testing.assert_array_equal(data[0][1], trained)
    np.testing.assert_array_equal(data[1][1], coco_stuff_raw_to_train_ids(raw))
    assert convert_coco_stuff(tmp_path, splits=("val2017",), progress=False) == 1
    assert (tmp_path / "annotations/val2017/000000000285_labelTrainIds.png").is_file()


def test_pascal_context_reads_split_list(tmp_path):
    raw = ramp([0, 1, 59])
    for stem in ("2008_000002", "2008_000003"):
        write_pair(tmp_path / f"JPEGImages/{stem}.jpg", tmp_path / f"SegmentationClassContext/{stem}.png", raw)
    (tmp_path / "ImageSets/SegmentationContext").mkdir(parents=True)
    (tmp_path / "ImageSets/SegmentationContext/val.txt").write_text("2008_000003\n")
    data = PascalContext59(tmp_path, "val")
    assert len(data) == 1 and data.name(0) == "2008_000003" and data.num_classes == 59
    np.testing.assert_array_equal(data[0][1], np.select([raw == 0], [255], raw - 1))
    with pytest.raises(DatasetError, match="train.txt"):
        PascalContext59(tmp_path, "train")


def make_folder(root: Path, n: int = 2, split: str | None = "train") -> None:
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("# comment\nsky\nroad\n\ncar\n")
    sub = f"/{split}" if split else ""
    for i in range(n):
        write_pair(root / f"images{sub}/img{i}.png", root / f"masks{sub}/img{i}.png", ramp([0, 1, 2, 255]), seed=i)


def test_folder_dataset_with_and_without_split_level(tmp_path):
    make_folder(tmp_path / "a", split="train")
    data = FolderDataset(tmp_path / "a", "train")
    assert data.classes == ("sky", "road", "car") and len(data.palette) == 3 and len(data) == 2
    image, mask, name = data[1]
    assert name == "img1" and image.shape == (6, 8, 3)
    np.testing.assert_array_equal(mask, ramp([0, 1, 2, 255]))
    make_folder(tmp_path / "b", split=None)
    assert len(FolderDataset(tmp_path / "b", "val")) == 2


def test_build_dataset_covers_every_name(tmp_path, monkeypatch):
    make_folder(tmp_path / "folder", split="val")
    assert isinstance(build_dataset("folder", tmp_path / "folder", split="val"), FolderDataset)
    monkeypatch.setenv("OFFSEG_DATA", str(tmp_path))
    assert len(build_dataset("folder", split="val")) == 2  # default root under $OFFSEG_DATA
    with pytest.raises(DatasetError, match="No root given"):
        build_dataset("ade20k", split="val")
    with pytest.raises(ConfigError, match="cityscapes"):
        build_dataset("citiscapes", tmp_path)
    for name, cls in (("ADE20K", ADE20K), ("coco_stuff164k", COCOStuff), ("pc59", PascalContext59)):
        with pytest.raises(DatasetError, match=cls.__name__):  # known names reach their reader
            build_dataset(name, tmp_path / "nothing", split="val")


def test_build_fashion_scenes_by_name(tmp_path):
    from offseg_vis.data.fashion_mnist import find_fashion_mnist

    try:
        find_fashion_mnist()
    except DatasetError as err:
        missing(str(err))
    config = {"size": 32, "item_min": 8, "item_max": 16}
    data = build_dataset("fashion-scenes", tmp_path, split="val", config=config, length=2, progress=False)
    image, mask, name = data[1]
    assert image.shape == (32, 32, 3) and mask.shape == (32, 32) and data.num_classes == 11
    report = check_dataset("fashion-scenes", tmp_path, "val", config=config, length=2)
    assert report.ok and report.num_images == 2 and report.histogram[0] > 0


# ----------------------------------------------------------------------------- bad data


def test_missing_mask_names_the_image(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "masks/train/img1.png").unlink()
    with pytest.raises(DatasetError, match=r"img1\.png.*expected"):
        FolderDataset(tmp_path, "train")


def test_size_mismatch(tmp_path):
    make_folder(tmp_path)
    Image.fromarray(np.zeros((5, 8), np.uint8)).save(tmp_path / "masks/train/img0.png")
    with pytest.raises(DatasetError, match="8x5 but its image"):
        FolderDataset(tmp_path, "train")[0]


def test_labels_outside_range(tmp_path):
    make_folder(tmp_path)
    Image.fromarray(ramp([0, 3, 7]).astype(np.uint8)).save(tmp_path / "masks/train/img0.png")
    with pytest.raises(DatasetError, match=r"label values \[3, 7\] outside 0-2"):
        FolderDataset(tmp_path, "train")[0]


def test_truncated_and_unreadable_files(tmp_path):
    make_folder(tmp_path)
    image_file = tmp_path / "images/train/img0.png"
    image_file.write_bytes(image_file.read_bytes()[:60])
    (tmp_path / "masks/train/img1.png").write_bytes(b"not a png at all")
    data = FolderDataset(tmp_path, "train")
    with pytest.raises(DatasetError, match=r"image .*img0\.png cannot be read"):
        data[0]
    with pytest.raises(DatasetError, match=r"mask .*img1\.png cannot be read"):
        data[1]


def test_colour_mask_and_empty_split_and_missing_classes(tmp_path):
    make_folder(tmp_path)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "masks/train/img0.png")
    with pytest.raises(DatasetError, match="single-channel"):
        FolderDataset(tmp_path, "train")[0]
    (tmp_path / "images/val").mkdir()
    with pytest.raises(DatasetError, match="No images found"):
        FolderDataset(tmp_path, "val")
    with pytest.raises(DatasetError, match="does not exist"):
        ADE20K(tmp_path / "missing", "val")
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(DatasetError, match="classes.txt"):
        FolderDataset(tmp_path, "train")


def test_checker_catches_truncation_a_decode_misses(tmp_path):
    make_folder(tmp_path, n=1)
    mask_file = tmp_path / "masks/train/img0.png"
    mask_file.write_bytes(mask_file.read_bytes()[:-8])  # cut into the end marker: pixels still decode
    assert FolderDataset(tmp_path, "train")[0][1].shape == (6, 8)
    report = check_dataset("folder", tmp_path, "train")
    assert len(report.problems) == 1 and "img0.png cannot be read" in report.problems[0]


def broken_folder(root: Path) -> None:
    """Five images: one good, four with different problems."""
    make_folder(root, n=5, split="val")
    (root / "masks/val/img1.png").unlink()  # missing mask
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "masks/val/img2.png")  # size mismatch
    Image.fromarray(ramp([0, 9]).astype(np.uint8)).save(root / "masks/val/img3.png")  # bad labels
    (root / "images/val/img4.png").write_bytes((root / "images/val/img4.png").read_bytes()[:50])  # truncated


def test_check_dataset_reports_every_problem(tmp_path):
    broken_folder(tmp_path)
    report = check_dataset("folder", tmp_path, "val")
    assert not report.ok and report.num_images == 1
    assert len(report.problems) == 4
    for needle in ("img1", "img2", "img3", "img4"):
        assert sum(needle in p for p in report.problems) == 1, needle
    np.testing.assert_array_equal(report.histogram, [12, 12, 12])
    assert report.ignored == 12 and report.classes_present == ["sky", "road", "car"]
    summary = report.summary()
    assert "images checked: 1" in summary and "classes present: 3 of 3" in summary and "problems: 4" in summary
    missing = check_dataset("ade20k", tmp_path / "nope", "val")
    assert len(missing.problems) == 1 and "does not exist" in missing.problems[0]


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="offseg")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_check_prints_all_problems_and_fails(tmp_path, capsys):
    broken_folder(tmp_path / "bad")
    with pytest.raises(DatasetError, match="4 problem"):
        run_cli(["data", "check", str(tmp_path / "bad"), "--dataset", "folder", "--split", "val"])
    out = capsys.readouterr().out
    assert out.count("PROBLEM:") == 4 and "label histogram" in out
    make_folder(tmp_path / "good", split="val")
    assert run_cli(["data", "check", str(tmp_path / "good"), "--dataset", "folder"]) == 0
    assert "problems: 0" in capsys.readouterr().out


def test_cli_fashion_scenes_is_byte_identical(tmp_path, capsys):
    from offseg_vis.data.fashion_mnist import find_fashion_mnist

    try:
        find_fashion_mnist()
    except DatasetError as err:
        missing(str(err))
    for out in ("a", "b"):
        argv = [
            "data",
            "fashion-scenes",
            "--out",
            str(tmp_path / out),
            "--val",
            "3",
            "--train",
            "2",
            "--size",
            "32",
        ]
        assert run_cli(argv + ["--style", "0.8", "--seed", "3"]) == 0
    assert "scenes/s" in capsys.readouterr().out
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == (2 * 2 + 2) + (2 * 3 + 2)  # PNG pairs + manifest.json + scenes.jsonl per split
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


# ----------------------------------------------------------------------------- the archive's top folder


def ade_tree(root: Path) -> np.ndarray:
    raw = ramp([0, 3, 150])
    write_pair(root / "images/validation/ADE_val_7.jpg", root / "annotations/validation/ADE_val_7.png", raw)
    return raw


def pascal_tree(root: Path) -> np.ndarray:
    raw = ramp([0, 2, 59])
    write_pair(root / "JPEGImages/2008_000009.jpg", root / "SegmentationClassContext/2008_000009.png", raw)
    (root / "ImageSets/SegmentationContext").mkdir(parents=True)
    (root / "ImageSets/SegmentationContext/val.txt").write_text("2008_000009\n")
    return raw


@pytest.mark.parametrize(
    "name, top, make, stem",
    [
        ("ade20k", "ADEChallengeData2016", ade_tree, "ADE_val_7"),
        ("pascal-context", "VOCdevkit/VOC2010", pascal_tree, "2008_000009"),  # the VOC2010 archive
        ("pascal-context", "VOC2010", pascal_tree, "2008_000009"),  # the user points at VOCdevkit/
    ],
)
def test_parent_of_the_archive_top_folder_is_accepted(tmp_path, capsys, name, top, make, stem):
    parent = tmp_path / "unpacked"
    raw = make(parent / top)
    data = build_dataset(name, parent, split="val")
    assert data.root == parent / top and len(data) == 1 and data.name(0) == stem
    np.testing.assert_array_equal(data[0][1], np.select([raw == 0], [255], raw - 1))  # reduce_zero_label
    assert data.note == f"{parent} holds the dataset's top folder {top}/: reading {parent / top}."
    assert data.note in data.describe()
    # the dataset's own folder is read as before, without a note
    assert build_dataset(name, parent / top, split="val").note is None
    # `offseg data check PARENT` passes and says so in one line
    assert run_cli(["data", "check", str(parent), "--dataset", name]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == data.note and "problems: 0" in out


def test_parent_is_not_guessed_when_it_holds_the_layout_or_no_single_top_folder(tmp_path):
    # a root with its own layout is read as is, even if an archive folder also sits inside it
    ade_tree(tmp_path / "a")
    ade_tree(tmp_path / "a" / "ADEChallengeData2016")
    assert ADE20K(tmp_path / "a", "val").root == tmp_path / "a"
    # both VOCdevkit/VOC2010 and VOC2010 inside one folder: ambiguous, so no guess
    pascal_tree(tmp_path / "b" / "VOCdevkit/VOC2010")
    pascal_tree(tmp_path / "b" / "VOC2010")
    with pytest.raises(DatasetError, match="split list"):
        PascalContext59(tmp_path / "b", "val")
    # datasets whose archives unpack into the layout directly (Cityscapes, COCO-Stuff) keep the old message
    with pytest.raises(DatasetError, match="No images found"):
        Cityscapes(tmp_path / "a", "val")
