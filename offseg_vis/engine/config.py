"""Run configuration: dataclasses, YAML load/save and dotted command-line overrides.

A run is described by :class:`Config` with six sections (model, data, optim, schedule, runtime,
test). YAML files hold any subset of the keys; overrides like ``optim.lr=3e-4`` are applied on top.
Unknown keys are an error that names the key and the nearest valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from offseg_vis.errors import ConfigError
from offseg_vis.models.layers import as_pair  # noqa: F401  (re-exported: engine callers import it from here)
from offseg_vis.models.weights import atomic_write_text


@dataclass
class ModelConfig:
    """Which network to build (passed to ``offseg_vis.build_model``).

    Attributes:
        name: zoo name, e.g. "offseg-mbv2", "offseg-t", "segformer-b0", "segnext-t".
        num_classes: K.
        classifier: "offset" (Offset Learning) or "linear" (per-pixel baseline).
        pretrained: weights of the whole model to start from (our safetensors or an official
            checkpoint; None: random head).
        backbone_pretrained: ImageNet weights for the backbone: true = the bundled file where one
            exists (MobileNetV2), or a path to an official ImageNet checkpoint.
        classifier_options: options of OffsetLearning (class_offsets, feature_offsets, logit_norm).
        options: any further keyword arguments of ``build_model`` for this model.
    """

    name: str = "offseg-mbv2"
    num_classes: int = 11
    classifier: str = "offset"
    pretrained: str | None = None
    backbone_pretrained: bool | str = False
    classifier_options: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    """Dataset and training augmentation (the OffSeg recipe, spec §3.2).

    Attributes:
        dataset: name for ``build_dataset``: fashion-scenes, ade20k, cityscapes, coco-stuff,
            pascal-context, folder.
        root: dataset folder (None: the dataset's default, e.g. FashionScenes' cache).
        train_split, val_split: split names.
        dataset_options: extra keyword arguments of ``build_dataset`` (both splits).
        train_options, val_options: extra keyword arguments for one split only (e.g. length).
        crop_size: training crop (h, w) or one int.
        scale: RandomResize base scale (long, short) or None to keep the image size.
        ratio_range: RandomResize ratio range.
        cat_max_ratio: RandomCrop's limit on the largest class share of a crop.
        flip_prob: horizontal flip probability.
        photometric: PhotoMetricDistortion on or off.
        batch_size: images per process (the global batch is this times the world size).
        num_workers: DataLoader worker processes per training process.
    """

    dataset: str = "fashion-scenes"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    dataset_options: dict = field(default_factory=dict)
    train_options: dict = field(default_factory=dict)
    val_options: dict = field(default_factory=dict)
    crop_size: list[int] = field(default_factory=lambda: [512, 512])
    scale: list[int] | None = None
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    batch_size: int = 2
    num_workers: int = 2


@dataclass
class OptimConfig:
    """AdamW with per-group learning rates and weight decay (spec §3.2).

    Attributes:
        lr: base learning rate (backbone).
        weight_decay: decoupled weight decay.
        betas, eps: AdamW's.
        head_lr_mult: lr multiplier for parameters whose name starts with ``head_prefix``.
        head_prefix: "decode_head." (the whole decode head, Offset Learning's ``cls_repr``
            included, as in the official ``paramwise_cfg``).
        no_decay_keys: substrings of parameter names that get no weight decay (spec: "norm",
            "pos_block").
        no_decay_norm_layers: also exempt every parameter of a normalisation layer (BatchNorm,
            GroupNorm, LayerNorm) whatever its name, because our module names differ from mmseg's.
            Biases and ``cls_repr`` keep their decay, as in the official recipe.
        grad_clip: max gradient norm, or None for no clipping.
    """

    lr: float = 6e-5
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    head_lr_mult: float = 10.0
    head_prefix: str = "decode_head."
    no_decay_keys: list[str] = field(default_factory=lambda: ["norm", "pos_block"])
    no_decay_norm_layers: bool = True
    grad_clip: float | None = None


@dataclass
class ScheduleConfig:
    """Iteration budget: linear warm-up, then poly decay (spec §3.2), evaluation and checkpoints.

    Attributes:
        max_iters: optimiser steps in total.
        warmup_iters: linear warm-up length (from ``warmup_start_factor`` x lr to lr).
        warmup_start_factor: lr factor at step 0.
        poly_power: PolyLR power after warm-up (1.0 = linear decay to ``min_lr``).
        min_lr: final learning rate (eta_min).
        eval_interval: evaluate every this many steps (and always at the end); 0 = only at the end.
        checkpoint_interval: write ``last`` every this many steps (0: at evaluations only).
        log_interval: JSON-lines training record every this many steps.
    """

    max_iters: int = 160000
    warmup_iters: int = 1500
    warmup_start_factor: float = 1e-6
    poly_power: float = 1.0
    min_lr: float = 0.0
    eval_interval: int = 16000
    checkpoint_interval: int = 0
    log_interval: int = 50


@dataclass
class RuntimeConfig:
    """Where and how the run executes.

    Attributes:
        work_dir: run folder for config, logs and checkpoints (None: ``runs/<config name>``).
        device: "auto" (cuda when available, else cpu), "cpu", "cuda" or "cuda:N".
        amp: "auto" (bf16 on CUDA when supported, else fp16 with a grad scaler; off on CPU),
            "bf16", "fp16" or "off".
        channels_last: memory format for convolutions (helps on recent GPUs).
        seed: seed of data order, augmentation and initialisation.
        num_threads: torch CPU threads (None: torch's default).
        deterministic: ``torch.use_deterministic_algorithms`` (slower on GPU).
        sync_bn: convert BatchNorm to SyncBatchNorm under DistributedDataParallel (CUDA only).
        find_unused_parameters: DistributedDataParallel option.
        progress: show a tqdm progress bar (rank 0).
        tensorboard: also write TensorBoard events when the package is installed.
        overwrite: allow a new run in a work dir that already holds one.
        save_half: store weights as float16.
    """

    work_dir: str | None = None
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = False
    seed: int = 0
    num_threads: int | None = None
    deterministic: bool = False
    sync_bn: bool = False
    find_unused_parameters: bool = False
    progress: bool = True
    tensorboard: bool = True
    overwrite: bool = False
    save_half: bool = False


@dataclass
class TestConfig:
    """Evaluation protocol.

    Attributes:
        mode: "whole" or "slide" inference.
        crop_size, stride: sliding-window crop and step (slide mode).
        scale: test resize (long, short) applied to the image (None: keep size); predictions are
            scored at the label's resolution.
        batch_size: images per forward pass (images of different sizes are run one by one).
        max_images: evaluate on the first N images only (None: all).
    """

    mode: str = "whole"
    crop_size: list[int] = field(default_factory=lambda: [512, 512])
    stride: list[int] = field(default_factory=lambda: [480, 480])
    scale: list[int] | None = None
    batch_size: int = 1
    max_images: int | None = None


@dataclass
class Config:
    """A whole run: model, data, optimiser, schedule, runtime and test settings."""

    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    test: TestConfig = field(default_factory=TestConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable)."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# dict <-> dataclass with type checking


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of a config class, e.g. ``optim.lr`` (sections included)."""
    keys = []
    for name, tp in _hints(cls).items():
        key = prefix + name
        keys.append(key)
        if dataclasses.is_dataclass(tp):
            keys.extend(valid_keys(tp, key + "."))
    return keys


def _unknown_key_error(key: str, candidates: Iterable[str]) -> ConfigError:
    candidates = list(candidates)
    leaf = key.rsplit(".", 1)[-1]
    near = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    # also match on the last component, so "optim.learning_rate" finds "optim.lr" via "lr"-like leaves
    near += [c for c in difflib.get_close_matches(leaf, candidates, n=3, cutoff=0.6) if c not in near]
    near += [c for c in candidates if c.rsplit(".", 1)[-1] == leaf and c not in near]
    hint = f" Did you mean {', '.join(repr(n) for n in near[:3])}?" if near else ""
    return ConfigError(f"Unknown config key {key!r}.{hint} Valid keys are listed in offseg_vis/engine/config.py.")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; ConfigError naming ``key`` if impossible."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"Config key {key!r} got {value!r}, which is not a {_type_name(tp)}.")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"Config key {key!r} must be true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"Config key {key!r} must be an integer, got {value!r}.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                pass
            else:
                if f.is_integer():
                    return int(f)
        raise ConfigError(f"Config key {key!r} must be an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"Config key {key!r} must be a number, got {value!r}.")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"Config key {key!r} must be a number, got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"Config key {key!r} must be a string, got {value!r}.")
    if origin is list or tp is list:
        if isinstance(value, int | float) and not isinstance(value, bool) and args:
            value = [value, value]  # one number for a pair such as crop_size: 128
        if not isinstance(value, list | tuple):
            raise ConfigError(f"Config key {key!r} must be a list, got {value!r}.")
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if origin is dict or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"Config key {key!r} must be a mapping, got {value!r}.")
        return dict(value)
    return value


def from_dict(data: Mapping[str, Any] | None, cls: type = Config, prefix: str = "") -> Any:
    """Build a config dataclass from a nested dict; unknown keys raise ConfigError."""
    data = dict(data or {})
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        dotted = prefix + str(key)
        if key not in hints:
            raise _unknown_key_error(dotted, valid_keys(Config))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"Config section {dotted!r} must be a mapping, got {value!r}.")
            kwargs[key] = from_dict(value, tp, dotted + ".")
        else:
            kwargs[key] = _coerce(value, tp, dotted)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(
            f"Override {text!r} is not of the form key=value (e.g. optim.lr=3e-4 or schedule.max_iters=200)."
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(config: Config, overrides: Iterable[str]) -> Config:
    """Apply ``key=value`` strings (values parsed as YAML) to a copy of ``config``.

    Examples: ``optim.lr=3e-4``, ``data.crop_size=[64,64]``, ``model.classifier_options={logit_norm: none}``,
    ``runtime.num_threads=null``.
    """
    tree = config.to_dict()
    all_keys = valid_keys(Config)
    for text in overrides:
        key, value = _parse_override(text)
        if key not in all_keys:
            raise _unknown_key_error(key, all_keys)
        parts = key.split(".")
        node = tree
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value  # a mapping value replaces the whole mapping
    return from_dict(tree)


# ----------------------------------------------------------------------------------------------
# package data: the shipped recipes and checkpoints (inside the package, so a wheel carries them)


def _package_folder(name: str) -> Path:
    """``offseg_vis/<name>`` as a file-system path, through importlib.resources (works for a clone,
    an editable install and a wheel install alike; the package is never imported from a zip)."""
    return Path(str(importlib.resources.files("offseg_vis").joinpath(name)))


def shipped_configs_dir() -> Path:
    """The folder of the shipped recipes (``offseg_vis/configs``; ``configs/`` of a clone links to it)."""
    return _package_folder("configs")


def shipped_checkpoints_dir() -> Path:
    """The folder of the shipped checkpoints (``offseg_vis/checkpoints``; ``checkpoints/`` of a clone
    links to it): NAME.safetensors + NAME.json model card each."""
    return _package_folder("checkpoints")


def shipped_config_names() -> list[str]:
    """Names of the shipped recipes (file stems), sorted, e.g. ``offseg-mbv2_fashion-scenes``."""
    folder = shipped_configs_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def resolve_config(name_or_path: str | os.PathLike) -> Path:
    """A config file from a path or the name of a shipped recipe.

    An existing file wins; otherwise ``name_or_path`` (with or without ``.yaml``, with or without a
    leading ``configs/``) is looked up among the shipped recipes, so ``offseg-mbv2_fashion-scenes``
    and ``configs/offseg-mbv2_fashion-scenes.yaml`` work from any folder and from a wheel install.

    Raises:
        ConfigError: neither a file nor a shipped name; the sentence lists the shipped names.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; pass a YAML config file or the name of a shipped recipe.")
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    # only a bare name or configs/NAME(.yaml) may mean a shipped recipe, not some other folder's file
    if path.parent in (Path("."), Path("configs")):
        candidate = shipped_configs_dir() / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    names = shipped_config_names()
    listing = f"The shipped recipes are: {', '.join(names) or '(none found)'}."
    if path.parent not in (Path("."), Path("configs")):
        raise ConfigError(f"Config file {path} does not exist. Pass a YAML file or a shipped recipe's name. {listing}")
    near = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise ConfigError(f"Config {str(name_or_path)!r} is neither a file nor a shipped recipe.{hint} {listing}")


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config (a path or a shipped recipe's name, see :func:`resolve_config`; any subset
    of keys, missing ones take the defaults) and apply overrides.

    The run name defaults to the file's stem.
    """
    path = resolve_config(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"Config file {path} must hold a mapping of sections (model:, data:, ...).")
    data = dict(data)
    data.setdefault("name", path.stem)
    return apply_overrides(from_dict(data), overrides)


def config_to_yaml(config: Config) -> str:
    """The full resolved config as YAML text."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic_write_text(path, config_to_yaml(config))
