"""Offset Learning (OffSeg, ICCV 2025) and the per-pixel classifier it replaces.

Both classifiers map a decoder feature map x (B, C, H, W) to class logits (B, K, H, W) and share
one call signature, ``forward(x, return_intermediates=False)``, so every head can switch between
them by name (see :func:`build_classifier`).

Notation (spec §1.2): E = pixel features (B, N, C) with N = H*W flattened row-major (h*W + w);
W = class representations (K, C); A = E·Wᵀ (B, N, K) the coupled logits (no scaling).

    class side:    ΔW = P_cls( softmax_N(A)ᵀ · E )     (B, K, C)     W' = W + ΔW
    pixel side:    ΔE = P_feat( softmax_K(A) · W )     (B, N, C)     E' = E + ΔE
    logits       = LayerNorm_K( E' · W'ᵀ )             (B, N, K) -> (B, K, H, W)

Both offsets are computed in parallel from the un-offset E and W (no iteration).

Mixed precision: under autocast the whole module runs in float32 (its input is cast up). Why: the
class attention softmax_N(A) has weights of about 1/N (6e-5 at N = 128²), at float16's smallest
normal value and subnormal beyond, and bfloat16's 8-bit mantissa would round both the pooled
prototypes and E'·W'ᵀ; the module is a small part of a model's arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOGIT_NORMS = ("layernorm", "scaled_layernorm", "none")


@dataclass
class ClassifierOutput:
    """What a classifier computed. Per-pixel tensors use the flattened layout (B, N, ·), N = H*W.

    Attributes:
        logits: final class scores (B, K, H, W).
        features: E, the classifier's input features (B, N, C).
        class_embed: W, the learned class representations (K, C).
        coupled_logits: A = E·Wᵀ (B, N, K) (for the linear classifier: the logits without bias).
        logits_without_offsets: the classifier's output had both offsets been zero, (B, N, K):
            norm(A) for Offset Learning, A + bias for the linear classifier. Its argmax is the
            "before offsets" prediction of the correction map.
        class_attention: softmax over pixels of A, (B, N, K); column k is class k's spatial map.
        position_attention: softmax over classes of A, (B, N, K); row n is pixel n's class mix.
        class_prototypes: softmax_N(A)ᵀ·E (B, K, C), the input of the class-offset projection.
        class_offset: ΔW (B, K, C).
        feature_offset: ΔE (B, N, C).
        refined_class_embed: W' = W + ΔW (B, K, C).
        refined_features: E' = E + ΔE (B, N, C).
        logits_before_norm: E'·W'ᵀ (B, N, K).
        spatial_size: (H, W) of the feature map, to reshape the (B, N, ·) tensors.
    """

    logits: Tensor
    features: Tensor | None = None
    class_embed: Tensor | None = None
    coupled_logits: Tensor | None = None
    logits_without_offsets: Tensor | None = None
    class_attention: Tensor | None = None
    position_attention: Tensor | None = None
    class_prototypes: Tensor | None = None
    class_offset: Tensor | None = None
    feature_offset: Tensor | None = None
    refined_class_embed: Tensor | None = None
    refined_features: Tensor | None = None
    logits_before_norm: Tensor | None = None
    spatial_size: tuple[int, int] | None = None

    def detach(self) -> ClassifierOutput:
        """A copy with every tensor detached from the autograd graph."""
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = v.detach() if isinstance(v, Tensor) else v
        return ClassifierOutput(**values)


def _flatten_pixels(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, N, C) with N = H*W, row-major."""
    return x.flatten(2).transpose(1, 2)


def _pixel_products(mat: Tensor, e: Tensor) -> Tensor:
    """e·matᵀ for every pixel: mat (K, C) or (B, K, C), e (B, N, C) of any strides -> (B, N, K), contiguous.

    Why two ways: E is a transposed view of the (B, C, H, W) features, and the CPU GEMM for
    E·Wᵀ with a narrow output (K < 32: K = 11 on FashionScenes, 19 on Cityscapes) over that layout
    takes a slow path; W·Eᵀ in the (B, K, N) layout, transposed back, does not (fused OL at K = 11,
    C = 128, 128²: 55.0 -> 5.9 ms, ``offseg bench ol --num-classes 11 --channels 128``, torch 2.13,
    2 cores). From K = 32 on the direct product is as fast or faster, so it is kept.
    """
    if mat.shape[-2] < 32:
        if mat.dim() == 2:
            mat = mat.unsqueeze(0)  # a 2-D @ 3-D matmul would be folded back into the slow form
        return (mat @ e.transpose(1, 2)).transpose(1, 2).contiguous()  # (B, K, N) -> (B, N, K)
    return e @ mat.transpose(-1, -2)


def offset_classifier_output(
    e: Tensor,
    w: Tensor,
    a: Tensor,
    class_attn_kn: Tensor,
    pos_attn: Tensor,
    class_offset_proj: nn.Module | None,
    feature_offset_proj: nn.Module | None,
    size: tuple[int, int],
    products: Callable[[Tensor, Tensor], Tensor] = _pixel_products,
    normalise: Callable[[Tensor], Tensor] | None = None,
) -> ClassifierOutput:
    """The explicit Offset Learning step with every intermediate, for the per-pixel classifier and the
    Mask2Former mask module alike (K classes or Q queries).

    Args:
        e: E (B, N, C); w: W (K, C) or (B, K, C); a: A = E·Wᵀ (B, N, K).
        class_attn_kn: softmax over pixels of A on the (B, K, N) view; pos_attn: softmax over K (B, N, K).
        class_offset_proj, feature_offset_proj: the C -> C projections (None: that offset is zero).
        size: (H, W) with H·W = N.
        products: (W', E') -> E'·W'ᵀ (B, N, K) (each caller keeps its own product order).
        normalise: score normalisation over K (None: none), applied to the logits and to A.

    Returns:
        ClassifierOutput with logits (B, K, H, W) = normalise(E'·W'ᵀ), E' = E + ΔE, W' = W + ΔW.
    """
    prototypes = class_attn_kn @ e  # (B, K, C)
    d_w = class_offset_proj(prototypes) if class_offset_proj is not None else torch.zeros_like(prototypes)
    context = pos_attn @ w  # (B, N, C)
    d_e = feature_offset_proj(context) if feature_offset_proj is not None else torch.zeros_like(context)
    w_ref = w + d_w  # (B, K, C); a (K, C) table broadcasts over the batch
    e_ref = e + d_e  # (B, N, C)
    scores = products(w_ref, e_ref)  # (B, N, K)
    norm = normalise if normalise is not None else (lambda t: t)
    return ClassifierOutput(
        logits=_unflatten_logits(norm(scores), size),
        features=e,
        class_embed=w,
        coupled_logits=a,
        logits_without_offsets=norm(a),
        class_attention=class_attn_kn.transpose(1, 2),
        position_attention=pos_attn,
        class_prototypes=prototypes,
        class_offset=d_w,
        feature_offset=d_e,
        refined_class_embed=w_ref,
        refined_features=e_ref,
        logits_before_norm=scores,
        spatial_size=size,
    )


def plain_classifier_output(e: Tensor, w: Tensor, a: Tensor, scores: Tensor, size: tuple[int, int]) -> ClassifierOutput:
    """The intermediates of a classifier without offsets (the per-pixel linear one, plain Mask2Former):
    E (B, N, C), W (K, C) or (B, K, C), A = E·Wᵀ (B, N, K), scores (B, N, K) = A (+ bias), which are
    also the logits (B, K, H, W) and the logits without offsets; the offset fields stay None."""
    return ClassifierOutput(
        logits=_unflatten_logits(scores, size),
        features=e,
        class_embed=w,
        coupled_logits=a,
        logits_without_offsets=scores,
        logits_before_norm=scores,
        spatial_size=size,
    )


def _autocast_device(x: Tensor) -> str | None:
    """The device type of x when autocast is on for it (so Offset Learning must leave it), else None."""
    device = x.device.type
    return device if torch.is_autocast_enabled(device) else None


def _unflatten_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, N, K) -> (B, K, H, W), contiguous.

    Why contiguous: the transposed view has channels-last strides, and the final bilinear upsample
    and argmax of a caller are several times slower on it (150 classes, 128² -> 512², one thread:
    upsample 725 vs 131 ms, with argmax 915 vs 310 ms); one transposing copy costs a few ms.
    """
    b, _, k = logits.shape
    return logits.transpose(1, 2).reshape(b, k, *size).contiguous()


class OffsetLearning(nn.Module):
    """The Offset Learning classifier.

    Parameter names follow the official module so its checkpoints load without renaming:
    ``cls_repr`` (1, K, C), ``cls_offset_proj.weight`` / ``feat_offset_proj.weight`` (C, C) and
    ``mask_norm.{weight,bias}`` (K). Parameters: K·C + 2C² + 2K (169,772 at K=150, C=256).

    Args:
        num_classes: K.
        embed_dims: C, the channel count of the input features.
        class_offsets: learn ΔW (False gives the paper's "FO only" ablation, ΔW = 0).
        feature_offsets: learn ΔE (False gives "CO only", ΔE = 0).
        logit_norm: "layernorm" (the paper's code), or our own variants, NOT the paper's:
            "scaled_layernorm" (LayerNorm followed by a learnable scalar logit scale, init 1) and
            "none" (raw E'·W'ᵀ).
        init_std: trunc-normal std of ``cls_repr`` and both projections.
    """

    def __init__(
        self,
        num_classes: int,
        embed_dims: int,
        class_offsets: bool = True,
        feature_offsets: bool = True,
        logit_norm: str = "layernorm",
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if logit_norm not in LOGIT_NORMS:
            raise ValueError(f"logit_norm must be one of {LOGIT_NORMS}, got {logit_norm!r}.")
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.class_offsets = class_offsets
        self.feature_offsets = feature_offsets
        self.logit_norm = logit_norm
        # Registration order = the official state-dict order.
        self.cls_repr = nn.Parameter(torch.empty(1, num_classes, embed_dims))
        self.mask_norm = nn.LayerNorm(num_classes, eps=1e-5) if logit_norm != "none" else None
        # Ablated branches have no projection at all, so no parameter sits there unused.
        self.cls_offset_proj = nn.Linear(embed_dims, embed_dims, bias=False) if class_offsets else None
        self.feat_offset_proj = nn.Linear(embed_dims, embed_dims, bias=False) if feature_offsets else None
        self.logit_scale = nn.Parameter(torch.ones(())) if logit_norm == "scaled_layernorm" else None
        self.reset_parameters(init_std)

    def reset_parameters(self, init_std: float = 0.02) -> None:
        nn.init.trunc_normal_(self.cls_repr, std=init_std)
        for proj in (self.cls_offset_proj, self.feat_offset_proj):
            if proj is not None:
                nn.init.trunc_normal_(proj.weight, std=init_std)
        if self.mask_norm is not None:
            self.mask_norm.reset_parameters()

    @property
    def class_embed(self) -> Tensor:
        """W, the learned class representations (K, C)."""
        return self.cls_repr[0]

    def _normalise(self, scores: Tensor) -> Tensor:
        """Class-score normalisation over the last axis K; (B, N, K) -> (B, N, K)."""
        if self.mask_norm is None:
            return scores
        scores = self.mask_norm(scores)
        if self.logit_scale is not None:
            scores = scores * self.logit_scale
        return scores

    def forward(self, x: Tensor, return_intermediates: bool = False) -> Tensor | ClassifierOutput:
        """x (B, C, H, W) -> logits (B, K, H, W), or a :class:`ClassifierOutput` with every
        intermediate when ``return_intermediates`` is True.

        Without intermediates and without autograd, the fused path is used: it gives the same
        logits but never materialises ΔE or E' as (B, N, C) tensors.
        """
        if x.dim() != 4 or x.shape[1] != self.embed_dims:
            raise ValueError(
                f"OffsetLearning expects features of shape (B, {self.embed_dims}, H, W), got {tuple(x.shape)}."
            )
        size = (x.shape[2], x.shape[3])
        if not return_intermediates and not (torch.is_grad_enabled() and self._needs_grad(x)):
            return _unflatten_logits(self.fused_scores(x), size)
        out = self.full_forward(x)
        return out if return_intermediates else out.logits

    def _needs_grad(self, x: Tensor) -> bool:
        return x.requires_grad or any(p.requires_grad for p in self.parameters())

    def full_forward(self, x: Tensor) -> ClassifierOutput:
        """The plain path: x (B, C, H, W) -> ClassifierOutput with every intermediate (float32
        under autocast, see the module docstring)."""
        device = _autocast_device(x)
        if device is not None:
            with torch.autocast(device, enabled=False):
                return self.full_forward(x.float())
        size = (x.shape[2], x.shape[3])
        e = _flatten_pixels(x)  # (B, N, C)
        w = self.class_embed  # (K, C)
        a = _pixel_products(w, e)  # (B, N, K) coupled logits
        # Softmax over pixels taken on the (B, K, N) view: the official operation order, which
        # keeps our results bit-close to the reference vectors.
        class_attn_kn = a.transpose(1, 2).softmax(dim=-1)  # (B, K, N)
        pos_attn = a.softmax(dim=2)  # over classes K
        return offset_classifier_output(
            e,
            w,
            a,
            class_attn_kn,
            pos_attn,
            self.cls_offset_proj,
            self.feat_offset_proj,
            size,
            normalise=self._normalise,
        )

    def fused_scores(self, x: Tensor) -> Tensor:
        """Normalised scores (B, N, K) without forming ΔE or E'.

        (E + ΔE)·W'ᵀ = E·W'ᵀ + softmax_K(A)·(W·P_featᵀ·W'ᵀ), and the bracket is only (B, K, K).
        Float32 under autocast, like :meth:`full_forward`.
        """
        device = _autocast_device(x)
        if device is not None:
            with torch.autocast(device, enabled=False):
                return self.fused_scores(x.float())
        e = _flatten_pixels(x)  # (B, N, C)
        w = self.class_embed  # (K, C)
        a = _pixel_products(w, e)  # (B, N, K)
        if self.cls_offset_proj is not None:
            # Softmax over pixels taken along dim 1 of the (B, N, K) map, not on a (B, K, N) copy:
            # the transposed softmax copied 2.5 M values per call (≈ 7 % of this path at K = 150, 128²).
            prototypes = a.softmax(dim=1).transpose(1, 2) @ e  # (B, K, C)
            w_ref = w.unsqueeze(0) + self.cls_offset_proj(prototypes)  # (B, K, C)
        else:
            w_ref = w.unsqueeze(0).expand(e.shape[0], -1, -1)
        scores = _pixel_products(w_ref, e)  # (B, N, K)
        if self.feat_offset_proj is not None:
            # F.linear, not the module call: a parameter view through module hooks upsets
            # FlopCounterMode under no_grad.
            w_proj = F.linear(w, self.feat_offset_proj.weight)  # (K, C) = W·P_featᵀ
            class_mix = w_proj.unsqueeze(0) @ w_ref.transpose(1, 2)  # (B, K, K)
            # into ``scores`` itself: the out-of-place baddbmm first copies it into a new (B, N, K)
            # tensor; ``out=`` rather than ``baddbmm_``, which FlopCounterMode does not count
            scores = torch.baddbmm(scores, a.softmax(dim=2), class_mix, out=scores)
        return self._normalise(scores)


class LinearClassifier(nn.Module):
    """The per-pixel baseline: a 1×1 convolution, logits = E·Wᵀ + b.

    Same call signature and result type as :class:`OffsetLearning`; the offset fields stay None.
    ``weight`` is W (K, C) and ``bias`` (K).
    """

    def __init__(self, num_classes: int, embed_dims: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dims))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.normal_(self.weight, std=init_std)

    @property
    def class_embed(self) -> Tensor:
        return self.weight

    def forward(self, x: Tensor, return_intermediates: bool = False) -> Tensor | ClassifierOutput:
        """x (B, C, H, W) -> logits (B, K, H, W) or a ClassifierOutput."""
        if x.dim() != 4 or x.shape[1] != self.embed_dims:
            raise ValueError(
                f"LinearClassifier expects features of shape (B, {self.embed_dims}, H, W), got {tuple(x.shape)}."
            )
        if not return_intermediates:
            return F.conv2d(x, self.weight[:, :, None, None], self.bias)
        size = (x.shape[2], x.shape[3])
        e = _flatten_pixels(x)  # (B, N, C)
        a = _pixel_products(self.weight, e)  # (B, N, K)
        scores = a + self.bias
        return plain_classifier_output(e, self.weight, a, scores, size)


CLASSIFIERS = ("offset", "linear")


def build_classifier(name: str, num_classes: int, embed_dims: int, **options) -> nn.Module:
    """Build the classifier that ends every head.

    Args:
        name: "offset" (OffsetLearning) or "linear" (per-pixel 1×1 conv).
        num_classes, embed_dims: K and C.
        options: passed to OffsetLearning (class_offsets, feature_offsets, logit_norm); the
            linear classifier accepts none.
    """
    if name == "offset":
        return OffsetLearning(num_classes, embed_dims, **options)
    if name == "linear":
        if options:
            raise ValueError(f"The linear classifier takes no options, got {sorted(options)}.")
        return LinearClassifier(num_classes, embed_dims)
    raise ValueError(f"Unknown classifier {name!r}; choose one of {CLASSIFIERS}.")
