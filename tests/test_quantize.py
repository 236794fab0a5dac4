"""int8 static quantisation (ONNX Runtime) stays within its rounding bound of fp32 and calibrates
on train scenes only; the inductor runtime of ``offseg bench speed`` equals eager."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime", reason="the deploy extra is not installed")
pytest.importorskip("onnxscript", reason="the deploy extra is not installed")

from offseg_vis.data.fashion_scenes import FashionScenesConfig, generate_scene  # noqa: E402
from offseg_vis.data.transforms import to_normalized_tensor  # noqa: E402
from offseg_vis.deploy.onnx_export import OnnxRuntimeModel, export_onnx  # noqa: E402
from offseg_vis.deploy.quantize import calibration_reader, fold_batchnorm, quantize_onnx  # noqa: E402
from offseg_vis.engine.config import Config, DataConfig  # noqa: E402
from offseg_vis.engine.run import DataSplit  # noqa: E402
from offseg_vis.errors import InputError  # noqa: E402

pytestmark = [pytest.mark.numeric]


class Tiny(nn.Module):
    """images (B, 3, H, W) -> conv3x3 (8) -> ReLU -> conv1x1 (4): logits (B, 4, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv2(self.relu(self.conv1(x)))


def _config(length: int = 6) -> Config:
    cfg = Config()
    cfg.data = DataConfig(dataset="fashion-scenes", train_options={"length": length}, val_options={"length": 4})
    return cfg


class _Arrays:
    """A calibration reader over fixed arrays (for the wrongly calibrated model)."""

    def __init__(self, arrays):
        self.arrays, self.i = arrays, 0

    def __len__(self):
        return len(self.arrays)

    def get_next(self):
        self.i += 1
        return {"images": self.arrays[self.i - 1]} if self.i <= len(self.arrays) else None

    def rewind(self):
        self.i = 0


def test_calibration_reader_yields_the_train_scenes_not_val():
    reader = calibration_reader(_config(), 3)
    assert reader.data.role == "train" and reader.names == ["train_000000", "train_000001", "train_000002"]
    config = FashionScenesConfig()
    for k in range(3):
        got = reader.image(k)
        train = to_normalized_tensor(generate_scene("train", k, config)[0]).numpy()[None]
        val = to_normalized_tensor(generate_scene("val", k, config)[0]).numpy()[None]
        np.testing.assert_array_equal(got, train)  # the train scene, through the val transform
        assert np.abs(got - val).max() > 0.5  # and not the val scene of the same index
    with pytest.raises(InputError, match="train split only"):
        from offseg_vis.deploy.quantize import SceneCalibrationReader

        SceneCalibrationReader(DataSplit("val", [], None), 3, None)


def _rounding_bound(model: Tiny, inputs: list[np.ndarray], x: np.ndarray) -> float:
    """Worst-case max |int8 − fp32| of ``model`` on ``x`` from the int8 step sizes (MinMax ranges over
    ``inputs``, asymmetric int8 activations, symmetric per-channel int8 weights).

    Each rounding is at most half a step. Per output position: a conv turns an input error e into
    at most |W| * e, and a weight error of half a step into (s_w / 2) * sum |input| over its window;
    ReLU does not enlarge errors. Computed position by position in float64 with the same convs.
    """
    f = torch.nn.functional
    with torch.no_grad():
        cal = torch.from_numpy(np.concatenate(inputs)).double()
        h_cal = model.double().conv1(cal)  # pre-ReLU: its range is >= the ReLU output's
        y_cal = model.conv2(model.relu(h_cal))
        xt = torch.from_numpy(x).double()
        h = model.relu(model.conv1(xt))
    model.float()
    step = lambda t: (max(float(t.max()), 0.0) - min(float(t.min()), 0.0)) / 255  # noqa: E731
    s_x, s_h, s_y = step(cal), step(h_cal), step(y_cal)
    w1, w2 = model.conv1.weight.detach().double(), model.conv2.weight.detach().double()
    sw1 = w1.abs().amax((1, 2, 3)) / 127  # (8,) per output channel
    sw2 = w2.abs().amax((1, 2, 3)) / 127  # (4,)
    ones1, ones2 = torch.ones_like(w1), torch.ones_like(w2)
    x_abs = xt.abs() + s_x / 2  # |quantised input| <= |x| + half a step
    e_h = f.conv2d(torch.full_like(xt, s_x / 2), w1.abs(), padding=1)
    e_h = e_h + sw1.view(1, -1, 1, 1) / 2 * f.conv2d(x_abs, ones1, padding=1) + s_h / 2  # (1, 8, H, W)
    e_y = f.conv2d(e_h, w2.abs()) + sw2.view(1, -1, 1, 1) / 2 * f.conv2d(h.abs() + e_h, ones2) + s_y / 2
    return float(e_y.max())


def test_int8_stays_within_its_rounding_bound_and_bad_calibration_does_not(tmp_path):
    model = Tiny().eval()
    fp32 = tmp_path / "tiny.onnx"
    export_onnx(model, fp32, (64, 64), dynamic=False, check_sizes=[], optimize=True)
    reader = calibration_reader(_config(), 4)
    inputs = [reader.image(k)[..., :64, :64].copy() for k in range(4)]  # 64² crops of the train scenes
    report = quantize_onnx(fp32, tmp_path / "int8.onnx", _Arrays(inputs), exclude_op_types=())
    assert report.quantized_nodes.get("Conv") == 2
    zeros = quantize_onnx(fp32, tmp_path / "zeros.onnx", _Arrays([np.zeros_like(inputs[0])]), exclude_op_types=())
    x = inputs[2]  # a calibration-like input: inside the calibrated ranges, so nothing clips
    ref = OnnxRuntimeModel(fp32)(x)
    int8 = OnnxRuntimeModel(report.path)(x)
    bad = OnnxRuntimeModel(zeros.path)(x)
    bound = _rounding_bound(model, inputs, x)
    err, bad_err = np.abs(int8 - ref).max(), np.abs(bad - ref).max()
    assert 0 < err <= bound
    # calibrated on zeros, the ranges are degenerate and the activations lose their resolution
    assert bad_err > bound and bad_err > 10 * err


def test_fold_batchnorm_keeps_the_function():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.normal_()
    model = model.double()  # fold in float64: the fold is exact algebra, so only ~1e-15 rounding remains
    folded, count = fold_batchnorm(model)
    assert count == 1 and isinstance(folded[1], nn.Identity) and isinstance(model[1], nn.BatchNorm2d)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(folded(x), model(x), rtol=0, atol=1e-12)


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="inductor needs a C compiler")
def test_inductor_runtime_equals_eager():
    from offseg_vis.bench.speed import _inductor_forward

    model = Tiny().eval()
    run, check = _inductor_forward(model, 64, "cpu")
    run()
    # same fp32 arithmetic, different kernel fusion and summation order over 27 and 8 products:
    # differences are a few ulps of the logits' magnitude
    assert check["max_abs_diff"] <= 1e-5 * max(check["logit_scale"], 1.0)
    assert check["graph_breaks"] == 0 and check["graphs"] == 1


def test_int8_command_refuses_a_zoo_name_and_stray_flags(tmp_path, capsys):
    from offseg_vis.cli import main

    # calibration needs a checkpoint's config (its train split); a zoo name has none
    assert main(["onnx", "offseg-mbv2", str(tmp_path / "x.onnx"), "--int8"]) == 2
    assert "not a checkpoint" in capsys.readouterr().err
    assert main(["onnx", "offseg-mbv2", str(tmp_path / "x.onnx"), "--evaluate"]) == 2
    assert "belong to --int8" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
