"""Configs: YAML round trip, dotted overrides, type checks, unknown keys, the shipped recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from offseg_vis.engine.config import (
    Config,
    apply_overrides,
    config_to_yaml,
    from_dict,
    load_config,
    resolve_config,
    save_config,
    shipped_checkpoints_dir,
    shipped_config_names,
    shipped_configs_dir,
    valid_keys,
)
from offseg_vis.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_yaml_round_trip(tmp_path):
    cfg = apply_overrides(Config(name="x"), ["optim.lr=3e-4", "data.crop_size=[64,96]", "model.classifier=linear"])
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert again.optim.lr == pytest.approx(3e-4)
    assert again.data.crop_size == [64, 96]


def test_overrides_parse_and_coerce():
    cfg = apply_overrides(
        Config(),
        [
            "optim.lr=3e-4",  # YAML 1.1 reads this as a string: must become a float
            "schedule.max_iters=200",
            "runtime.num_threads=null",
            "runtime.channels_last=true",
            "data.crop_size=128",  # one int for a pair
            "model.classifier_options={logit_norm: none}",
            "model.backbone_pretrained=true",
        ],
    )
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.schedule.max_iters == 200
    assert cfg.runtime.num_threads is None
    assert cfg.runtime.channels_last is True
    assert cfg.data.crop_size == [128, 128]
    assert cfg.model.classifier_options == {"logit_norm": "none"}
    assert cfg.model.backbone_pretrained is True
    assert apply_overrides(Config(), ["model.backbone_pretrained=w/eformer.pth"]).model.backbone_pretrained == (
        "w/eformer.pth"
    )


def test_unknown_key_names_nearest():
    with pytest.raises(ConfigError) as err:
        apply_overrides(Config(), ["optim.lrr=1e-3"])
    assert "optim.lrr" in str(err.value) and "optim.lr" in str(err.value)
    with pytest.raises(ConfigError) as err:
        from_dict({"schedule": {"max_iter": 10}})
    assert "schedule.max_iter" in str(err.value) and "schedule.max_iters" in str(err.value)


def test_bad_values_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="schedule.max_iters"):
        apply_overrides(Config(), ["schedule.max_iters=many"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(Config(), ["optim.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2]\n")
    with pytest.raises(ConfigError, match="optim"):
        load_config(bad)


def test_every_key_reachable():
    keys = valid_keys()
    assert "optim.head_lr_mult" in keys and "runtime.amp" in keys and "test.mode" in keys
    assert "# " not in config_to_yaml(Config())


PAPER_RECIPES = [
    f"{m}_{d}" for m in ("offseg-t", "offseg-b", "offseg-l") for d in ("ade20k", "cityscapes", "coco-stuff")
] + ["segformer-b0-ol_ade20k", "segnext-t-ol_ade20k"]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_config_loads(path):
    cfg = load_config(path)
    assert cfg.model.classifier == "offset"


def test_cpu_default_config():
    cfg = load_config(CONFIGS / "offseg-mbv2_fashion-scenes.yaml")
    assert cfg.name == "offseg-mbv2_fashion-scenes"
    assert (cfg.model.name, cfg.model.num_classes, cfg.data.dataset) == ("offseg-mbv2", 11, "fashion-scenes")
    assert cfg.data.crop_size == [128, 128] and cfg.data.batch_size == 16
    assert cfg.model.backbone_pretrained is True


@pytest.mark.parametrize("stem", PAPER_RECIPES)
def test_paper_recipes(stem):
    path = CONFIGS / f"{stem}.yaml"
    cfg = load_config(path)
    assert cfg.name == path.stem
    # the paper's recipe (spec 3.2)
    assert cfg.optim.lr == pytest.approx(6e-5) and cfg.optim.weight_decay == pytest.approx(0.01)
    assert cfg.optim.head_lr_mult == 10 and cfg.optim.no_decay_keys == ["norm", "pos_block"]
    assert cfg.schedule.warmup_iters == 1500 and cfg.schedule.poly_power == 1.0
    expected = {"ade20k": (150, 160000, 2), "cityscapes": (19, 160000, 1), "coco-stuff": (171, 80000, 2)}
    classes, iters, batch = expected[cfg.data.dataset]
    assert (cfg.model.num_classes, cfg.schedule.max_iters, cfg.data.batch_size) == (classes, iters, batch)


def test_shipped_recipes_resolve_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: only the package data can answer
    names = shipped_config_names()
    # the shipped names are exactly the clone's configs/ files (configs/ links into the package)
    assert names == sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert shipped_configs_dir().resolve() == CONFIGS.resolve()
    for spelling in ("offseg-mbv2_fashion-scenes", "offseg-mbv2_fashion-scenes.yaml",
                     "configs/offseg-mbv2_fashion-scenes.yaml"):  # fmt: skip
        path = resolve_config(spelling)
        assert path.resolve() == (CONFIGS / "offseg-mbv2_fashion-scenes.yaml").resolve()
    assert load_config("offseg-t_ade20k").name == "offseg-t_ade20k"
    # an existing file wins over a shipped name
    own = tmp_path / "offseg-t_ade20k.yaml"
    own.write_text("name: mine\n")
    assert load_config(own).name == "mine"


def test_unknown_config_name_lists_the_shipped_names():
    with pytest.raises(ConfigError, match="Did you mean 'offseg-mbv2_fashion-scenes'") as err:
        resolve_config("offseg-mbv2_fashion-scene")
    for name in shipped_config_names():
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config("elsewhere/offseg-t_ade20k.yaml")  # a path elsewhere never means a shipped recipe


def test_shipped_checkpoints_dir_holds_both_pairs_and_their_cards():
    files = sorted(p.name for p in shipped_checkpoints_dir().iterdir())
    pairs = ("linear", "offset", "linear-looks", "offset-looks")  # plain FashionScenes and the +looks preset
    assert files == sorted(f"offseg-mbv2_{c}.{ext}" for c in pairs for ext in ("json", "safetensors"))
