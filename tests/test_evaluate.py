"""Metrics: confusion matrix, mIoU / aAcc / mAcc vs scikit-learn and a hand-computed example."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import jaccard_score

from offseg_vis.engine.evaluate import ConfusionMeter, confusion_matrix, evaluate, metrics_from_confusion


def test_hand_computed():
    # 3 classes; class 2 absent from both labels and predictions -> excluded from mIoU
    target = torch.tensor([[0, 0, 1, 1], [0, 255, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 1]])  # ignore pixels' predictions do not count
    # valid pixels: (t,p) = (0,0) (0,1) (1,1) (1,1) (0,0) (1,0)
    cm = confusion_matrix(pred, target, num_classes=3)
    assert cm.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    m = metrics_from_confusion(cm, ["a", "b", "c"])
    assert m.iou[0] == pytest.approx(2 / 4) and m.iou[1] == pytest.approx(2 / 4)
    assert math.isnan(m.iou[2]) and math.isnan(m.acc[2])
    assert m.mIoU == pytest.approx(0.5)
    assert m.aAcc == pytest.approx(4 / 6)
    assert m.mAcc == pytest.approx((2 / 3 + 2 / 3) / 2)
    d = m.to_dict()
    assert d["per_class"]["c"] == {"IoU": None, "Acc": None}
    assert set(d) == {"mIoU", "aAcc", "mAcc", "per_class"}


def test_class_only_predicted_counts_in_miou():
    # class 2 never in the labels but predicted: IoU 0 (it is in the union), Acc NaN
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])
    m = metrics_from_confusion(confusion_matrix(pred, target, 3))
    assert m.iou[2] == 0.0 and math.isnan(m.acc[2])
    assert m.mIoU == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_matches_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    k = 6
    target = rng.integers(0, k - 1, size=(4, 32, 32))  # class k-1 never labelled
    target[rng.random(target.shape) < 0.1] = 255
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, k - 2, size=target.shape))
    pred[pred == 255] = 0

    meter = ConfusionMeter(k)
    for t, p in zip(target, pred):  # dataset-level accumulation over "images"
        meter.update(torch.from_numpy(p), torch.from_numpy(t))
    m = meter.compute()

    valid = target != 255
    t, p = target[valid], pred[valid]
    assert np.array_equal(meter.matrix.numpy(), sk_confusion(t, p, labels=list(range(k))))
    present = np.union1d(np.unique(t), np.unique(p))
    sk_iou = jaccard_score(t, p, labels=present, average=None)
    assert np.allclose(m.iou[present], sk_iou)
    assert m.mIoU == pytest.approx(sk_iou.mean())
    assert m.aAcc == pytest.approx((t == p).mean())
    assert math.isnan(m.iou[k - 1])


class _ToyModel(torch.nn.Module):
    """Predicts class = (red channel > 0); enough to check evaluate() end to end."""

    num_classes = 2
    ignore_index = 255

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def normalize(self, x):
        return x.float() / 255.0

    def predict(self, images, mode="whole", crop=512, stride=480):
        fg = (images[:, :1] > 0.5).float()  # (B, 1, H, W)
        return torch.cat([1 - fg, fg], dim=1)  # (B, 2, H, W)


def test_evaluate_dataset():
    items = []
    for i in range(3):
        image = np.zeros((8, 8, 3), np.uint8)
        image[: 2 + i, :, 0] = 255
        mask = np.zeros((8, 8), np.int64)
        mask[:2, :] = 1  # image 0 perfect, images 1 and 2 over-predict rows 2.. of class 1
        mask[7, 7] = 255
        items.append((image, mask, f"img{i}"))
    m = evaluate(_ToyModel(), items, batch_size=2)
    # class 1: TP 16*3=48... per image TP = 16, FP = 8*i
    tp1, fp1 = 48, 8 * (0 + 1 + 2)
    assert m.iou[1] == pytest.approx(tp1 / (tp1 + fp1))
    assert m.aAcc == pytest.approx((3 * 63 - fp1) / (3 * 63))


def test_eval_command_json(tmp_path, capsys):
    """`offseg eval CKPT --json OUT` on a tiny FashionScenes val split described by the checkpoint."""
    import json

    from offseg_vis.cli import main
    from offseg_vis.models import build_model
    from offseg_vis.models.weights import save_weights

    model = build_model("offseg-mbv2", num_classes=11, classifier="linear")
    data = {"dataset": "fashion-scenes", "val_split": "val",
            "dataset_options": {"config": {"size": 64, "item_min": 16, "item_max": 32}}, "val_options": {"length": 3}}
    ckpt = save_weights(model, tmp_path / "w", {"dataset": "fashion-scenes", "config": {"data": data}})
    out = tmp_path / "m.json"
    code = main(["eval", str(ckpt), "--root", str(tmp_path / "data"), "--json", str(out), "--device", "cpu"])
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result) == {"mIoU", "aAcc", "mAcc", "per_class"} and len(result["per_class"]) == 11
    assert "mIoU" in capsys.readouterr().out
    # The API on the same model and the same 3 scenes, named explicitly (generated on the fly, so
    # independent of how the command finds its data): the card's generator options, seed 0 (the
    # default runtime seed), whole images, no test resize.
    from offseg_vis.data.fashion_scenes import FashionScenes, FashionScenesConfig
    from offseg_vis.data.transforms import TestTransform

    scenes = FashionScenes(
        "val", config=FashionScenesConfig(size=64, item_min=16, item_max=32, seed=0), length=3, stream=True
    )
    expected = evaluate(model.eval(), scenes, batch_size=16, transform=TestTransform(None)).to_dict()
    for key in ("mIoU", "aAcc", "mAcc"):  # same pixels through the same computation: equal to the last bit
        assert result[key] == pytest.approx(expected[key], rel=0, abs=1e-12), key
    assert result["per_class"] == expected["per_class"]
