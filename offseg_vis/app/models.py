"""The checkpoints the app serves: found on disk, loaded once, described by their model cards.

Each ``NAME.safetensors`` (with its ``NAME.json`` card) is loaded with the run API's ``load_run`` (the network
in eval mode, its card, class names and palette) and served as an :class:`AppModel`. A lock per model makes sure
one model never runs two images at once, whoever calls it (the web queue also limits concurrency).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from offseg_vis.data.fashion_scenes import SCENE_PRESETS
from offseg_vis.engine.checkpoint import card_dataset_name, card_metrics, card_scene_preset, recipe_key
from offseg_vis.engine.config import shipped_checkpoints_dir
from offseg_vis.engine.run import LoadedRun, load_run
from offseg_vis.errors import CheckpointError

CHECKPOINTS_ENV = "OFFSEG_CHECKPOINTS"


def default_checkpoint_dir() -> Path:
    """``$OFFSEG_CHECKPOINTS``, else the checkpoints shipped with the package (``checkpoints/`` of a
    clone links to them, and a wheel install carries them)."""
    env = os.environ.get(CHECKPOINTS_ENV)
    if env:
        return Path(env).expanduser()
    return shipped_checkpoints_dir()


def find_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Every ``*.safetensors`` in ``folder`` (not recursive), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file() and not p.name.startswith("."))


def names_are_the_cards(classes_source: str) -> bool:
    """True when the class names came from the checkpoint's own card (not a dataset table or a guess)."""
    return classes_source.startswith("class names")


@dataclass
class AppModel(LoadedRun):
    """One checkpoint served by the app: the :class:`~offseg_vis.engine.run.LoadedRun` (model in eval mode,
    card, class names and palette from :func:`~offseg_vis.engine.run.load_run`) plus what serving needs.

    Attributes:
        label: unique display name, e.g. "offseg-mbv2 · offset (offseg-mbv2_offset)".
        lock: held while the model runs (one image at a time per model).
    """

    label: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def metadata(self) -> dict:
        """The model card (the same dict as ``card``)."""
        return self.card

    @property
    def is_offset(self) -> bool:
        return self.classifier == "offset"

    @property
    def miou(self) -> float | None:
        """The card's mIoU as a fraction, or None."""
        value = card_metrics(self.card).get("mIoU")
        return float(value) if isinstance(value, int | float) else None

    def card_markdown(self) -> str:
        """The model card in a few Markdown lines (with where the class names came from when they are not
        the card's own)."""
        miou = f"{100 * self.miou:.1f} %" if self.miou is not None else "not recorded"
        kind = "Offset Learning" if self.is_offset else "per-pixel (linear) baseline"
        dataset = card_dataset_name(self.card) or "unknown data"
        preset = card_scene_preset(self.card)
        if preset:
            opts = ", ".join(f"{k} {v:g}" for k, v in SCENE_PRESETS[preset].items())
            dataset += f" +{preset} ({opts})"
        steps = self.card.get("steps", self.card.get("step"))
        trained = f", {steps} training steps" if isinstance(steps, int) else ""
        text = (
            f"**{self.model_name}** — {kind} classifier · {self.num_params / 1e6:.2f} M parameters · "
            f"mIoU {miou} on {dataset}{trained}\n\n"
            f"{self.num_classes} classes: {', '.join(self.class_names)}"
        )
        if not names_are_the_cards(self.classes_source):
            text += f"\n\n*Classes: {self.classes_source}*"
        return text


def load_checkpoint(path: str | os.PathLike) -> AppModel:
    """Load a checkpoint with :func:`~offseg_vis.engine.run.load_run` (strict; the card names the model) and
    freeze it for serving.

    Raises:
        CheckpointError: missing/corrupt file, or a card that does not name a model.
    """
    run = load_run(path)
    if run.classifier not in ("offset", "linear"):
        raise CheckpointError(
            f"Checkpoint {run.path} does not say which classifier it has (classifier={run.classifier!r}); "
            "write it with offseg_vis.models.weights.save_weights."
        )
    for p in run.model.parameters():
        p.requires_grad_(False)  # inference only: no autograd bookkeeping
    stem = run.path.name[: -len(".safetensors")]
    fields = {f.name: getattr(run, f.name) for f in dataclasses.fields(LoadedRun)}
    return AppModel(**fields, label=f"{run.model_name} · {run.classifier} ({stem})")


class ModelRegistry:
    """The loaded checkpoints, by label. Offset models come first (the first is the default)."""

    def __init__(self, models: Sequence[AppModel]) -> None:
        if not models:
            raise CheckpointError(
                "No checkpoint to serve: put NAME.safetensors (+ NAME.json) files in checkpoints/, or pass "
                "--checkpoint PATH (train one with `offseg train configs/offseg-mbv2_fashion-scenes.yaml`)."
            )
        ordered = sorted(models, key=lambda m: (not m.is_offset, m.label))
        self.models = {m.label: m for m in ordered}
        if len(self.models) != len(ordered):
            raise CheckpointError("Two checkpoints have the same name; give each file a different name.")

    @classmethod
    def from_paths(cls, paths: Sequence[str | os.PathLike]) -> ModelRegistry:
        """Load every checkpoint in ``paths`` (files or folders of ``*.safetensors``)."""
        files: list[Path] = []
        for p in paths:
            p = Path(p)
            found = find_checkpoints(p) if p.is_dir() else [p]
            files += [f for f in found if f not in files]
        return cls([load_checkpoint(f) for f in files])

    @property
    def labels(self) -> list[str]:
        return list(self.models)

    @property
    def default_label(self) -> str:
        return self.labels[0]

    def get(self, label: str | None) -> AppModel:
        """The model shown as ``label`` (None = the default)."""
        if label is None or label == "":
            return self.models[self.default_label]
        if label not in self.models:
            raise CheckpointError(f"There is no model called {label!r}; choose one of: {', '.join(self.labels)}.")
        return self.models[label]

    def twin_for(self, entry: AppModel) -> tuple[AppModel | None, str]:
        """The loaded checkpoint trained like ``entry`` (same recipe, data and seed per the cards) but with the
        other classifier, and a sentence saying how it was matched or why there is none."""
        other = "linear" if entry.is_offset else "offset"
        same = [
            m
            for m in self.models.values()
            if m.classifier == other and m.model_name == entry.model_name and m.class_names == entry.class_names
        ]
        mine = recipe_key(entry.metadata)
        if mine is not None:
            twins = [m for m in same if recipe_key(m.metadata) == mine]
            if twins:
                return twins[0], (
                    f"its twin {twins[0].path.name}: the cards record the same recipe, data and seed, "
                    f"with the {other} classifier"
                )
            return None, (
                f"No twin of {entry.path.name} is loaded: no {other} checkpoint of {entry.model_name} with the same "
                "recipe, data and seed (per the model cards). Load one to see what Offset Learning changed."
            )
        unrecorded = [m for m in same if recipe_key(m.metadata) is None]
        if unrecorded:
            return unrecorded[0], (
                f"{unrecorded[0].path.name}, paired by model and classes only: neither card records its training "
                "recipe, so they may not be twins"
            )
        return None, (
            f"No twin of {entry.path.name} is loaded: its card records no training recipe and no {other} "
            f"checkpoint of {entry.model_name} without one is loaded."
        )
