"""`offseg bench app` times the model it was asked for (a random-weight zoo model with a dataset's classes)."""

from __future__ import annotations

import pytest

pytest.importorskip("gradio")

from offseg_vis.bench.app_latency import benchmark, format_result  # noqa: E402
from offseg_vis.data.class_names import classes_for  # noqa: E402
from offseg_vis.errors import ConfigError  # noqa: E402


def test_untrained_model_with_a_datasets_classes(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    r = benchmark(size=64, runs=1, warmup=0, clicks=2, untrained="offseg-mbv2", dataset="cityscapes")
    assert r["weights"] == "random (untrained)"
    assert r["classes"] == len(classes_for("cityscapes").names) == 19
    assert r["model"].startswith("offseg-mbv2") and r["twin"]
    assert r["segmentation"]["runs"] == 1 and r["click"]["runs"] == 2
    assert "random (untrained) weights" in format_result(r)


def test_checkpoints_and_untrained_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        benchmark(checkpoints=[tmp_path / "x.safetensors"], untrained="offseg-t")
