"""Official checkpoint conversion: every official key is mapped for every released model."""

from __future__ import annotations

import json

import pytest
import torch

from offseg_vis import build_model
from offseg_vis.errors import CheckpointError
from offseg_vis.models.convert import infer_num_classes, map_official_segmentor_keys
from offseg_vis.models.registry import load_official_checkpoint

OFFICIAL = {
    "offseg_t_ade20k": "offseg-t",
    "offseg_b_ade20k": "offseg-b",
    "offseg_l_ade20k": "offseg-l",
    "segformer_b0_offset_learning_ade20k": "segformer-b0",
    "segnext_t_offset_learning_ade20k": "segnext-t",
}
DTYPES = {"float32": torch.float32, "int64": torch.int64}


def synthetic_official_state(reference_dir, name: str) -> dict[str, torch.Tensor]:
    """A state dict with exactly the official keys, shapes and dtypes (values are random)."""
    spec = json.loads((reference_dir / "official_keys" / f"{name}.json").read_text())
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape, dtype in spec["keys"]:
        if DTYPES[dtype].is_floating_point:
            state[key] = torch.randn(shape, generator=g)
        else:
            state[key] = torch.zeros(shape, dtype=DTYPES[dtype])
    return state


@pytest.mark.parametrize("official,name", list(OFFICIAL.items()))
def test_every_official_key_is_mapped(reference_dir, official, name):
    state = synthetic_official_state(reference_dir, official)
    assert infer_num_classes(state) == 150
    model = build_model(name, num_classes=150)
    mapped, report = map_official_segmentor_keys(state, model.state_dict())
    assert set(report.dropped) == {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias"}
    assert len(report.used) + len(report.dropped) == len(state)
    assert set(mapped) == set(model.state_dict())
    model.load_state_dict(mapped, strict=True)
    torch.testing.assert_close(model.decode_head.classifier.cls_repr, state["decode_head.offset_learning.cls_repr"])


def test_load_official_checkpoint_file_and_errors(reference_dir, tmp_path):
    state = synthetic_official_state(reference_dir, "segformer_b0_offset_learning_ade20k")
    path = tmp_path / "segformer_ol.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": state}, path)
    model = build_model("segformer-b0", num_classes=150)
    report = load_official_checkpoint(model, path)
    assert len(report.dropped) == 2
    torch.testing.assert_close(
        model.backbone.state_dict()["layers.0.0.projection.weight"],
        state["backbone.layers.0.0.projection.weight"],
    )

    wrong_classes = build_model("segformer-b0", num_classes=19)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_official_checkpoint(wrong_classes, path)
    with pytest.raises(CheckpointError, match="unknown keys|missing"):
        load_official_checkpoint(build_model("segnext-t", num_classes=150), path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_official_checkpoint(model, tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="Could not read"):
        load_official_checkpoint(model, garbage)


# ------------------------------------------------------------------ class names of converted cards


def _with_num_classes(state: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """The official ADE20K state with every 150-class axis cut to ``k`` (cls_repr, conv_seg, ...)."""
    out = {}
    for key, value in state.items():
        for dim, size in enumerate(value.shape):
            if size == 150:
                value = value.narrow(dim, 0, k)
        out[key] = value.clone()
    return out


def _convert_cli(tmp_path, capsys, checkpoint, *extra):
    from offseg_vis.cli import main
    from offseg_vis.models.weights import read_metadata

    src = tmp_path / "official.pth"
    torch.save(checkpoint, src)
    dst = tmp_path / "converted.safetensors"
    assert main(["convert", str(src), str(dst), "--model", "segformer-b0", *extra]) == 0
    out = capsys.readouterr().out
    card = read_metadata(dst)
    sidecar = json.loads(dst.with_suffix(".json").read_text())
    assert sidecar["class_names"] == card["class_names"] and sidecar["palette"] == card["palette"]
    return card, out


def test_converted_card_takes_classes_from_meta_dataset_meta(reference_dir, tmp_path, capsys):
    import numpy as np

    state = synthetic_official_state(reference_dir, "segformer_b0_offset_learning_ade20k")
    names = tuple(f"thing {i}" for i in range(150))
    palette = [[i, (7 * i) % 256, 255 - i] for i in range(150)]
    meta = {"dataset_meta": {"classes": names, "palette": palette}, "seed": np.int64(3)}
    # the checkpoint's own names win over --dataset; the sentence says they differ from ADE20K's
    card, out = _convert_cli(tmp_path, capsys, {"meta": meta, "state_dict": state}, "--dataset", "ade20k")
    assert card["class_names"] == list(names)
    assert card["palette"] == palette
    assert card["classes_source"].startswith("150 class names from the checkpoint's meta.dataset_meta")
    assert "they are not the ADE20K names of --dataset ade20k" in card["classes_source"]
    assert f"classes: {card['classes_source']}" in out


def test_converted_card_takes_classes_from_dataset_option(reference_dir, tmp_path, capsys):
    from offseg_vis.data.class_names import DATASET_PALETTES

    state = synthetic_official_state(reference_dir, "segformer_b0_offset_learning_ade20k")
    card, out = _convert_cli(tmp_path, capsys, {"state_dict": state}, "--dataset", "ade20k")
    names = card["class_names"]
    assert len(names) == 150 and (names[0], names[1], names[148], names[149]) == ("wall", "building", "clock", "flag")
    assert card["palette"] == [list(c) for c in DATASET_PALETTES["ade20k"]]
    assert "ADE20K (dataset 'ade20k' given" in out


def test_converted_card_infers_classes_from_k(reference_dir, tmp_path, capsys):
    state = _with_num_classes(synthetic_official_state(reference_dir, "segformer_b0_offset_learning_ade20k"), 19)
    assert infer_num_classes(state) == 19
    card, out = _convert_cli(tmp_path, capsys, {"state_dict": state})
    assert card["num_classes"] == 19
    assert (card["class_names"][0], card["class_names"][-1]) == ("road", "bicycle")
    assert card["palette"][0] == [128, 64, 128] and card["palette"][-1] == [119, 11, 32]  # Cityscapes' own
    assert "class names of Cityscapes inferred from K=19" in out and "pass --dataset" in out


def test_converted_card_with_unknown_k_gets_generic_names_and_a_note(reference_dir, tmp_path, capsys):
    state = _with_num_classes(synthetic_official_state(reference_dir, "segformer_b0_offset_learning_ade20k"), 7)
    card, out = _convert_cli(tmp_path, capsys, {"state_dict": state})
    assert card["class_names"] == [f"class {i}" for i in range(7)]
    assert "K=7 matches no known dataset" in out


def test_classes_for_every_dataset_and_its_errors():
    import numpy as np

    from offseg_vis.data.class_names import CITYSCAPES_PALETTE, classes_for, generated_palette
    from offseg_vis.errors import ConfigError

    ends = {
        150: ("wall", "flag"),
        19: ("road", "bicycle"),
        171: ("person", "wood"),
        59: ("aeroplane", "wood"),
    }
    for k, (first, last) in ends.items():
        found = classes_for(num_classes=k)
        assert (len(found.names), found.names[0], found.names[-1]) == (k, first, last)
        assert len(found.palette) == k and f"inferred from K={k}" in found.source
    by_name = classes_for(dataset="coco_stuff")
    assert (by_name.names[80], by_name.names[-1]) == ("banner", "wood")  # 80 things, then stuff
    assert by_name.palette == generated_palette(171)
    assert classes_for(dataset="cityscapes").palette == CITYSCAPES_PALETTE
    # mmseg 0.x meta (CLASSES / PALETTE as a numpy array)
    old = classes_for(num_classes=2, meta={"CLASSES": ["a", "b"], "PALETTE": np.array([[1, 2, 3], [4, 5, 6]])})
    assert old.names == ("a", "b") and old.palette == ((1, 2, 3), (4, 5, 6))
    # meta names of another length are not used, and the sentence says so
    wrong = classes_for(num_classes=19, meta={"dataset_meta": {"classes": ("a", "b")}})
    assert wrong.names[0] == "road" and "lists 2 names but the model has 19 classes" in wrong.source
    # meta names without a palette: the matching dataset's palette
    cityscapes_names = list(classes_for(dataset="cityscapes").names)
    no_palette = classes_for(num_classes=19, meta={"dataset_meta": {"classes": cityscapes_names}})
    assert no_palette.palette == CITYSCAPES_PALETTE and "no valid palette there" in no_palette.source
    with pytest.raises(ConfigError, match="'cityscapes' has 19 classes but the model has 150"):
        classes_for(dataset="cityscapes", num_classes=150)
    with pytest.raises(ConfigError, match="No class names known for dataset 'mapillary'"):
        classes_for(dataset="mapillary", num_classes=65)


def test_card_readers_expose_class_names(reference_dir, tmp_path):
    from offseg_vis.engine.checkpoint import card_classes, load_model
    from offseg_vis.models.registry import convert_checkpoint
    from offseg_vis.models.weights import card_classes as stored_classes
    from offseg_vis.models.weights import read_metadata, save_weights

    state = synthetic_official_state(reference_dir, "segformer_b0_offset_learning_ade20k")
    src = tmp_path / "official.pth"
    torch.save({"state_dict": state}, src)
    # a card converted without a resolver (as cards were before) holds no names ...
    dst = tmp_path / "old"
    report = convert_checkpoint(src, dst, "segformer-b0")
    meta = read_metadata(dst)
    assert "class_names" not in meta and report.classes_source.startswith("no class names written")
    assert stored_classes(meta) == (None, None)
    # ... and its readers still name the classes (inferred from K, saying so)
    model, loaded = load_model(dst)
    assert loaded["class_names"][0] == "wall" and len(loaded["palette"]) == 150
    assert "converted from an official checkpoint" in loaded["classes_source"]
    assert card_classes(meta).names == tuple(loaded["class_names"])
    # a card with its own names: those, untouched
    own = {"class_names": [f"c{i}" for i in range(150)], "palette": [[i, i, i] for i in range(150)]}
    save_weights(model, tmp_path / "own", own)
    _, loaded = load_model(tmp_path / "own")
    assert loaded["class_names"] == own["class_names"] and loaded["palette"] == own["palette"]
    assert loaded["classes_source"] == "class names and palette from the checkpoint's card."
