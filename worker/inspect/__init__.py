"""Where quantization hurts: per-layer differences between an fp32 model and its quantized copy.

inspect_unit() gives the `layers` rows (without identity/environment columns) and the PNGs of
one unit; inspect_onnx() does the same for two ONNX files (fp32 and quantized).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from worker.inspect.capture import KINDS, compare_torch
from worker.inspect.onnx_compare import compare_onnx
from worker.inspect.outputs import output_pairs
from worker.inspect.plots import render_all
from worker.inspect.reference import float_reference
from worker.models.base import LoadedModel
from worker.quantize.onnx_export import module_names, node_module
from worker.quantize.registry import Quantized

__all__ = ["inspect_onnx", "inspect_unit"]


def _check_layers(layers: str) -> None:
    if layers not in KINDS:
        raise ValueError(f"layers must be one of {', '.join(KINDS)}, got {layers!r}")


def inspect_unit(loaded: LoadedModel, quantized: Quantized, images: torch.Tensor, layers: str,
                 out_dir: Path, *, label: str = "quantized",
                 onnx_paths: Sequence[Path] | None = None) -> tuple[list[dict], list[Path]]:
    """Compare `quantized` with `loaded`'s fp32 model on `images` (NCHW in [0, 1]).

    layers: "conv" | "linear" | "all". label names the quantized model in the pictures (the
    mode). An ONNX Runtime session cannot be hooked: its layers come from the two ONNX files,
    onnx_paths=(fp32.onnx, quant.onnx) or, if the mode sets it, quantized.onnx_paths.
    """
    _check_layers(layers)
    images = images.detach().float().cpu()
    if _is_ort(quantized.module):
        return _inspect_ort(loaded, quantized, images, layers, Path(out_dir), label, onnx_paths)
    if not isinstance(quantized.module, torch.nn.Module):
        raise TypeError(f"inspect: cannot inspect a {type(quantized.module).__name__}")
    ref = float_reference(loaded, quantized.module, images)
    comp = compare_torch(ref, quantized.module, quantized.predict, loaded.kind, images, layers)
    comp.outputs = output_pairs(loaded.kind, loaded.predict_fp32(images),
                                quantized.predict(images))
    return comp.rows(), render_all(comp, Path(out_dir), label)


def inspect_onnx(fp32_path: Path, quant_path: Path, images: torch.Tensor, layers: str,
                 out_dir: Path, *, label: str = "quantized") -> tuple[list[dict], list[Path]]:
    """The same rows and pictures for an fp32 ONNX file and its quantized (QDQ) version."""
    _check_layers(layers)
    comp = compare_onnx(Path(fp32_path), Path(quant_path), images.detach().float().cpu(), layers)
    return comp.rows(), render_all(comp, Path(out_dir), label)


def _inspect_ort(loaded: LoadedModel, quantized: Quantized, images: torch.Tensor, layers: str,
                 out_dir: Path, label: str,
                 onnx_paths: Sequence[Path] | None) -> tuple[list[dict], list[Path]]:
    """Layers from the two ONNX files; rows named as torch modules where the model came from
    torch; final outputs from the fp32 torch model vs the session, as for torch modes."""
    paths = onnx_paths or getattr(quantized, "onnx_paths", None)
    if not paths:
        raise ValueError("inspect: an ONNX Runtime model needs onnx_paths=(fp32 ONNX, quantized "
                         "ONNX): a session cannot be hooked")
    from_torch = isinstance(loaded.module, torch.nn.Module) and loaded.source != "onnx"
    modules = module_names(loaded.module) if from_torch else None
    comp = compare_onnx(Path(paths[0]), Path(paths[1]), images, layers,
                        rename=lambda node: node_module(node, modules))
    if from_torch:
        comp.outputs = output_pairs(loaded.kind, loaded.predict_fp32(images),
                                    quantized.predict(images))
    if loaded.kind.teacher_forcing:
        # No teacher forcing in a session: the RoI heads would compare different boxes.
        comp.drop("roi_heads.", "RoI heads of the two ONNX models pool different proposals")
        comp.note = "ONNX: RoI heads left out (each model pools its own proposals)"
    return comp.rows(), render_all(comp, out_dir, label)


def _is_ort(module: object) -> bool:
    return type(module).__module__.startswith("onnxruntime")
