"""Deployment: ONNX export with dynamic input size, ONNX Runtime inference, int8 quantisation.

The ``onnx``, ``onnxscript`` and ``onnxruntime`` packages come with the ``deploy`` extra
(``pip install -e ".[deploy]"``); importing this package does not need them.
"""

from offseg_vis.deploy.onnx_export import ExportReport, OnnxRuntimeModel, export_onnx, load_for_export
from offseg_vis.deploy.quantize import OnnxSegmentor, QuantReport, calibration_reader, quantize_onnx

__all__ = [
    "ExportReport",
    "OnnxRuntimeModel",
    "OnnxSegmentor",
    "QuantReport",
    "calibration_reader",
    "export_onnx",
    "load_for_export",
    "quantize_onnx",
]
