"""ONNX export (dynamic H and W) run by ONNX Runtime equals eager torch; the command and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the deploy extra is not installed")
pytest.importorskip("onnxscript", reason="the deploy extra is not installed")

from offseg_vis.cli import main  # noqa: E402
from offseg_vis.deploy.onnx_export import (  # noqa: E402
    ExportError,
    OnnxRuntimeModel,
    compare_with_torch,
    export_onnx,
    load_for_export,
)
from offseg_vis.errors import InputError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.numeric]

# ONNX Runtime and torch run different kernels (summation orders, fused ops, a different GELU/erf
# and softmax); through tens of layers the difference is float32 rounding, far below 1e-4 of the
# logits' magnitude, while a wrong operator (a transposed kernel, a mis-exported resize) moves
# the logits by a sizeable fraction of it.
TOL = 1e-4
SIZES = [(64, 96), (96, 128)]  # the second size proves the graph is not fixed to the example


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Perturb every weight so no branch is idle (default init leaves layer scales at 1e-5 and the
    sampler's gate constant)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("name", ["offseg-mbv2", "offseg-t", "segformer-b0"])
def test_onnxruntime_equals_eager_at_two_sizes(tmp_path, name):
    model, _ = load_for_export(name, num_classes=19)
    model = _randomised(model)
    path = tmp_path / f"{name}.onnx"
    report = export_onnx(model, path, SIZES[0], dynamic=True, check_sizes=SIZES)
    assert path.exists() and report.dynamic
    runtime = OnnxRuntimeModel(path)
    inputs = {runtime.session.get_inputs()[0].name: runtime.session.get_inputs()[0].shape}
    assert isinstance(inputs["images"][2], str) and isinstance(inputs["images"][3], str)  # symbolic H, W
    for check, (h, w) in zip(report.checks, SIZES):
        stride = 8 if name == "segformer-b0" else 4
        got = runtime(torch.randn(1, 3, h, w).numpy())
        assert got.shape == (1, 19, h // stride, w // stride)
        assert check["max_abs_diff"] <= TOL * check["logit_scale"], (name, check)
        assert check["logit_scale"] > 0


def test_a_wrong_model_misses_the_tolerance(tmp_path):
    """The comparison can fail: the exported graph against a model whose weights changed afterwards."""
    model = _randomised(load_for_export("offseg-mbv2", num_classes=5)[0])
    path = tmp_path / "m.onnx"
    export_onnx(model, path, (64, 64), dynamic=False, check_sizes=[])
    with torch.no_grad():
        model.decode_head.classifier.cls_repr.mul_(1.01)  # a 1 % change in W
    check = compare_with_torch(model, OnnxRuntimeModel(path), (64, 64))
    assert check["max_abs_diff"] > 10 * TOL * check["logit_scale"]


def test_command_exports_and_reports(tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert main(["onnx", "offseg-mbv2", str(out), "--num-classes", "11", "--size", "64", "64"]) == 0
    text = capsys.readouterr().out
    assert "zoo model offseg-mbv2 (random weights, 11 classes" in text
    assert "ONNX Runtime vs torch at (64, 64)" in text
    assert OnnxRuntimeModel(out)(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 11, 16, 16)
    # the benchmark's session lets its threads sleep after a run (same outputs); the default spins
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
    quiet, default = OnnxRuntimeModel(out, spinning=False), OnnxRuntimeModel(out)
    entry = "session.intra_op.allow_spinning"
    assert quiet.session.get_session_options().get_session_config_entry(entry) == "0"
    assert default.session.get_session_options().get_session_config_entry(entry) == "1"
    np.testing.assert_array_equal(quiet(x), default(x))


def test_bad_inputs_get_sentences(tmp_path, capsys):
    assert main(["onnx", "offseg-mbv2", str(tmp_path / "x.onnx"), "--size", "60", "64"]) == 2
    assert "multiples of 32" in capsys.readouterr().err
    assert main(["onnx", "offseg-nope", str(tmp_path / "x.onnx")]) == 2
    assert "Unknown model" in capsys.readouterr().err
    with pytest.raises(InputError, match="does not exist"):
        OnnxRuntimeModel(tmp_path / "missing.onnx")


def test_export_failures_are_export_errors(tmp_path):
    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # control flow on a tensor's value

    with pytest.raises(ExportError, match="could not be exported"):
        export_onnx(Unexportable(), tmp_path / "u.onnx", (64, 64), dynamic=False, check_sizes=[])
