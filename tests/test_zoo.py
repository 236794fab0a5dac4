"""The zoo: every named model builds, predicts at any size, and unknown names are explained."""

from __future__ import annotations

import pytest
import torch

from offseg_vis import build_model, list_models
from offseg_vis.errors import ConfigError
from offseg_vis.models.zoo import MODELS

SMALL_MODELS = ["offseg-t", "segformer-b0", "segnext-t", "offseg-mbv2"]


@pytest.mark.parametrize("name", SMALL_MODELS)
@pytest.mark.parametrize("classifier", ["offset", "linear"])
def test_any_size_predict(name, classifier):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, classifier=classifier).eval()
    for size in [(97, 61), (250, 333)]:
        logits = model.predict(torch.randn(1, 3, *size))
        assert logits.shape == (1, 7, *size)
        assert torch.isfinite(logits).all()


def test_list_models_covers_the_paper():
    names = set(list_models())
    assert {"offseg-t", "offseg-b", "offseg-l", "segnext-t", "segnext-s", "segnext-b", "offseg-mbv2"} <= names
    assert {f"segformer-b{i}" for i in range(6)} <= names


def test_unknown_model_and_classifier_are_explained():
    with pytest.raises(ConfigError, match="Did you mean offseg-t"):
        build_model("offseg-tt", num_classes=3)
    with pytest.raises(ConfigError, match="classifier"):
        build_model("offseg-mbv2", num_classes=3, classifier="mlp")


@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if s.paper_params_m])
def test_parameter_counts_within_three_percent_of_paper(name):
    spec = MODELS[name]
    for classifier, paper in spec.paper_params_m.items():
        model = build_model(name, num_classes=150, classifier=classifier)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert abs(params - paper) / paper <= 0.03, f"{name}/{classifier}: {params:.2f} M vs paper {paper} M"


def test_offseg_t_export_matches_eager():
    torch.manual_seed(0)
    model = build_model("offseg-t", num_classes=7).eval()
    x = torch.randn(1, 3, 128, 128)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), atol=1e-4, rtol=1e-4)
