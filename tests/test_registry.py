"""The model registry and the shared layers: registration, building, options, converters, and the
blocks every backbone and head shares (checked against torch's functional ops in float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from offseg_vis.errors import CheckpointError, ConfigError
from offseg_vis.models import registry
from offseg_vis.models.convert import infer_num_classes
from offseg_vis.models.layers import ConvNormAct, DropPath, as_pair, conv_norm_act, drop_path, drop_path_rates
from offseg_vis.models.registry import (
    build_model,
    list_models,
    load_official_checkpoint,
    model_entry,
    register_converter,
    register_model,
)

# ------------------------------------------------------------------------------------------ layers


def test_as_pair():
    assert as_pair(5) == (5, 5)
    assert as_pair(np.int64(7)) == (7, 7)
    assert as_pair([3]) == (3, 3)
    assert as_pair((2, 9)) == (2, 9)
    assert as_pair(None) is None
    with pytest.raises(ConfigError, match="3 values"):
        as_pair([1, 2, 3])
    with pytest.raises(ConfigError, match="int or a pair"):
        as_pair("big")


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    x = torch.ones(4000, 3, 2, 2)
    assert drop_path(x, 0.5, training=False) is x
    assert DropPath(0.0).train()(x) is x
    torch.manual_seed(0)
    y = DropPath(0.25).train()(x)
    per_sample = y.flatten(1)
    # every sample is either dropped (all 0) or kept and scaled by 1 / 0.75, never mixed
    dropped = (per_sample == 0).all(1)
    kept = (per_sample == 1 / 0.75).all(1)
    assert bool((dropped | kept).all())
    # kept fraction ~ Binomial(4000, 0.75) / 4000: std 0.0068, 0.035 is > 5 std
    assert abs(kept.double().mean().item() - 0.75) < 0.035
    assert drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert drop_path_rates(0.3, 1) == [0.0]


def test_conv_norm_act_named_keys_and_arithmetic():
    torch.manual_seed(0)
    block = ConvNormAct(4, 8, 3, norm="gn", norm_groups=4, act="relu").double().eval()
    assert list(block.state_dict()) == ["conv.weight", "gn.weight", "gn.bias"]  # no conv bias before a norm
    with torch.no_grad():
        block.gn.weight.uniform_(0.5, 1.5)
        block.gn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 4, 7, 5, dtype=torch.float64)
    expected = F.relu(F.group_norm(F.conv2d(x, block.conv.weight, padding=1), 4, block.gn.weight, block.gn.bias))
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-12)
    plain = ConvNormAct(4, 8, 1, norm=None, act=None)
    assert list(plain.state_dict()) == ["conv.weight", "conv.bias"]
    with pytest.raises(ConfigError, match="divisible by 32"):
        ConvNormAct(4, 40, norm="gn")
    with pytest.raises(ConfigError, match="Unknown activation"):
        ConvNormAct(4, 8, act="swish")


def test_conv_norm_act_sequential_keys_and_arithmetic():
    torch.manual_seed(0)
    block = conv_norm_act(6, 6, 3, act="relu6", stride=2, groups=6).double().eval()
    assert list(block.state_dict()) == [
        "0.weight",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert isinstance(block[2], nn.ReLU6)
    bn = block[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
    x = torch.randn(1, 6, 9, 9, dtype=torch.float64) * 3
    conv = F.conv2d(x, block[0].weight, stride=2, padding=1, groups=6)
    normed = (conv - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    expected = (normed * bn.weight[:, None, None] + bn.bias[:, None, None]).clamp(0, 6)
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-12)
    with_bias = conv_norm_act(3, 4, bias=True, act=None)
    assert list(with_bias.state_dict())[:2] == ["0.weight", "0.bias"] and len(with_bias) == 2


# ---------------------------------------------------------------------------------------- registry


class _Toy(nn.Module):
    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.proj = nn.Conv2d(3, width, 1)
        self.cls = nn.Conv2d(width, num_classes, 1)


@pytest.fixture
def toy_name():
    """A throw-away registry name, removed again so no other test sees it."""
    name = "toy-test-model"
    yield name
    registry._REGISTRY.pop(name, None)


def test_register_build_and_options(toy_name):
    calls = []

    @register_model(toy_name, config={"width": 4}, description="toy", paper_params_m={"offset": 1.0})
    def build(num_classes, classifier, classifier_options, config, scale: int = 1):
        calls.append((num_classes, classifier, classifier_options, dict(config), scale))
        config["width"] *= scale  # a builder may change its copy; the registered default must not change
        model = _Toy(num_classes, config["width"])
        model.config = config
        return model

    assert toy_name in list_models()
    assert toy_name in list_models(cost_table=True)  # cost_table defaults to True
    model = build_model(toy_name, 5, classifier="linear", classifier_options={"a": 1}, scale=3)
    assert calls == [(5, "linear", {"a": 1}, {"width": 4}, 3)]
    assert (model.model_name, model.classifier_name, model.config) == (toy_name, "linear", {"width": 12})
    assert model_entry(toy_name).config == {"width": 4}
    assert build_model(toy_name, 2).proj.out_channels == 4
    with pytest.raises(ConfigError, match=r"takes no option 'depth'; its options are: scale"):
        build_model(toy_name, 2, depth=3)
    with pytest.raises(ConfigError, match="registered twice"):
        register_model(toy_name)(build)
    with pytest.raises(ConfigError, match="Unknown classifier"):
        build_model(toy_name, 2, classifier="mlp")


def test_converter_is_looked_up_by_model_name(toy_name, tmp_path):
    register_model(toy_name)(lambda num_classes, classifier, classifier_options, config: _Toy(num_classes, 4))
    model = build_model(toy_name, 3)
    source = {f"official.{k}": torch.randn_like(v) for k, v in model.state_dict().items()}
    path = tmp_path / "toy.pth"
    torch.save({"state_dict": source}, path)
    with pytest.raises(CheckpointError, match=f"No official checkpoints exist for {toy_name}"):
        load_official_checkpoint(model, path)

    @register_converter(toy_name)
    def strip_prefix(src, target):
        out = {k.removeprefix("official."): v for k, v in src.items()}
        return out, registry.ConversionReport(used=sorted(out))

    loaded = build_model(toy_name, 3, pretrained=path)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, source[f"official.{key}"]), key
    with pytest.raises(ConfigError, match="already has"):
        register_converter(toy_name)(strip_prefix)
    with pytest.raises(ConfigError, match="Unknown model"):
        register_converter("no-such-model")(strip_prefix)
    unnamed = _Toy(3, 4)
    with pytest.raises(CheckpointError, match="not built by build_model"):
        load_official_checkpoint(unnamed, path)


def test_every_registered_model_has_its_converter_and_metadata():
    names = list_models()
    assert "mask2former-swin-t" in names and "mask2former-swin-t" not in list_models(cost_table=True)
    for name in names:
        entry = model_entry(name)
        assert entry.converter is not None, name
        assert entry.description, name
        assert entry.test_mode in ("whole", "slide"), name
        assert set(entry.paper_params_m) <= {"linear", "offset"} and set(entry.paper_gmacs) <= {"linear", "offset"}


def test_mask2former_converter_renames_the_offset_module_and_accounts_for_keys():
    with torch.device("meta"):  # shapes only: no memory, no init
        offset = build_model("mask2former-swin-t", num_classes=3).state_dict()
        linear = build_model("mask2former-swin-t", num_classes=3, classifier="linear").state_dict()
    official = {k.replace("decode_head.offset_learning.", "decode_head.ol_module."): v for k, v in offset.items()}
    convert = model_entry("mask2former-swin-t").converter
    mapped, report = convert(official, offset)
    assert list(mapped) == list(offset)
    assert all(mapped[k] is offset[k] for k in offset)
    assert sorted(report.renamed) == [
        "decode_head.ol_module.cls_offset_proj.weight",
        "decode_head.ol_module.feat_offset_proj.weight",
    ]
    assert infer_num_classes(official) == 3  # from cls_embed (K + 1 rows)
    with pytest.raises(CheckpointError, match="2 unknown keys"):
        convert(official, linear)  # an OL checkpoint into the per-pixel model
    with pytest.raises(ConfigError, match="no ImageNet weight loader"):  # not silently ignored
        build_model("mask2former-swin-t", num_classes=3, backbone_pretrained="swin.pth")
    missing = dict(official)
    missing.pop("decode_head.cls_embed.bias")
    with pytest.raises(CheckpointError, match="1 keys missing"):
        convert(missing, offset)
