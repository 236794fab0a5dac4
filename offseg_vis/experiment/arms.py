"""Experiment arms: classifier variants x scene style (x scene preset), and their command-line names."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from offseg_vis.data.fashion_scenes import SCENE_PRESETS
from offseg_vis.errors import ConfigError

MAIN_STYLES = (0.0, 0.5, 1.0)
ABLATION_STYLE = 0.5  # FashionScenes' default style

SCENES = SCENE_PRESETS  # the scene presets an arm may add (+looks, ...): see FashionScenes


@dataclass(frozen=True)
class Variant:
    """A classifier variant.

    Attributes:
        name: short name used in arm ids.
        classifier: "linear" or "offset" (``build_classifier`` name).
        options: OffsetLearning options (class_offsets, feature_offsets, logit_norm), spelled out.
        label: what the table prints.
        paper: False for our own variants (marked "not the paper's").
    """

    name: str
    classifier: str
    options: dict = field(default_factory=dict)
    label: str = ""
    paper: bool = True


def _ol(class_offsets: bool = True, feature_offsets: bool = True, logit_norm: str = "layernorm") -> dict:
    return {"class_offsets": class_offsets, "feature_offsets": feature_offsets, "logit_norm": logit_norm}


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("linear", "linear", {}, "per-pixel 1x1 conv (baseline)"),
        Variant("offset", "offset", _ol(), "Offset Learning (paper)"),
        Variant("offset-co", "offset", _ol(feature_offsets=False), "class offsets only (paper ablation)"),
        Variant("offset-fo", "offset", _ol(class_offsets=False), "feature offsets only (paper ablation)"),
        Variant(
            "offset-scaled-ln",
            "offset",
            _ol(logit_norm="scaled_layernorm"),
            "OL + learnable logit scale after the LayerNorm (ours, not the paper's)",
            paper=False,
        ),
        Variant(
            "offset-noln",
            "offset",
            _ol(logit_norm="none"),
            "OL without the LayerNorm (ours, not the paper's)",
            paper=False,
        ),
    )
}


def format_style(style: float) -> str:
    """0.0 -> "0", 0.5 -> "0.5", 1.0 -> "1" (as in arm ids)."""
    return f"{style:g}"


@dataclass(frozen=True, order=True)
class Arm:
    """One classifier variant at one scene style."""

    variant: str
    style: float
    scene: str = ""

    @property
    def id(self) -> str:
        """``variant@style`` or ``variant@style+scene``, e.g. ``offset-co@0.5``, ``offset@0.5+looks``."""
        return f"{self.variant}@{format_style(self.style)}{self._scene_suffix}"

    @property
    def slug(self) -> str:
        """Folder name: ``offset-co_style0.5`` or ``offset_style0.5+looks``."""
        return f"{self.variant}_style{format_style(self.style)}{self._scene_suffix}"

    @property
    def baseline(self) -> Arm:
        """The per-pixel arm this arm is compared with: ``linear`` at the same style and scene."""
        return Arm("linear", self.style, self.scene)

    @property
    def scene_options(self) -> dict:
        """FashionScenes parameters of the arm's scene preset (empty for the plain benchmark)."""
        return dict(SCENES[self.scene])

    @property
    def _scene_suffix(self) -> str:
        return f"+{self.scene}" if self.scene else ""

    @property
    def spec(self) -> Variant:
        return VARIANTS[self.variant]


MAIN_GRID = tuple(Arm(v, s) for s in MAIN_STYLES for v in ("linear", "offset"))
ABLATION_ARMS = tuple(Arm(v, ABLATION_STYLE) for v in ("offset-co", "offset-fo", "offset-scaled-ln"))
DEFAULT_GRID = MAIN_GRID + ABLATION_ARMS
LEVER_ARMS = tuple(Arm(v, ABLATION_STYLE, "looks") for v in ("linear", "offset"))
# the lever and its two halves, paired (linear, offset) per preset
PRESET_ARMS = tuple(
    Arm(v, ABLATION_STYLE, scene) for scene in ("looks", "class-looks", "cooccur") for v in ("linear", "offset")
)
ALL_ARMS = DEFAULT_GRID + (Arm("offset-noln", ABLATION_STYLE),) + PRESET_ARMS
ARM_GROUPS = {
    "grid": DEFAULT_GRID,
    "main": MAIN_GRID,
    "ablation": ABLATION_ARMS,
    "lever": LEVER_ARMS,
    "presets": PRESET_ARMS,
    "all": ALL_ARMS,
}


def parse_arms(specs: Iterable[str] | None) -> list[Arm]:
    """Arms named on the command line, in order, without duplicates.

    Each spec is a group ("grid" = default, "main", "ablation", "lever", "all"), a variant name (its
    arms in "all": ``linear`` = the three styles and the lever, ``offset-co`` = style 0.5), or
    ``variant@style`` with any style in [0, 1], optionally ``+scene`` with a preset of
    :data:`SCENES` (``offset@0.5+looks``).

    Raises:
        ConfigError: unknown group, variant or scene preset, or a style that is not a number in [0, 1].
    """
    specs = list(specs or ["grid"])
    arms: list[Arm] = []
    for spec in specs:
        spec = spec.strip()
        if spec in ARM_GROUPS:
            found = list(ARM_GROUPS[spec])
        elif "@" in spec:
            name, _, raw = spec.partition("@")
            raw, _, scene = raw.partition("+")
            _check_variant(name)
            if scene not in SCENES:
                known = ", ".join(f"+{k}" for k in SCENES if k)
                raise ConfigError(f"Arm {spec!r}: unknown scene preset {scene!r}; known presets: {known}.")
            try:
                style = float(raw)
            except ValueError:
                style = float("nan")
            if not 0.0 <= style <= 1.0:
                raise ConfigError(f"Arm {spec!r}: the style after '@' must be a number in [0, 1], e.g. {name}@0.5.")
            found = [Arm(name, style, scene)]
        else:
            _check_variant(spec)
            found = [a for a in ALL_ARMS if a.variant == spec]
        arms.extend(a for a in found if a not in arms)
    return arms


def _check_variant(name: str) -> None:
    if name not in VARIANTS:
        raise ConfigError(
            f"Unknown experiment arm {name!r}. Use a variant ({', '.join(VARIANTS)}), optionally with a "
            f"style as variant@0.5, or a group ({', '.join(ARM_GROUPS)})."
        )
