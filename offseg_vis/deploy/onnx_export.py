"""Export a zoo model to ONNX (torch.export / dynamo exporter) and run it with ONNX Runtime.

The graph takes normalised images (B, 3, H, W) and returns the logits at the head's stride
(B, K, H/s, W/s), exactly what ``Segmentor.forward`` returns in eval mode: for Offset Learning that
is the fused path (ΔE never materialised). With ``dynamic=True`` H and W are symbolic multiples
of 32 (the backbones' size divisor), so one file serves every such size.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from offseg_vis.errors import CheckpointError, ConfigError, InputError, OffSegError
from offseg_vis.models.registry import build_model, check_model_name

__all__ = ["ExportError", "ExportReport", "OnnxRuntimeModel", "export_onnx", "load_for_export", "require_deploy"]

SIZE_DIVISOR = 32
OPSET = 18
# Zoo models known not to export, with the reason the command prints (none at present: every
# other failure is reported with the exporter's own first line, see :func:`export_onnx`).
UNSUPPORTED: dict[str, str] = {}


class ExportError(OffSegError):
    """A model could not be exported to ONNX (the message says why)."""


def require_deploy() -> None:
    """Raise a clear error when the ``deploy`` extra is not installed."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(
            f'ONNX export needs {", ".join(missing)}; install the deploy extra: pip install -e ".[deploy]".'
        )


def load_for_export(model_or_checkpoint: str, num_classes: int | None = None) -> tuple[nn.Module, str]:
    """A zoo name (random weights, ``num_classes`` classes, Offset Learning) or a ``.safetensors``
    checkpoint with its card -> (model in eval mode on the CPU, a description of what was loaded)."""
    path = Path(model_or_checkpoint)
    if path.suffix == ".safetensors" or path.exists():
        if not path.exists():
            raise CheckpointError(f"Checkpoint {path} does not exist.")
        from offseg_vis.engine.checkpoint import load_model

        model, meta = load_model(path)
        if num_classes is not None and num_classes != meta.get("num_classes"):
            raise InputError(
                f"--num-classes {num_classes} disagrees with the checkpoint's {meta.get('num_classes')} classes; "
                f"leave it out for a checkpoint."
            )
        return model.eval(), f"checkpoint {path} ({meta.get('model')}, {meta.get('num_classes')} classes)"
    check_model_name(model_or_checkpoint)
    k = 150 if num_classes is None else num_classes
    torch.manual_seed(0)
    model = build_model(model_or_checkpoint, num_classes=k, classifier="offset")
    return model.eval(), f"zoo model {model_or_checkpoint} (random weights, {k} classes, offset classifier)"


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and checked."""

    path: str
    model: str
    example_size: tuple[int, int]
    dynamic: bool
    opset: int
    file_mb: float
    export_s: float
    checks: list[dict] = field(default_factory=list)  # {"size", "max_abs_diff", "logit_scale"}

    def summary(self) -> str:
        lines = [
            f"wrote {self.path} ({self.file_mb:.1f} MB, opset {self.opset}, "
            f"{'dynamic H, W (multiples of 32)' if self.dynamic else 'fixed size'}, example {self.example_size}, "
            f"exported in {self.export_s:.1f} s) from {self.model}"
        ]
        for c in self.checks:
            lines.append(
                f"  ONNX Runtime vs torch at {c['size']}: max |Δ| {c['max_abs_diff']:.2e} "
                f"(logit scale {c['logit_scale']:.2f}, {c['max_abs_diff'] / max(c['logit_scale'], 1e-12):.1e} of it)"
            )
        return "\n".join(lines)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    h, w = size
    if h <= 0 or w <= 0 or h % SIZE_DIVISOR or w % SIZE_DIVISOR:
        raise InputError(f"--size must be two positive multiples of {SIZE_DIVISOR}, got {h} {w}.")
    return h, w


def _dynamic_shapes() -> dict:
    """torch.export dynamic shapes of the "images" input: H and W free multiples of 32 (64 to 8192)."""
    dim = torch.export.Dim
    return {
        "images": {
            2: SIZE_DIVISOR * dim("h32", min=2, max=256),
            3: SIZE_DIVISOR * dim("w32", min=2, max=256),
        }
    }


def _write_onnx(
    model: nn.Module,
    x: torch.Tensor,
    path: Path,
    name: str,
    opset: int,
    dynamic_shapes: dict | None,
    optimize: bool,
) -> None:
    """Export ``model`` traced on x (1, 3, H, W) to ``path`` atomically: into a temporary file in
    the same folder, renamed into place only when the export succeeded (removed otherwise).

    Raises:
        ExportError: the exporter failed (its exception type and first line are named).
    """
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad():
            try:
                torch.onnx.export(
                    model,
                    (x,),
                    tmp,
                    input_names=["images"],
                    output_names=["logits"],
                    opset_version=opset,
                    dynamo=True,
                    dynamic_shapes=dynamic_shapes,
                    external_data=False,
                    optimize=optimize,
                )
            except Exception as err:  # the exporter raises many types; say which model and why
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ExportError(f"{name} could not be exported to ONNX: {type(err).__name__}: {first}") from err
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    size: tuple[int, int] = (512, 512),
    dynamic: bool = True,
    opset: int = OPSET,
    description: str = "",
    check_sizes: list[tuple[int, int]] | None = None,
    optimize: bool = False,
) -> ExportReport:
    """Export ``model`` (eval mode) to ``path`` and check ONNX Runtime against torch.

    Args:
        model: a zoo segmentor.
        path: the .onnx file to write (atomically: a temporary file renamed into place).
        size: (H, W) of the example input, multiples of 32.
        dynamic: symbolic H and W (multiples of 32) and batch; else the graph is fixed to ``size``.
        opset: ONNX opset.
        description: what the model is (for the report).
        check_sizes: sizes at which ONNX Runtime is compared with eager torch (default: ``size``,
            plus a second size when dynamic).
        optimize: run onnxscript's graph optimiser. Off by default: ONNX Runtime optimises the
            graph when it loads it, and on OffSeg-T the exporter-side pass ran for over 12 minutes
            on 2 busy cores without finishing.

    Returns:
        an :class:`ExportReport`.
    """
    require_deploy()
    h, w = _check_size(size)
    name = getattr(model, "model_name", type(model).__name__)
    if name in UNSUPPORTED:
        raise ExportError(f"{name} cannot be exported to ONNX: {UNSUPPORTED[name]}")
    model = model.eval()
    x = torch.randn(1, 3, h, w)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _write_onnx(model, x, path, name, opset, _dynamic_shapes() if dynamic else None, optimize)
    report = ExportReport(
        path=str(path),
        model=description or name,
        example_size=(h, w),
        dynamic=dynamic,
        opset=opset,
        file_mb=path.stat().st_size / 1e6,
        export_s=time.perf_counter() - t0,
    )
    if check_sizes is None:
        check_sizes = [(h, w)] + ([(h + 64, w + 32)] if dynamic else [])
    runtime = OnnxRuntimeModel(path)
    for ch, cw in check_sizes:
        report.checks.append(compare_with_torch(model, runtime, (ch, cw)))
    return report


def compare_with_torch(model: nn.Module, runtime: OnnxRuntimeModel, size: tuple[int, int], seed: int = 0) -> dict:
    """Max |ONNX Runtime − torch| of the logits on one random input of ``size``, with the logit scale."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, *size, generator=g)
    with torch.no_grad():
        ref = model(x).numpy()
    got = runtime(x.numpy())
    if got.shape != ref.shape:
        raise ExportError(f"ONNX Runtime returned logits of shape {got.shape}, torch {ref.shape}, at {size}.")
    return {
        "size": tuple(size),
        "max_abs_diff": float(np.abs(got - ref).max()),
        "logit_scale": float(np.abs(ref).max()),
    }


class OnnxRuntimeModel:
    """An exported model in an ONNX Runtime CPU session: float32 (B, 3, H, W) -> logits, as numpy.

    Args:
        path: the .onnx file.
        threads: intra-op threads (default: torch's thread count, so the runtimes compare fairly).
        spinning: let ONNX Runtime's worker threads spin after a run, waiting for the next one (its
            default: lowest latency back to back). Off, they sleep at once: needed when other work shares
            the cores, e.g. PyTorch calls timed interleaved with this session, which the spinning slows.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, spinning: bool = True) -> None:
        require_deploy()
        import onnxruntime as ort

        path = Path(path)
        if not path.exists():
            raise InputError(f"ONNX file {path} does not exist.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """images (B, 3, H, W) float32, normalised -> logits (B, K, h, w)."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]
