"""`offseg export` scores a run exactly as `offseg eval` does: same split, same test transform (test.scale)."""

from __future__ import annotations

import json

import pytest

from offseg_vis.cli import main
from offseg_vis.engine.checkpoint import load_model
from offseg_vis.engine.config import Config, apply_overrides
from offseg_vis.engine.evaluate import evaluate
from offseg_vis.engine.run import datasets_for
from offseg_vis.engine.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_run_config(data_root) -> Config:
    """OffSeg-MBV2 on 64 px FashionScenes, 2 steps; the test resize doubles the image (test.scale)."""
    return apply_overrides(
        Config(name="export-test"),
        [
            "model.name=offseg-mbv2",
            "model.num_classes=11",
            "model.backbone_pretrained=false",
            "data.dataset=fashion-scenes",
            f"data.root={data_root.as_posix()}",
            "data.dataset_options={config: {size: 64, item_min: 16, item_max: 32, seed: 5}}",
            "data.train_options={length: 4}",
            "data.val_options={length: 6}",
            "data.crop_size=[64,64]",
            "data.batch_size=2",
            "data.num_workers=0",
            "schedule.max_iters=2",
            "schedule.warmup_iters=1",
            "schedule.eval_interval=0",
            "schedule.checkpoint_interval=0",
            "runtime.device=cpu",
            "runtime.progress=false",
            "runtime.tensorboard=false",
            "runtime.num_threads=1",
            "test.scale=[128,128]",
            "test.batch_size=3",
        ],
    )


def test_export_card_miou_equals_offseg_eval_with_test_scale(tmp_path, capsys):
    cfg = tiny_run_config(tmp_path / "data")
    result = train(cfg, work_dir=tmp_path / "run")
    weights = result.checkpoint

    assert main(["export", str(weights), str(tmp_path / "ship" / "tiny"), "--command", "test"]) == 0
    card = json.loads((tmp_path / "ship" / "tiny.json").read_text())
    out = capsys.readouterr().out
    assert "TestTransform(scale=(128, 128))" in out and "6 scenes" in out  # export says what it scored

    metrics_file = tmp_path / "eval.json"
    assert main(["eval", str(weights), "--json", str(metrics_file), "--device", "cpu"]) == 0
    evaluated = json.loads(metrics_file.read_text())
    # the same weights, images, transform and batches: identical numbers
    for key in ("mIoU", "aAcc", "mAcc"):
        assert card["val_metrics"][key] == evaluated[key], key
    assert card["val_metrics"]["per_class"] == evaluated["per_class"]

    # the test transform matters here: scoring without test.scale (what export used to do) differs,
    # so the equality above is a real check
    model, _ = load_model(weights)
    raw = datasets_for(cfg, "val").dataset
    unscaled = evaluate(model, raw, batch_size=3)
    assert abs(unscaled.mIoU - card["val_metrics"]["mIoU"]) > 1e-6


def test_card_wall_time_leaves_out_a_stop_and_resume(tmp_path):
    from offseg_vis.engine.export import RESUME_GAP_S, _wall_time

    times = [100.0, 130.0, 160.0, 160.0 + RESUME_GAP_S + 1, 160.0 + RESUME_GAP_S + 41]  # stopped after 60 s
    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"time": t, "type": "train"}) + "\n" for t in times))
    assert _wall_time(tmp_path) == pytest.approx(60.0 + 40.0, abs=1e-9)
    (tmp_path / "log.jsonl").write_text(json.dumps({"time": 1.0}) + "\n")
    assert _wall_time(tmp_path) is None and _wall_time(tmp_path / "missing") is None
