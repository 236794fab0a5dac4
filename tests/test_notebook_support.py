"""The notebooks' data helpers go through the one run API and still give the val scenes they promise."""

from __future__ import annotations

import numpy as np
import pytest

from offseg_vis.analysis import notebook_support as ns
from offseg_vis.data.fashion_scenes import FashionScenes
from offseg_vis.engine.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def test_val_samples_are_the_val_scenes_from_start_in_order():
    images, masks, names = ns.val_samples(3, start=2)
    direct = FashionScenes("val", length=5, progress=False)  # the reference: the dataset read by hand
    assert names == ["val_000002", "val_000003", "val_000004"]
    for i, (image, mask, name) in enumerate(zip(images, masks, names)):
        ref_image, ref_mask, ref_name = direct[2 + i]
        assert name == ref_name
        np.testing.assert_array_equal(image, ref_image)
        np.testing.assert_array_equal(mask, ref_mask)


def test_val_split_is_the_recipes_val_split_cut_to_n():
    split = ns.val_split(4)
    assert len(split.dataset) == 4 and split.role == "val"
    assert split.classes == ns.class_names()
    assert repr(split.transform) == "TestTransform(scale=None)"  # the recipe's test protocol: no resize


def test_evaluate_val_scores_like_the_evaluator_on_the_raw_scenes():
    model = ns.load_or_train("offset").model
    got = ns.evaluate_val(model, 4)
    # Reference: the evaluator on the dataset itself, one image at a time, with its own normalisation (no
    # run API, no transform). The argmax per pixel must agree, so the confusion-based scores are equal.
    want = evaluate(model, FashionScenes("val", length=4, progress=False), batch_size=1)
    np.testing.assert_array_equal(np.asarray(got.confusion), np.asarray(want.confusion))
    assert got.mIoU == want.mIoU


def test_a_scene_preset_gives_that_presets_val_scenes_and_checkpoint_name():
    from offseg_vis.data.fashion_scenes import SCENE_PRESETS, FashionScenesConfig, generate_scene

    images, masks, names = ns.val_samples(2, start=3, preset="looks")
    assert names == ["val_000003", "val_000004"]
    for i, (image, mask) in enumerate(zip(images, masks)):  # the reference: the generator called directly
        ref_image, ref_mask = generate_scene("val", 3 + i, FashionScenesConfig(**SCENE_PRESETS["looks"]))
        np.testing.assert_array_equal(image, ref_image)
        np.testing.assert_array_equal(mask, ref_mask)
    assert ns.checkpoint_name("offset", "looks") == "offseg-mbv2_offset-looks"
    assert ns.checkpoint_name("linear") == "offseg-mbv2_linear"
    with pytest.raises(ValueError, match="Unknown scene preset 'look'"):
        ns.val_samples(1, preset="look")


def test_load_twins_loads_each_settings_pair_and_refuses_a_non_twin(monkeypatch, tmp_path, capsys):
    from offseg_vis.engine.checkpoint import recipe_key
    from offseg_vis.errors import CheckpointError
    from offseg_vis.models.weights import save_weights

    for preset in ("", "looks"):
        offset, linear = ns.load_twins(preset=preset)
        assert (offset.card["classifier"], linear.card["classifier"]) == ("offset", "linear")
        assert offset.path.name == f"{ns.checkpoint_name('offset', preset)}.safetensors"
        assert linear.path.name == f"{ns.checkpoint_name('linear', preset)}.safetensors"
        assert recipe_key(offset.card) == recipe_key(linear.card) is not None
    assert capsys.readouterr().out.count("(twins).") == 2
    # a linear model of the +looks recipe beside the plain offset model: same classifiers, not twins
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for classifier, preset in (("offset", ""), ("linear", "looks")):
        run = ns.load_or_train(classifier, preset=preset)
        save_weights(run.model, folder / ns.checkpoint_name(classifier), metadata=run.card)
    monkeypatch.setattr(ns, "checkpoints_dir", lambda: folder)
    with pytest.raises(CheckpointError, match="are not twins"):
        ns.load_twins()
