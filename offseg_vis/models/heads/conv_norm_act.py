"""ConvNormAct: the conv → norm → activation unit the official heads are built from.

Children are named ``conv`` and ``bn`` / ``gn`` (after the norm type), so state-dict keys match the
official checkpoints (``convs.0.conv.weight``, ``squeeze.gn.bias``, ...). Activations have no
parameters and therefore no keys.
"""

from __future__ import annotations

from torch import Tensor, nn

from offseg_vis.errors import ConfigError

NORMS = ("bn", "gn", None)
GROUP_NORM_GROUPS = 32


def build_norm(norm: str | None, channels: int) -> nn.Module | None:
    """The 2-D norm layer named by ``norm``: "bn" (BatchNorm2d), "gn" (GroupNorm, 32 groups) or None."""
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "gn":
        if channels % GROUP_NORM_GROUPS:
            raise ConfigError(
                f"GroupNorm with {GROUP_NORM_GROUPS} groups needs a channel count divisible by "
                f"{GROUP_NORM_GROUPS}, got {channels}; choose another width or norm='bn'."
            )
        return nn.GroupNorm(GROUP_NORM_GROUPS, channels)
    if norm is None:
        return None
    raise ConfigError(f"Unknown norm {norm!r}; choose one of {NORMS}.")


class ConvNormAct(nn.Module):
    """Conv2d, optional norm, optional ReLU: (B, C_in, H, W) -> (B, C_out, H', W').

    The conv has a bias only when there is no norm after it (the norm's shift makes it redundant),
    as in the official heads.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: square kernel; padding keeps the size at stride 1.
        norm: "bn", "gn" (32 groups) or None.
        act: apply ReLU at the end.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        norm: str | None = "bn",
        act: bool = True,
    ) -> None:
        super().__init__()
        norm_layer = build_norm(norm, out_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm_layer is None)
        self.norm_name = norm
        if norm_layer is not None:
            self.add_module(norm, norm_layer)
        self.act = nn.ReLU(inplace=True) if act else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan-out, ReLU gain) conv, zero bias; norms start as identity."""
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)
        norm_layer = self.norm
        if norm_layer is not None:
            nn.init.ones_(norm_layer.weight)
            nn.init.zeros_(norm_layer.bias)

    @property
    def norm(self) -> nn.Module | None:
        """The norm layer (registered under its short name), or None."""
        return getattr(self, self.norm_name) if self.norm_name is not None else None

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        x = self.conv(x)
        norm_layer = self.norm
        if norm_layer is not None:
            x = norm_layer(x)
        if self.act is not None:
            x = self.act(x)
        return x
