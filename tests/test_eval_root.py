"""`offseg eval --root DIR` scores the scenes stored under DIR (by their manifest), not the checkpoint's own
val set, refuses an ambiguous DIR, and always says which set it scored."""

from __future__ import annotations

import json

import pytest

from offseg_vis.cli import main
from offseg_vis.data.fashion_scenes import FashionScenes, FashionScenesConfig
from offseg_vis.data.transforms import TestTransform
from offseg_vis.engine.checkpoint import load_model
from offseg_vis.engine.config import shipped_checkpoints_dir
from offseg_vis.engine.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

SEED = 4242  # anything but the checkpoint's own generator seed (0)
COUNT = 12  # small: a few seconds to generate and score at the checkpoint's 128 px


@pytest.fixture(scope="module")
def checkpoint():
    path = shipped_checkpoints_dir() / "offseg-mbv2_offset.safetensors"
    model, meta = load_model(path, "cpu")
    assert meta["config"]["data"]["dataset"] == "fashion-scenes" and meta["config"]["runtime"]["seed"] == 0
    return path, model, meta


def api_metrics(model, seed: int) -> dict:
    """The API's numbers on scenes 0..COUNT-1 of the val split with ``seed``, generated on the fly
    (stream=True: an independent path that never reads a stored folder or manifest)."""
    scenes = FashionScenes("val", config=FashionScenesConfig(seed=seed), length=COUNT, stream=True)
    # the checkpoint's test protocol: whole images, batch 16, no test resize
    return evaluate(model, scenes, batch_size=16, transform=TestTransform(None)).to_dict()


def run_eval(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(["eval", *argv, "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_root_scores_the_stored_set_with_its_own_seed(checkpoint, tmp_path, capsys):
    path, model, _ = checkpoint
    root = tmp_path / "scenes"
    assert main(["data", "fashion-scenes", "--out", str(root), "--val", str(COUNT), "--seed", str(SEED)]) == 0
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    capsys.readouterr()

    out_json = tmp_path / "m.json"
    code, out, err = run_eval([str(path), "--root", str(root), "--split", "val", "--json", str(out_json)], capsys)
    assert code == 0, err
    got = json.loads(out_json.read_text())
    expected = api_metrics(model, SEED)
    # the same images through the same computation: equal up to float formatting (1e-12 << any real change)
    for key in ("mIoU", "aAcc", "mAcc"):
        assert got[key] == pytest.approx(expected[key], rel=0, abs=1e-12), key
    assert set(got["per_class"]) == set(expected["per_class"])
    for name, values in expected["per_class"].items():
        assert got["per_class"][name] == pytest.approx(values, rel=0, abs=1e-12), name
    # ... and they are not the numbers of the checkpoint's own (seed 0) scenes, which the old code scored
    default = api_metrics(model, 0)
    assert abs(got["mIoU"] - default["mIoU"]) > 1e-3
    # the output names the set: its folder, generator parameters and number of images
    line = next(line for line in out.splitlines() if line.startswith("evaluating"))
    assert str(folder) in line and f"seed {SEED}" in line and f"{COUNT} scenes" in line and "size 128" in line


def test_eval_root_refuses_several_sets_and_accepts_a_set_folder(checkpoint, tmp_path, capsys):
    path, model, _ = checkpoint
    root = tmp_path / "scenes"
    for seed in (SEED, 7):
        assert main(["data", "fashion-scenes", "--out", str(root), "--val", "4", "--seed", str(seed)]) == 0
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(folders) == 2
    capsys.readouterr()

    code, out, err = run_eval([str(path), "--root", str(root)], capsys)
    assert code == 2 and "ambiguous" in err
    assert all(str(folder) in err for folder in folders)  # the sentence lists both sets
    assert f"seed {SEED}" in err and "seed 7" in err
    assert not (root / "val").exists()  # nothing was generated into the folder

    target = next(f for f in folders if json.loads((f / "manifest.json").read_text())["seed"] == 7)
    out_json = tmp_path / "m.json"
    code, out, err = run_eval([str(path), "--root", str(target), "--json", str(out_json)], capsys)
    assert code == 0, err
    assert f"{target}" in out and "seed 7" in out and "4 scenes" in out
    stream = FashionScenes("val", config=FashionScenesConfig(seed=7), length=4, stream=True)
    expected = evaluate(model, stream, batch_size=16, transform=TestTransform(None)).to_dict()
    assert json.loads(out_json.read_text())["mIoU"] == pytest.approx(expected["mIoU"], rel=0, abs=1e-12)


def test_eval_root_of_another_split_is_refused(checkpoint, tmp_path, capsys):
    path, _, _ = checkpoint
    root = tmp_path / "scenes"
    assert main(["data", "fashion-scenes", "--out", str(root), "--train", "2", "--val", "0", "--seed", "3"]) == 0
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    capsys.readouterr()
    code, _, err = run_eval([str(path), "--root", str(folder), "--split", "val"], capsys)
    assert code == 2 and "train split" in err and "--split train" in err


def test_data_check_root_checks_the_stored_set(tmp_path, capsys):
    root = tmp_path / "scenes"
    assert main(["data", "fashion-scenes", "--out", str(root), "--val", "3", "--seed", str(SEED)]) == 0
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    capsys.readouterr()
    assert main(["data", "check", str(root), "--dataset", "fashion-scenes"]) == 0
    out = capsys.readouterr().out
    assert f"at {folder}" in out and "images checked: 3" in out and "problems: 0" in out
    assert f"seed {SEED}" in out.splitlines()[0]  # the set's generator parameters, in one line
    assert [p for p in root.iterdir() if p.is_dir()] == [folder]  # no default-seed set generated beside it
    # an empty folder is a problem, not a reason to generate 1,000 scenes into it
    (tmp_path / "empty").mkdir()
    assert main(["data", "check", str(tmp_path / "empty"), "--dataset", "fashion-scenes"]) == 2
    assert "no stored FashionScenes val set" in capsys.readouterr().out
    assert not any((tmp_path / "empty").iterdir())


def test_predict_root_segments_the_stored_set(checkpoint, tmp_path, capsys):
    import numpy as np
    import torch
    from PIL import Image

    path, model, meta = checkpoint
    root = tmp_path / "scenes"
    assert main(["data", "fashion-scenes", "--out", str(root), "--val", "3", "--seed", str(SEED)]) == 0
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    capsys.readouterr()
    out_dir = tmp_path / "pred"
    argv = ["predict", str(path), "--root", str(root), "--max-images", "2", "--out", str(out_dir), "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"predicting 2 images of FashionScenes val: 3 scenes from {folder}" in out and f"seed {SEED}" in out
    assert sorted(p.name for p in out_dir.glob("*_mask.png")) == ["val_000000_mask.png", "val_000001_mask.png"]
    # each mask is the card's palette of the argmax on the seed-4242 scene (generated here, not read)
    palette = np.asarray(meta["palette"], dtype=np.uint8)
    stream = FashionScenes("val", config=FashionScenesConfig(seed=SEED), length=2, stream=True)
    for i in range(2):
        image = torch.from_numpy(stream[i][0].copy()).permute(2, 0, 1)[None]  # (1, 3, H, W)
        with torch.no_grad():
            labels = model.predict(model.normalize(image))[0].argmax(0).numpy()
        written = np.asarray(Image.open(out_dir / f"val_{i:06d}_mask.png"))
        np.testing.assert_array_equal(written, palette[labels])
    assert main(["predict", str(path), "--out", str(out_dir)]) == 2  # neither files nor --root
    assert "needs image files, or --root" in capsys.readouterr().err
