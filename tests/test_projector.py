"""``offseg embeddings export``: the TensorBoard projector files, read back and checked against the model."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from PIL import Image

from offseg_vis.analysis import notebook_support as ns
from offseg_vis.analysis.explore import pixel_table
from offseg_vis.analysis.probe import probe
from offseg_vis.cli import main
from offseg_vis.engine.run import load_run

IMAGES, POINTS = 8, 1500


def _read_config(text: str) -> list[dict]:
    """A small reader of the projector's text proto: one dict per ``embeddings { ... }`` block."""
    blocks = []
    for block in re.findall(r"embeddings \{(.*?)\n\}", text, flags=re.S):
        entry = {
            "tensor_name": re.search(r'tensor_name: "(.*)"', block).group(1),
            "tensor_path": re.search(r'tensor_path: "(.*)"', block).group(1),
            "metadata_path": re.search(r'metadata_path: "(.*)"', block).group(1),
            "tensor_shape": [int(v) for v in re.findall(r"tensor_shape: (\d+)", block)],
        }
        sprite = re.search(r'sprite \{\s*image_path: "(.*)"(.*?)\}', block, flags=re.S)
        if sprite:
            entry["sprite"] = (
                sprite.group(1),
                [int(v) for v in re.findall(r"single_image_dim: (\d+)", sprite.group(2))],
            )
        blocks.append(entry)
    return blocks


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("projector")
    offset, twin = ns.shipped_checkpoint("offset"), ns.shipped_checkpoint("linear")
    code = main(
        ["embeddings", "export", str(offset), "--twin", str(twin), "--images", str(IMAGES),
         "--points", str(POINTS), "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    images, labels, _ = ns.val_samples(IMAGES)
    model, twin_model = load_run(offset).model, load_run(twin).model
    probes = probe(model, images, labels, need={"features", "refined_features", "class_embed", "refined_class_embed"})
    twin_probes = probe(twin_model, images, labels, need={"prediction"})
    table = pixel_table(probes, POINTS, twin_probes=twin_probes, class_names=ns.class_names(), seed=0)
    return out, probes, table, images


def test_config_names_three_tensors_with_shapes_metadata_and_sprite(exported):
    out, probes, table, _ = exported
    text = (out / "projector_config.pbtxt").read_text()
    blocks = _read_config(text)
    n, c, k = len(table), probes[0].embed_dims, probes[0].num_classes
    assert [b["tensor_path"] for b in blocks] == ["E.tsv", "E_refined.tsv", "W.tsv"]
    assert [b["tensor_shape"] for b in blocks] == [[n, c], [n, c], [k + IMAGES * k, c]]
    assert [b["metadata_path"] for b in blocks] == ["metadata.tsv", "metadata.tsv", "W_metadata.tsv"]
    assert blocks[0]["sprite"] == blocks[1]["sprite"] == ("sprite.png", [16, 16]) and "sprite" not in blocks[2]
    assert len({b["tensor_name"] for b in blocks}) == 3
    # TensorBoard's own parser accepts the file (when tensorboard is installed: the `explore` extra)
    pb2 = pytest.importorskip("tensorboard.plugins.projector.projector_config_pb2")
    from google.protobuf import text_format

    config = text_format.Parse(text, pb2.ProjectorConfig())
    assert [list(e.tensor_shape) for e in config.embeddings] == [b["tensor_shape"] for b in blocks]
    assert list(config.embeddings[0].sprite.single_image_dim) == [16, 16]


def test_tensors_hold_e_e_prime_w_and_w_prime(exported):
    out, probes, table, _ = exported
    e, e2 = np.loadtxt(out / "E.tsv", delimiter="\t"), np.loadtxt(out / "E_refined.tsv", delimiter="\t")
    for j in range(len(table)):
        p = probes[table.image[j]]
        h, w = p.feature_size
        r, c = table.y[j] * h // p.input_size[0], table.x[j] * w // p.input_size[1]  # the pixel's cell
        # 6 significant digits are written: relative error <= 5e-6 of each value, plus exact zeros
        np.testing.assert_allclose(e[j], p.features[r, c], rtol=1e-5, atol=1e-30)
        np.testing.assert_allclose(e2[j], p.refined_features[r, c], rtol=1e-5, atol=1e-30)
    w_all = np.loadtxt(out / "W.tsv", delimiter="\t")
    k = probes[0].num_classes
    np.testing.assert_allclose(w_all[:k], probes[0].class_embed, rtol=1e-5)
    for i, p in enumerate(probes):
        np.testing.assert_allclose(w_all[k * (i + 1) : k * (i + 2)], p.refined_class_embed, rtol=1e-5)
    meta = (out / "W_metadata.tsv").read_text().splitlines()
    assert meta[0] == "kind\tclass\timage" and len(meta) == 1 + k + IMAGES * k
    assert meta[1] == f"W\t{ns.class_names()[0]}\tall"
    assert meta[1 + k + 3 * k + 2] == f"W'\t{ns.class_names()[2]}\t3"


def test_metadata_rows_equal_the_pixel_table(exported):
    out, probes, table, _ = exported
    lines = (out / "metadata.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["class", "image", "x", "y", "correct", "predicted", "twin", "outcome"]
    assert len(lines) == 1 + len(table) == 1 + POINTS
    names = ns.class_names()
    outcome = {0: "both right", 1: "fixed", 2: "broken", 3: "both wrong"}
    for j, line in enumerate(lines[1:]):
        cls, img, x, y, correct, pred, twin, out_name = line.split("\t")
        i, x, y = int(img), int(x), int(y)
        p = probes[i]
        assert (i, x, y) == (table.image[j], table.x[j], table.y[j])
        assert cls == names[p.label[y, x]] and pred == names[p.prediction[y, x]]
        assert correct == ("correct" if p.label[y, x] == p.prediction[y, x] else "wrong")
        assert twin == names[table.twin_predicted[j]] and out_name == outcome[int(table.outcome[j])]


def test_sprite_holds_each_pixels_16x16_neighbourhood(exported):
    out, _, table, images = exported
    sprite = np.asarray(Image.open(out / "sprite.png").convert("RGB"))
    cols = math.ceil(math.sqrt(len(table)))
    assert sprite.shape == (16 * cols, 16 * cols, 3)
    for j in (0, 1, len(table) // 2, len(table) - 1):
        img, y0, x0 = images[table.image[j]], table.y[j] - 8, table.x[j] - 8
        want = np.zeros((16, 16, 3), np.uint8)
        for dy in range(16):
            for dx in range(16):  # edge-clamped neighbourhood, one pixel at a time
                yy = min(max(y0 + dy, 0), img.shape[0] - 1)
                xx = min(max(x0 + dx, 0), img.shape[1] - 1)
                want[dy, dx] = img[yy, xx]
        gy, gx = divmod(j, cols)
        np.testing.assert_array_equal(sprite[16 * gy : 16 * gy + 16, 16 * gx : 16 * gx + 16], want)


def test_export_says_what_it_used_and_rejects_bad_ranges(exported, tmp_path, capsys):
    out, *_ = exported
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files
    code = main(["embeddings", "export", str(ns.shipped_checkpoint("offset")), "--images", "2", "--points", "300",
                 "--out", str(tmp_path)])  # fmt: skip
    said = capsys.readouterr().out
    assert code == 0
    for needle in (
        "checkpoint:",
        "images: 2 from index 0",
        "points: 300 pixels",
        "E.tsv",
        "MB",
        "tensorboard --logdir",
    ):
        assert needle in said
    assert "twin" not in (tmp_path / "metadata.tsv").read_text().splitlines()[0]
    code = main(["embeddings", "export", str(ns.shipped_checkpoint("offset")), "--start", "999", "--images", "5",
                 "--out", str(tmp_path / "x")])  # fmt: skip
    assert code == 2 and "asks for more" in capsys.readouterr().err
