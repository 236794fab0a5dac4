"""LightHamHead: the SegNeXt decoder (Hamburger with NMF), ending in a classifier chosen by name.

Data flow (spec §1.4, reference README "LightHamHeadOffsetLearning"):

    maps at strides 8, 16, 32 --bilinear resize to stride 8, concat--> ΣC_i
        --squeeze 1×1 Conv-GN32-ReLU--> ham_channels
        --hamburger: x -> ReLU(x + GN(conv1×1( NMF2D( ReLU(conv1×1(x)) ) )))--> ham_channels
        --align 1×1 Conv-GN32-ReLU--> channels
        --classifier--> K logits at stride 8

NMF2D factorises the non-negative map X (D × N, N = H·W) as bases (D × R) · coefᵀ (R × N) with
multiplicative updates from random bases, so the output is a rank-R "global context" of X.
Module names match the official keys (``squeeze``, ``hamburger.ham_in`` / ``ham_out``, ``align``);
the classifier lives under ``classifier`` (official: ``offset_learning`` / ``conv_seg``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offseg_vis.errors import ConfigError, InputError
from offseg_vis.models.heads.segformer_head import default_dropout
from offseg_vis.models.layers import ConvNormAct
from offseg_vis.models.offset_learning import ClassifierOutput, build_classifier

NMF_EPS = 1e-6  # added to every multiplicative-update denominator


class NMF2D(nn.Module):
    """Non-negative matrix factorisation of a feature map; (B, C, H, W) -> (B, C, H, W) of rank R.

    Per image, X (D, N) with D = C / S, N = H·W:
      bases₀ ~ U(0, 1) (D, R), L2-normalised over D — drawn with ``torch.rand`` from the global CPU
        generator on every forward (as the official code), unless initial bases are given;
      coef₀ = softmax_R(Xᵀ·bases₀ / T) (N, R) with temperature T = 1 (the official config passes
        100 but the official module overrides it with 1);
      ``steps`` times: coef ← coef ⊙ (Xᵀ·bases) / (coef·basesᵀ·bases + ε),
                      bases ← bases ⊙ (X·coef) / (bases·coefᵀ·coef + ε);
      one last coef update; output = bases·coefᵀ.
    Gradients flow through all iterations (no ``no_grad``), as in the official code.

    Args:
        spatial_groups: S, how many groups the channels are split into (1 in every config).
        rank: R.
        train_steps / eval_steps: update steps in training / eval mode.
        temperature: T of the initial coefficient softmax.
    """

    def __init__(
        self,
        spatial_groups: int = 1,
        rank: int = 16,
        train_steps: int = 6,
        eval_steps: int = 7,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.spatial_groups = spatial_groups
        self.rank = rank
        self.train_steps = train_steps
        self.eval_steps = eval_steps
        self.temperature = temperature

    def random_bases(self, batch: int, dim: int) -> Tensor:
        """(batch·S, D, R) uniform bases, L2-normalised over D, from the global CPU generator."""
        bases = torch.rand((batch * self.spatial_groups, dim, self.rank))
        return F.normalize(bases, dim=1)

    @staticmethod
    def _update_coef(x: Tensor, bases: Tensor, coef: Tensor) -> Tensor:
        """x (G, D, N), bases (G, D, R), coef (G, N, R) -> updated coef (G, N, R)."""
        numerator = x.transpose(1, 2) @ bases  # (G, N, R)
        denominator = coef @ (bases.transpose(1, 2) @ bases)  # (G, N, R)
        return coef * numerator / (denominator + NMF_EPS)

    @staticmethod
    def _update_bases(x: Tensor, bases: Tensor, coef: Tensor) -> Tensor:
        """x (G, D, N), bases (G, D, R), coef (G, N, R) -> updated bases (G, D, R)."""
        numerator = x @ coef  # (G, D, R)
        denominator = bases @ (coef.transpose(1, 2) @ coef)  # (G, D, R)
        return bases * numerator / (denominator + NMF_EPS)

    def forward(self, x: Tensor, initial_bases: Tensor | None = None) -> Tensor:
        """x (B, C, H, W), non-negative -> low-rank reconstruction (B, C, H, W).

        ``initial_bases`` (B·S, C/S, R), already normalised, replaces the random draw (for exact
        comparisons with recorded runs); no random numbers are drawn then.
        """
        b, c, h, w = x.shape
        if c % self.spatial_groups:
            raise ConfigError(f"NMF2D: {c} channels cannot be split into {self.spatial_groups} groups.")
        dim = c // self.spatial_groups
        if initial_bases is None:
            initial_bases = self.random_bases(b, dim)
        expected = (b * self.spatial_groups, dim, self.rank)
        if tuple(initial_bases.shape) != expected:
            raise InputError(f"NMF2D initial bases must have shape {expected}, got {tuple(initial_bases.shape)}.")
        # Multiplicative updates divide by small numbers: run them in float32 even under autocast.
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float().reshape(b * self.spatial_groups, dim, h * w)  # (G, D, N)
            bases = initial_bases.to(device=x.device, dtype=torch.float32)  # (G, D, R)
            coef = torch.softmax((xf.transpose(1, 2) @ bases) / self.temperature, dim=-1)  # (G, N, R)
            steps = self.train_steps if self.training else self.eval_steps
            for _ in range(steps):
                coef = self._update_coef(xf, bases, coef)
                bases = self._update_bases(xf, bases, coef)
            coef = self._update_coef(xf, bases, coef)
            out = bases @ coef.transpose(1, 2)  # (G, D, N)
        return out.reshape(b, c, h, w).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"S={self.spatial_groups}, R={self.rank}, steps={self.train_steps}/{self.eval_steps}, T={self.temperature}"
        )


class Hamburger(nn.Module):
    """ReLU(x + ham_out(NMF2D(ReLU(ham_in(x))))); (B, C, H, W) -> (B, C, H, W).

    ``ham_in`` is a 1×1 conv with bias (no norm), ``ham_out`` a 1×1 conv + GN32 without activation.
    """

    def __init__(self, channels: int, nmf: NMF2D | None = None) -> None:
        super().__init__()
        self.ham_in = ConvNormAct(channels, channels, 1, norm=None, act=False)
        self.ham = nmf if nmf is not None else NMF2D()
        self.ham_out = ConvNormAct(channels, channels, 1, norm="gn", act=False)

    def forward(self, x: Tensor, nmf_bases: Tensor | None = None) -> Tensor:
        y = F.relu(self.ham_in(x))  # non-negative input for the NMF
        y = self.ham_out(self.ham(y, initial_bases=nmf_bases))
        return F.relu(x + y)


class LightHamHead(nn.Module):
    """SegNeXt decoder + classifier at stride 8. features -> logits (B, K, H/8, W/8).

    Args:
        in_channels: channels of the maps at strides 8, 16, 32 (3 ints), or of all 4 backbone maps
            (the stride-4 one is then ignored, as in the official head's in_index [1, 2, 3]).
        num_classes: K.
        ham_channels: width of squeeze and hamburger (256 for T/S, 512 for B).
        channels: C, width of ``align`` and of the classifier's features (256 for T/S, 512 for B).
        classifier: "offset" (OffsetLearning) or "linear" (per-pixel 1×1 conv).
        classifier_options: passed to :func:`build_classifier`.
        nmf_rank, nmf_train_steps, nmf_eval_steps: NMF2D settings (official: 16, 6, 7).
        dropout: Dropout2d before the classifier. None = as in the official models: 0.1 for
            "linear", 0 for "offset".
    """

    output_stride = 8

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        ham_channels: int = 256,
        channels: int = 256,
        classifier: str = "offset",
        classifier_options: dict | None = None,
        nmf_rank: int = 16,
        nmf_train_steps: int = 6,
        nmf_eval_steps: int = 7,
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if len(in_channels) == 4:
            in_channels = in_channels[1:]
        if len(in_channels) != 3:
            raise ConfigError(
                "LightHamHead needs the channels of the stride-8/16/32 maps (3 ints) or of all 4 "
                f"backbone maps, got {in_channels}."
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.ham_channels = ham_channels
        self.channels = channels
        self.squeeze = ConvNormAct(sum(in_channels), ham_channels, 1, norm="gn")
        nmf = NMF2D(rank=nmf_rank, train_steps=nmf_train_steps, eval_steps=nmf_eval_steps)
        self.hamburger = Hamburger(ham_channels, nmf)
        self.align = ConvNormAct(ham_channels, channels, 1, norm="gn")
        p = default_dropout(classifier) if dropout is None else dropout
        self.dropout = nn.Dropout2d(p) if p > 0 else None
        self.classifier = build_classifier(classifier, num_classes, channels, **(classifier_options or {}))

    def squeeze_inputs(self, features: list[Tensor]) -> Tensor:
        """The last 3 maps (strides 8, 16, 32) -> squeezed map (B, ham_channels, H/8, W/8)."""
        if len(features) not in (3, 4):
            raise InputError(
                f"LightHamHead expects the 4 backbone maps (or the 3 at strides 8-32), got {len(features)}."
            )
        maps = list(features)[-3:]
        size = maps[0].shape[-2:]
        resized = [
            m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            for m in maps
        ]
        return self.squeeze(torch.cat(resized, dim=1))  # (B, ΣC_i, h, w) -> (B, ham_channels, h, w)

    def decode(self, features: list[Tensor], nmf_bases: Tensor | None = None) -> Tensor:
        """maps -> the classifier's input features (B, C, H/8, W/8).

        ``nmf_bases`` (B, ham_channels, R) fixes the NMF's initial bases instead of drawing them.
        """
        x = self.squeeze_inputs(features)
        x = self.hamburger(x, nmf_bases=nmf_bases)
        return self.align(x)

    def forward(
        self,
        features: list[Tensor],
        return_intermediates: bool = False,
        nmf_bases: Tensor | None = None,
    ) -> Tensor | ClassifierOutput:
        """maps -> logits (B, K, H/8, W/8), or the classifier's :class:`ClassifierOutput`."""
        x = self.decode(features, nmf_bases=nmf_bases)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.classifier(x, return_intermediates=return_intermediates)


__all__ = ["Hamburger", "LightHamHead", "NMF2D"]
