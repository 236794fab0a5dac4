"""Trainer: parameter groups, schedule, the non-finite guard, and an overfit run of offseg-mbv2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from offseg_vis.engine.config import Config, OptimConfig, ScheduleConfig, apply_overrides
from offseg_vis.engine.optim import WarmupPolyFactor, build_optimizer, build_scheduler, param_groups
from offseg_vis.engine.train import NonFiniteLossError, train
from offseg_vis.models.offset_learning import build_classifier
from offseg_vis.models.segmentor import Segmentor
from offseg_vis.models.weights import read_metadata, read_state_dict


class TinyBackbone(nn.Module):
    """4 feature maps at strides 4-32 with GroupNorm (no batch statistics)."""

    out_channels = [8, 8, 8, 8]

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.downs = nn.ModuleList(nn.Conv2d(8, 8, 3, stride=2, padding=1) for _ in range(3))

    def forward(self, x):
        f = F.relu(self.norm(self.stem(x)))
        feats = [f]
        for down in self.downs:
            f = F.relu(down(f))
            feats.append(f)
        return feats


class TinyHead(nn.Module):
    output_stride = 4

    def __init__(self, num_classes, classifier="offset"):
        super().__init__()
        self.num_classes = num_classes
        self.fuse = nn.Conv2d(32, 16, 1)
        self.norm = nn.GroupNorm(4, 16)
        self.classifier = build_classifier(classifier, num_classes, 16)

    def forward(self, feats, return_intermediates=False):
        size = feats[0].shape[-2:]
        x = torch.cat([F.interpolate(f, size=size, mode="bilinear") for f in feats], dim=1)  # (B, 32, h, w)
        return self.classifier(F.relu(self.norm(self.fuse(x))), return_intermediates)


def tiny_model(num_classes=3):
    model = Segmentor(TinyBackbone(), TinyHead(num_classes))
    model.model_name = "tiny-test"
    return model


def tiny_dataset(n=8, size=32, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        mask = rng.integers(0, num_classes, size=(size // 8, size // 8)).repeat(8, 0).repeat(8, 1)
        image = (mask[..., None] * 80 + rng.integers(0, 40, size=(size, size, 3))).astype(np.uint8)
        items.append((image, mask.astype(np.int64), f"item_{i}"))
    return items


def tiny_config(**over) -> Config:
    cfg = apply_overrides(
        Config(name="tiny"),
        [
            "model.num_classes=3",
            "data.crop_size=32",
            "data.batch_size=2",
            "data.num_workers=0",
            "optim.lr=1e-3",
            "schedule.max_iters=6",
            "schedule.warmup_iters=2",
            "schedule.eval_interval=0",
            "schedule.checkpoint_interval=1",
            "runtime.progress=false",
            "runtime.tensorboard=false",
            "runtime.num_threads=1",  # robust on busy machines (2 threads can stall on a contended CPU)
            "test.batch_size=4",
        ],
    )
    return apply_overrides(cfg, [f"{k}={v}" for k, v in over.items()])


def test_param_groups_follow_the_recipe():
    model = tiny_model()
    groups = {g["name"]: g for g in param_groups(model, OptimConfig(lr=1e-4, weight_decay=0.01))}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    names = {id(p): n for n, p in model.named_parameters()}
    head = {names[id(p)] for p in groups["head"]["params"]}
    head_nd = {names[id(p)] for p in groups["head_no_decay"]["params"]}
    # cls_repr is in the head (lr x10) and keeps its decay; GroupNorm and mask_norm get none
    assert "decode_head.classifier.cls_repr" in head and "decode_head.fuse.bias" in head
    assert {"decode_head.norm.weight", "decode_head.classifier.mask_norm.weight"} <= head_nd
    assert groups["head"]["lr"] == pytest.approx(1e-3) and groups["backbone"]["lr"] == pytest.approx(1e-4)
    assert groups["head_no_decay"]["weight_decay"] == 0 and groups["backbone"]["weight_decay"] == 0.01
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))


def test_warmup_poly_schedule():
    f = WarmupPolyFactor(max_iters=100, warmup_iters=10, start_factor=1e-6, power=1.0, min_ratio=0.0)
    assert f(0) == pytest.approx(1e-6)
    assert f(5) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0)
    model = tiny_model()
    opt = build_optimizer(model, OptimConfig(lr=1e-4))
    sched = build_scheduler(opt, ScheduleConfig(max_iters=100, warmup_iters=10))
    for _ in range(10):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["initial_lr"] for g in opt.param_groups])


def test_non_finite_guard_keeps_last_good_checkpoint(tmp_path):
    def poison(step, model, **_):
        if step == 3:  # after step 3's checkpoint: step 4's loss is NaN
            with torch.no_grad():
                model.decode_head.fuse.weight.fill_(float("nan"))

    data = tiny_dataset()
    with pytest.raises(NonFiniteLossError) as err:
        train(tiny_config(), work_dir=tmp_path, model=tiny_model(), train_dataset=data, val_dataset=data,
              callbacks=[poison])
    text = str(err.value)
    assert "step 4" in text and "last good checkpoint" in text
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    bad = [r for r in records if r["type"] == "nonfinite"]
    assert len(bad) == 1 and len(bad[0]["files"]) == 2
    assert all(name.startswith("item_") and name in text for name in bad[0]["files"])
    assert read_metadata(tmp_path / "last.safetensors")["step"] == 3
    assert all(torch.isfinite(t).all() for t in read_state_dict(tmp_path / "last.safetensors").values())


def test_refuses_to_overwrite_a_run(tmp_path):
    data = tiny_dataset(4)
    cfg = tiny_config(**{"schedule.max_iters": 1})
    train(cfg, work_dir=tmp_path, model=tiny_model(), train_dataset=data, val_dataset=data)
    from offseg_vis.errors import ConfigError

    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, work_dir=tmp_path, model=tiny_model(), train_dataset=data, val_dataset=data)


def test_overfit_offseg_mbv2_on_four_scenes(tmp_path):
    """offseg-mbv2 (ImageNet backbone, offset classifier) fits 4 FashionScenes images to >= 0.9 mIoU."""
    from offseg_vis.data.fashion_scenes import FashionScenesConfig, generate_scene

    scene_cfg = FashionScenesConfig(size=64, item_min=24, item_max=40, min_items=2, max_items=3)
    scenes = [(*generate_scene("train", i, scene_cfg), f"scene_{i}") for i in range(4)]
    cfg = apply_overrides(
        Config(name="overfit"),
        [
            "model.name=offseg-mbv2",
            "model.num_classes=11",
            "model.backbone_pretrained=true",
            "data.crop_size=64",
            "data.ratio_range=[1.0,1.0]",
            "data.flip_prob=0",
            "data.photometric=false",
            "data.batch_size=4",
            "data.num_workers=0",
            "optim.lr=1e-3",
            "optim.weight_decay=0",
            "schedule.max_iters=80",
            "schedule.warmup_iters=10",
            "schedule.eval_interval=0",
            "schedule.checkpoint_interval=0",
            "runtime.progress=false",
            "runtime.tensorboard=false",
            "runtime.num_threads=1",
            "test.batch_size=4",
        ],
    )
    result = train(cfg, work_dir=tmp_path, train_dataset=scenes, val_dataset=scenes)
    assert result.steps == 80
    assert result.final_metrics.mIoU >= 0.9, result.final_metrics.table()
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert result.checkpoint.name == "best.safetensors"
    assert read_metadata(result.checkpoint)["metrics"]["mIoU"] == pytest.approx(result.final_metrics.mIoU)
