"""int8 static quantisation of an exported model with ONNX Runtime, and ONNX Runtime evaluation.

Static quantisation (``onnxruntime.quantization.quantize_static``) fixes every activation's int8
scale from calibration runs, then rewrites the graph in QDQ form (QuantizeLinear/DequantizeLinear
pairs around the quantised operators), which ONNX Runtime fuses into int8 kernels when it loads it.
Weights are quantised per output channel (symmetric int8), activations per tensor (asymmetric
uint8, MinMax ranges over the calibration images).

Calibration images come from a config's **train** split (:func:`calibration_reader`), never its val
split, so the val mIoU of the quantised model is not fitted to the val scenes. They are seen through
the val (test) transform, i.e. exactly the preprocessing the deployed model gets: a keep-ratio
resize when ``test.scale`` is set, then ImageNet normalisation. The exported graph takes normalised
images, so normalisation stays outside it, in :class:`OnnxSegmentor` as in the torch path.

:class:`OnnxSegmentor` wraps an ONNX Runtime session so :func:`offseg_vis.engine.evaluate.evaluate`
(and :func:`offseg_vis.engine.run.evaluate_split`) score it with the same code as a torch model.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offseg_vis.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from offseg_vis.deploy.onnx_export import SIZE_DIVISOR, OnnxRuntimeModel, require_deploy
from offseg_vis.errors import ConfigError, InputError

__all__ = [
    "EXCLUDE_OP_TYPES",
    "fold_batchnorm",
    "OnnxSegmentor",
    "QuantReport",
    "SceneCalibrationReader",
    "calibration_reader",
    "quantize_onnx",
]

# Operator types left in float. Softmax and normalisation layers have few FLOPs and their outputs
# are badly served by one per-tensor int8 scale (Softmax: a heavy tail near 0 and rare values near
# 1); resizes and element-wise ops gain nothing from int8 on the CPU and only add
# quantise/dequantise pairs. Conv, MatMul and Gemm (where the time goes) are quantised.
EXCLUDE_OP_TYPES: tuple[str, ...] = ("Softmax", "LayerNormalization", "ReduceMean", "Resize", "Div", "Sqrt", "Pow")
QUANTIZE_OP_TYPES: tuple[str, ...] = ("Conv", "MatMul", "Gemm", "Add", "Mul", "Relu", "Clip", "Concat", "Sigmoid")


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval mode) with every BatchNorm2d that directly follows a Conv2d in the
    same container folded into that convolution; returns (copy, number folded).

    Why: in the exported graph a Conv -> BatchNormalization pair would get a quantise/dequantise
    pair between the two (the int8 Conv's output requantised, then a float BN), costing accuracy and
    time; folded, the Conv carries the BN's scale and shift in its int8 weights and float bias.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    folded = 0
    for module in model.modules():
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = nn.Identity()
                folded += 1
    return model, folded


class SceneCalibrationReader:
    """Calibration inputs for ``quantize_static``: train-split images, one (1, 3, H, W) batch per call.

    Implements ``onnxruntime.quantization.CalibrationDataReader``'s protocol (``get_next`` returns
    ``{input_name: array}`` or None when exhausted; ``rewind`` starts over).

    Args:
        data: a :class:`~offseg_vis.engine.run.DataSplit` of role "train" (a val split is refused).
        count: number of images, the first ``count`` items of the split.
        transform: the image preprocessing (default: the val transform of the same config, i.e.
            what the deployed model receives); called as ``transform(image, mask)``.
        input_name: the graph's input name.

    Attributes:
        indices: the item indices used; ``names``: their names (e.g. ``train_000003``).
    """

    def __init__(self, data, count: int, transform, input_name: str = "images") -> None:
        if data.role != "train":
            raise InputError(
                f"Calibration uses the train split only (got the {data.role!r} split): calibrating on the "
                f"scenes the model is scored on would flatter the int8 model's mIoU."
            )
        if count <= 0:
            raise InputError(f"--calibration-scenes must be positive, got {count}.")
        if len(data.dataset) < count:
            raise InputError(f"The train split has {len(data.dataset)} images, fewer than the {count} asked for.")
        self.data = data
        self.transform = transform
        self.input_name = input_name
        self.indices = list(range(count))
        name = getattr(data.dataset, "name", None)
        self.names = [name(i) if callable(name) else str(i) for i in self.indices]
        self._position = 0

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, k: int) -> np.ndarray:
        """Calibration input ``k``: normalised float32 (1, 3, H, W)."""
        item = self.data.dataset[self.indices[k]]
        image, _ = self.transform(item[0], item[1])
        return image.numpy()[None].astype(np.float32)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._position >= len(self.indices):
            return None
        self._position += 1
        return {self.input_name: self.image(self._position - 1)}

    def rewind(self) -> None:
        self._position = 0


def calibration_reader(cfg, count: int, input_name: str = "images") -> SceneCalibrationReader:
    """``count`` images of ``cfg``'s train split (its generator parameters and seed) through ``cfg``'s
    val transform: a :class:`SceneCalibrationReader`."""
    from offseg_vis.engine.run import datasets_for

    train = datasets_for(cfg, "train")
    val_transform = datasets_for(cfg, "val", raw=train.dataset).transform  # the test transform only
    return SceneCalibrationReader(train, count, val_transform, input_name)


@dataclass
class QuantReport:
    """What :func:`quantize_onnx` wrote."""

    path: str
    source: str
    calibration: str
    per_channel: bool
    excluded_op_types: list[str]
    fp32_mb: float
    int8_mb: float
    quantize_s: float
    quantized_nodes: dict[str, int] = field(default_factory=dict)  # op type -> number of QDQ-wrapped nodes

    def summary(self) -> str:
        nodes = ", ".join(f"{k} {v}" for k, v in sorted(self.quantized_nodes.items()))
        return (
            f"wrote {self.path} ({self.int8_mb:.2f} MB; fp32 {self.source}: {self.fp32_mb:.2f} MB) in "
            f"{self.quantize_s:.1f} s\n"
            f"  static int8 (QDQ, uint8 activations per tensor, MinMax; int8 weights "
            f"{'per channel' if self.per_channel else 'per tensor'}); kept in float: "
            f"{', '.join(self.excluded_op_types) or 'nothing'}\n"
            f"  calibrated on {self.calibration}\n"
            f"  quantised inputs per op type: {nodes}"
        )


def _count_quantized(path: Path) -> dict[str, int]:
    """Op type -> number of nodes reading at least one DequantizeLinear output (the int8-fed nodes)."""
    import onnx

    graph = onnx.load(str(path)).graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    counts: dict[str, int] = {}
    for n in graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_outputs for i in n.input):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def quantize_onnx(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    reader: SceneCalibrationReader,
    per_channel: bool = True,
    exclude_op_types: Sequence[str] = EXCLUDE_OP_TYPES,
    calibration: str = "",
) -> QuantReport:
    """Statically quantise an exported fp32 model to int8 (QDQ) with calibration inputs from ``reader``.

    Args:
        fp32_path: the exported model (e.g. from :func:`~offseg_vis.deploy.onnx_export.export_onnx`).
        out_path: the int8 .onnx to write (atomically).
        reader: calibration inputs (any object with ``get_next``/``rewind``, e.g.
            :class:`SceneCalibrationReader`).
        per_channel: one weight scale per output channel (else one per tensor).
        exclude_op_types: operator types kept in float (see :data:`EXCLUDE_OP_TYPES`).
        calibration: a description of the calibration set, for the report.

    Returns:
        a :class:`QuantReport`.
    """
    require_deploy()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.exists():
        raise InputError(f"ONNX file {fp32_path} does not exist.")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ops = [op for op in QUANTIZE_OP_TYPES if op not in exclude_op_types]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out_path.parent) as folder:
        # Shape inference + constant folding first (ORT's recommended pre-processing): quantize_static
        # needs tensor shapes to place QDQ pairs and folds BatchNorm-like patterns into Conv.
        pre = Path(folder) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        tmp = Path(folder) / "int8.onnx"
        reader.rewind()
        quantize_static(
            str(pre),
            str(tmp),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=ops,
            per_channel=per_channel,
            # uint8 activations x int8 weights (U8S8): ONNX Runtime's x86 int8 convolutions are
            # built for it; with int8 activations (S8S8) OffSeg-MBV2 ran no faster than fp32 here
            # (0.95x its latency at 512², against 0.51x for U8S8, AVX512-VNNI CPU). On CPUs without
            # VNNI, U8S8 can saturate (ORT's docs suggest reduce_range there); not needed with VNNI.
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # symmetric activations would waste half the range on post-ReLU tensors
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        os.replace(tmp, out_path)
    return QuantReport(
        path=str(out_path),
        source=str(fp32_path),
        calibration=calibration or f"{len(reader)} calibration inputs",
        per_channel=per_channel,
        excluded_op_types=list(exclude_op_types),
        fp32_mb=fp32_path.stat().st_size / 1e6,
        int8_mb=out_path.stat().st_size / 1e6,
        quantize_s=time.perf_counter() - t0,
        quantized_nodes=_count_quantized(out_path),
    )


class OnnxSegmentor(nn.Module):
    """An exported model in ONNX Runtime with the Segmentor interface :func:`evaluate` uses.

    ``normalize`` and ``predict(images, mode="whole")`` behave as ``Segmentor``'s: normalised
    images (B, 3, H, W) -> logits (B, K, H, W), the head's logits resized bilinearly to the input
    (the graph holds the forward only, normalisation stays outside as in the torch path). Images
    run one at a time (exports are batch 1). H and W must be multiples of 32, and equal the
    export size for a fixed-size export.

    Args:
        path: the .onnx file (fp32 or int8).
        num_classes: K (checked against the graph's first output).
        threads: ONNX Runtime intra-op threads (default: torch's).
    """

    def __init__(self, path: str | os.PathLike, num_classes: int, threads: int | None = None) -> None:
        super().__init__()
        self.runtime = OnnxRuntimeModel(path, threads=threads)
        self.num_classes = int(num_classes)
        self.ignore_index = IGNORE_INDEX
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        out = self.runtime.session.get_outputs()[0].shape
        if isinstance(out[1], int) and out[1] != self.num_classes:
            raise ConfigError(f"{path} predicts {out[1]} classes, not {self.num_classes}.")

    def normalize(self, images_uint8: Tensor) -> Tensor:
        """uint8 (B, 3, H, W) -> normalised float32, as ``Segmentor.normalize``."""
        x = images_uint8.to(self.pixel_mean.dtype) / 255.0
        return (x - self.pixel_mean) / self.pixel_std

    def forward(self, images: Tensor) -> Tensor:
        """Normalised (B, 3, H, W) -> logits at the head's stride (B, K, h, w)."""
        h, w = images.shape[-2:]
        if h % SIZE_DIVISOR or w % SIZE_DIVISOR:
            raise InputError(f"ONNX evaluation needs H and W multiples of {SIZE_DIVISOR}, got {h}x{w}.")
        arrays = images.detach().cpu().float().numpy()
        return torch.from_numpy(np.concatenate([self.runtime(a[None]) for a in arrays]))

    @torch.no_grad()
    def predict(self, images: Tensor, mode: str = "whole", crop=512, stride=480) -> Tensor:
        """Normalised (B, 3, H, W) -> logits (B, K, H, W) at the input size (whole-image inference)."""
        if mode != "whole":
            raise InputError(f"ONNX evaluation runs whole-image inference only, not {mode!r}.")
        return F.interpolate(self(images), size=images.shape[-2:], mode="bilinear", align_corners=False)
