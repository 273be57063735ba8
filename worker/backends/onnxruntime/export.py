"""Export a loaded torch model to ONNX for the ONNX Runtime modes.

The TorchScript-based exporter (dynamo=False) is used: torch.export (dynamo=True) stops at the
detector's data-dependent NMS. A torchvision detector is exported for one image ([3, H, W] in,
boxes/labels/scores out) and run once per image, as its postprocessing loops per image anyway
(TaskKind.onnx_per_image); other models get a dynamic batch dimension.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from torch import nn

from qbench.models.base import LoadedModel

OPSET = 17  # >= 13: per-channel DequantizeLinear needs an axis


def export_onnx(model: LoadedModel, path: Path) -> Path:
    module = model.module.eval()
    h, w = model.input_size
    kwargs = {"opset_version": OPSET, "dynamo": False, "do_constant_folding": True}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python values in the detector
        if model.kind.onnx_per_image:
            torch.onnx.export(module, ([torch.rand(3, h, w)],), str(path), input_names=["images"],
                              output_names=list(model.kind.ort_output_names or ()), **kwargs)
        else:
            example = torch.rand(1, 3, h, w)
            out = module(example)
            names = [f"output{i}" for i in range(len(out))] if isinstance(out, (tuple, list)) \
                else ["output"]
            torch.onnx.export(module, (example,), str(path), input_names=["input"],
                              output_names=names,
                              dynamic_axes={n: {0: "batch"} for n in ["input", *names]}, **kwargs)
    return path


_SUFFIX = re.compile(r"_\d+$")


def node_module(node_name: str, modules: set[str] | None) -> str | None:
    """The torch module a node of a TorchScript export came from, or None; with modules None
    (a given ONNX file), the dotted scope itself.

    Node names are scopes like "/backbone/body/layer1/layer1.0/conv1/Conv", where a child of a
    container repeats its parent's name ("layer1.0"); a module called twice gets "_1", "_2".
    """
    segments = node_name.strip("/").split("/")[:-1]
    for strip in (False, True):
        name, prev = "", ""
        for seg in segments:
            seg = _SUFFIX.sub("", seg) if strip else seg
            if prev and seg.startswith(prev + "."):
                name += seg[len(prev):]
            else:
                name = f"{name}.{seg}" if name else seg
            prev = seg
        if modules is None:
            return name or None
        if name in modules:
            return name
    return None


def module_names(module: nn.Module) -> set[str]:
    return {n for n, _ in module.named_modules() if n}
