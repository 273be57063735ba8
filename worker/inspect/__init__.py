"""Where quantization hurts: per-layer differences between an fp32 model and its quantized copy.

inspect_unit() gives the `layers` rows (without identity/environment columns) and the PNGs of
one unit; inspect_onnx() does the same for two ONNX files (fp32 and quantized).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from qbench.inspect.capture import KINDS
from qbench.inspect.onnx_compare import compare_onnx
from qbench.inspect.plots import render_all

if TYPE_CHECKING:
    from qbench.models.base import LoadedModel
    from qbench.quantize.registry import Quantized

__all__ = ["inspect_onnx", "inspect_unit"]


def _check_layers(layers: str) -> None:
    if layers not in KINDS:
        raise ValueError(f"layers must be one of {', '.join(KINDS)}, got {layers!r}")


def inspect_unit(loaded: LoadedModel, quantized: Quantized, images: torch.Tensor, layers: str,
                 out_dir: Path, *, label: str = "quantized") -> tuple[list[dict], list[Path]]:
    """Compare `quantized` with `loaded`'s fp32 model on `images` (NCHW in [0, 1]).

    layers: "conv" | "linear" | "all". label names the quantized model in the pictures (the
    mode). The activations come from the result's backend (worker/backends): hooks on a torch
    module, the fp32 and quantized ONNX files node by node for an ONNX Runtime session.
    """
    _check_layers(layers)
    if quantized.runtime is None:
        raise TypeError(f"inspect: backend {quantized.backend} has no runtime to inspect")
    comp = quantized.runtime.compare_layers(loaded, quantized.predict,
                                            images.detach().float().cpu(), layers)
    return comp.rows(), render_all(comp, Path(out_dir), label)


def inspect_onnx(fp32_path: Path, quant_path: Path, images: torch.Tensor, layers: str,
                 out_dir: Path, *, label: str = "quantized") -> tuple[list[dict], list[Path]]:
    """The same rows and pictures for an fp32 ONNX file and its quantized (QDQ) version."""
    _check_layers(layers)
    comp = compare_onnx(Path(fp32_path), Path(quant_path), images.detach().float().cpu(), layers)
    return comp.rows(), render_all(comp, Path(out_dir), label)
