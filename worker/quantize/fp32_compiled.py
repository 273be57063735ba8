"""fp32_compiled: torch.compile (inductor) of the fp32 model, the strongest float baseline.

An int8 speedup over eager fp32 overstates what quantization buys when compiled fp32 is already
faster. A classifier is compiled whole. A detector is compiled part by part (the parts that
carry the weights: backbone+FPN, RPN head, box head, box predictor); the transform, anchors,
RoIAlign, box decoding and NMS stay eager (data-dependent shapes). Compilation is lazy, so each
part is compiled and run once here on an example image: a part that fails stays eager and the
notes say which. The inductor CPU backend needs a C++ compiler (gcc/clang) on the worker.

The weights are the fp32 model's own (not copied), so size and dtype counts equal fp32's; the
saved artifact is the eager fp32 program (compilation is a runtime step, redone on load).
"""

from __future__ import annotations

import copy
import shutil

import torch
from torch import nn

from qbench.backends.torch.backend import TorchBackend
from qbench.backends.torch.runtime import make_predict
from qbench.models.base import LoadedModel
from qbench.quantize.common import (
    copy_to,
    params_by_dtype,
    serialized_size_bytes,
    weight_modules,
)
from qbench.quantize.registry import Quantized, QuantizeRequest, register


def _compile(module: nn.Module) -> nn.Module:
    # dynamic=None: the first batch size compiles a static graph, a second distinct one a
    # dynamic graph, which then serves every further batch size (no recompile per size).
    return torch.compile(module, backend="inductor", dynamic=None)


def _example(model: LoadedModel, device: str) -> torch.Tensor:
    from qbench.evaluate.synth import synth_images

    return synth_images(1, model.input_size, 3).to(device)


def _compiled_parts(model: LoadedModel, base: nn.Module, part_paths: tuple[str, ...],
                    device: str) -> tuple[nn.Module, list[str], list[str]]:
    """A shallow copy of the model whose weight parts are compiled where that works."""
    # Submodules are replaced on copies of their parents only; parameters stay shared.
    module = copy.copy(base)
    module._modules = dict(module._modules)
    compiled, eager = [], []
    example = _example(model, device)
    for path in part_paths:
        parent_path, _, attr = path.rpartition(".")
        try:
            parent = module.get_submodule(parent_path) if parent_path else module
        except AttributeError:
            continue
        sub = parent._modules.get(attr)
        if not isinstance(sub, nn.Module):
            continue
        if parent is not module:  # copy the parent too, so the fp32 model keeps its child
            parent_copy = copy.copy(parent)
            parent_copy._modules = dict(parent._modules)
            grand_path, _, parent_attr = parent_path.rpartition(".")
            grand = module.get_submodule(grand_path) if grand_path else module
            grand._modules[parent_attr] = parent_copy
            parent = parent_copy
        parent._modules[attr] = _compile(sub)
        try:
            with torch.inference_mode():
                model.kind.run(module, example)
            compiled.append(path)
        except Exception as exc:  # this part stays eager; the others may still compile
            parent._modules[attr] = sub
            eager.append(f"{path} ({type(exc).__name__})")
    return module, compiled, eager


@register("fp32_compiled")
def quantize_fp32_compiled(model: LoadedModel, request: QuantizeRequest) -> Quantized:
    if request.device == "cpu" and not (shutil.which("g++") or shutil.which("clang++")
                                        or shutil.which("c++")):
        raise RuntimeError("fp32_compiled: torch.compile on the CPU needs a C++ compiler "
                           "(g++ or clang++) on the worker")
    # On the CPU the loader's module itself (its weights are not copied); elsewhere a copy.
    base = model.module if request.device == "cpu" else copy_to(model.module, request.device)
    _, floats = weight_modules(base)
    # The kind names the parts that carry the weights (a detector's backbone, heads); the
    # rest (transform, anchors, RoIAlign, decoding, NMS) has data-dependent shapes.
    parts = model.kind.low_precision_parts(base)
    if parts is not None:
        part_paths, stays = parts
        module, compiled, eager = _compiled_parts(model, base, part_paths, request.device)
        if not compiled:
            raise RuntimeError("fp32_compiled: no part of the model compiled: " + ", ".join(eager))
        notes = [f"compiled: {', '.join(compiled)}; eager: the rest ({stays})"
                 + (f"; {', '.join(eager)} failed to compile" if eager else "")]
    else:
        module = _compile(base)
        notes = ["whole model compiled (inductor)"]
    notes.append("artifact: the eager fp32 program (compile is redone at load time)")
    return Quantized(
        predict=make_predict(model.task, module, request.device),
        backend="torch-inductor",
        size_bytes=serialized_size_bytes(base),
        params_by_dtype=params_by_dtype(base),
        float_modules=floats,
        notes="; ".join(notes),
        runtime=TorchBackend(base, "torch-inductor"),
    )
