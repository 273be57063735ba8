"""ort_fp32: the same model exported to ONNX and run by ONNX Runtime in float32."""

from __future__ import annotations

from pathlib import Path

import onnx

from qbench.backends.onnxruntime.backend import OnnxRuntimeBackend
from qbench.backends.onnxruntime.export import export_onnx, module_names, node_module
from qbench.backends.onnxruntime.runtime import (
    file_size,
    initializer_counts,
    unique,
    weight_nodes,
)
from qbench.models.base import LoadedModel
from qbench.models.torchvision_models import ORT_UNSUPPORTED, ModelError
from qbench.quantize.registry import Quantized, QuantizeRequest, register


def fp32_onnx(model: LoadedModel, request: QuantizeRequest) -> tuple[Path, list[str]]:
    """The float ONNX file of the model: the manifest's file, or a fresh export in work_dir."""
    path = model.onnx_path
    if path:
        return Path(path), [f"ONNX file {Path(path).name} as given"]
    if model.arch in ORT_UNSUPPORTED:
        raise ModelError(f"arch {model.arch}: ONNX Runtime modes are not supported: the exported "
                         "decode reshapes an empty tensor when a pyramid level has no candidate "
                         "above the score threshold, and ORT fails; use the torch modes")
    work = Path(request.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    out = export_onnx(model, work / f"{model.model_id}.onnx")
    notes = ["exported with torch.onnx (TorchScript exporter, opset 17)"]
    if model.kind.onnx_per_image:
        notes.append("detector exported for one image and run once per image of a batch "
                     "(torch.export cannot trace data-dependent NMS)")
    return out, notes


def module_lists(model: LoadedModel, onnx_model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(int8, float) weight layers, named as torch modules where the ONNX came from torch."""
    int8, floats = weight_nodes(onnx_model)
    if model.onnx_path is not None:
        return unique(int8), unique(floats)
    names = module_names(model.module)
    to_module = lambda n: node_module(n, names) or n  # noqa: E731
    int8_m = unique(map(to_module, int8))
    return int8_m, [n for n in unique(map(to_module, floats)) if n not in int8_m]


def ort_quantized(model: LoadedModel, path: Path, device: str, notes: list[str],
                  fp32_path: Path | None = None) -> Quantized:
    runtime = OnnxRuntimeBackend(path, device, reference_path=fp32_path or path)
    graph = onnx.load(str(path))
    int8, floats = module_lists(model, graph)
    return Quantized(
        predict=runtime.predict(model.kind),
        backend=runtime.label,
        size_bytes=file_size(path),
        params_by_dtype=initializer_counts(graph),
        int8_modules=int8,
        float_modules=floats,
        notes="; ".join(notes),
        runtime=runtime,
    )


@register("ort_fp32")
def quantize_ort_fp32(model: LoadedModel, request: QuantizeRequest) -> Quantized:
    path, notes = fp32_onnx(model, request)
    return ort_quantized(model, path, request.device, notes)
