"""The ONNX Runtime backend as plain data (no onnxruntime import): read by the mode table."""

from __future__ import annotations

import importlib.metadata

NAME = "onnxruntime"
SOURCES = ("torchvision", "yolo", "onnx")  # a torch model is exported first; a file is read
ARTIFACT_FORMAT = "onnx"
DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")

# ONNX Runtime's WeightBiasQuantization transformer (graph level 1) gives a float Conv or Gemm
# that sits between a DequantizeLinear and a QuantizeLinear int8 weights, one scale per tensor,
# when a session is created: it silently undoes keep_float. Measured on EfficientNet-Lite0, its
# stem conv kept float: 28.9 dB SQNR at the conv's activation with the transformer, 53.0 dB
# without, 32.6 dB with the conv int8 per channel. Every session qbench runs, and the load
# snippet of an ONNX artifact, leave it off.
DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]


def devices() -> tuple[str, ...]:
    """cuda only where the onnxruntime-gpu distribution is installed (checked without importing)."""
    try:
        importlib.metadata.distribution("onnxruntime-gpu")
    except importlib.metadata.PackageNotFoundError:
        return ("cpu",)
    return ("cpu", "cuda")
