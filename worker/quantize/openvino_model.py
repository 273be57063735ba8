"""What the OpenVINO modes share: a converted model's weight layers, sizes, and the result.

An operator's weight is int8 when its weight input comes from an int8 constant (NNCF stores
quantized weights as i8 constants followed by Convert and Multiply) or through a FakeQuantize.
Operators are named as torch modules where the model came from torch (DetectorTensors'
prefix removed; a conv folded with its BatchNorm by its conv), else by the ONNX node.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from qbench.backends.onnxruntime.runtime import unique
from qbench.backends.openvino.backend import OpenVinoBackend
from qbench.backends.openvino.convert import Converted
from qbench.models.base import LoadedModel
from qbench.quantize.registry import Quantized

WEIGHT_OPS = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"}
# What sits between a stored weight and the operator using it.
WEIGHT_PATH = {"Convert", "Multiply", "Subtract", "Reshape", "Transpose", "Unsqueeze"}
ELEMENT_NAMES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i8": "int8",
                 "u8": "uint8", "i32": "int32", "i64": "int64", "boolean": "bool"}


def _weight_kind(op: Any) -> str | None:
    """"int8" or "float" for the weight feeding op's input 1; None when it is no constant."""
    node = op.input_value(1).get_node()
    while True:
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return "int8"
        if kind == "Constant":
            return "int8" if node.get_element_type().get_type_name() in ("i8", "u8") else "float"
        if kind not in WEIGHT_PATH or node.get_input_size() == 0:
            return None
        node = node.input_value(0).get_node()


def weight_layers(converted: Converted, model: Any | None = None) -> tuple[list[str], list[str]]:
    """(int8, float) weight layers of the model (default: the converted float one)."""
    int8: list[str] = []
    floats: list[str] = []
    for op in (model or converted.model).get_ordered_ops():
        if op.get_type_name() not in WEIGHT_OPS:
            continue
        kind = _weight_kind(op)
        if kind is None:
            continue
        name = converted.layer_name(op)
        (int8 if kind == "int8" else floats).append(name)
    int8 = unique(int8)
    return int8, [n for n in unique(floats) if n not in int8]


def constant_counts(model: Any) -> dict[str, int]:
    """Element counts of the model's constants per type, named as torch's."""
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        name = op.get_element_type().get_type_name()
        key = ELEMENT_NAMES.get(name, name)
        size = 1
        for dim in op.get_output_shape(0):
            size *= int(dim)
        counts[key] = counts.get(key, 0) + size
    return dict(sorted(counts.items()))


def ir_size(model: Any) -> int:
    """Bytes of the model saved as OpenVINO IR (.xml + .bin), float weights not compressed."""
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        return xml.stat().st_size + xml.with_suffix(".bin").stat().st_size


def ov_quantized(loaded: LoadedModel, converted: Converted, precision: str,
                 notes: list[str], model: Any | None = None) -> Quantized:
    """The Quantized result of `model` (default: the converted float one) compiled for
    `precision` (its INFERENCE_PRECISION_HINT: backends/openvino/config.py)."""
    model = model or converted.model
    runtime = OpenVinoBackend(replace(converted, model=model), precision)
    int8, floats = weight_layers(converted, model)
    hint = runtime.properties["INFERENCE_PRECISION_HINT"]
    return Quantized(
        predict=runtime.predict(loaded.kind),
        backend=runtime.label,
        size_bytes=ir_size(model),
        params_by_dtype=constant_counts(model),
        int8_modules=int8,
        float_modules=floats,
        notes="; ".join([converted.note, *notes, f"compiled with INFERENCE_PRECISION_HINT {hint}"]),
        runtime=runtime,
    )
