"""Helpers shared by the quantization modes: sizes, dtype counts, keep-float patterns, predict."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.ao.nn.intrinsic.modules.fused import _FusedModule

from worker.models.base import LoadedModel, Task
from worker.models.kinds import TaskKind, as_kind
from worker.quantize.registry import Quantized

# Layers whose weights are the model's size; norms and activations are not counted as layers.
_FLOAT_WEIGHT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
_INT8_WEIGHT_TYPES = (nnq.modules.conv._ConvNd, nnq.Linear)


def serialized_size_bytes(module: nn.Module) -> int:
    """Bytes of torch.save(state_dict): what a checkpoint of this model weighs on disk.

    A module standing for a file (an ONNX source) weighs that file.
    """
    file_size = getattr(module, "file_size_bytes", None)
    if isinstance(file_size, int):
        return file_size
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes


def _tensors(value: Any) -> Iterable[torch.Tensor]:
    # Quantized Linear stores (weight, bias) as a tuple under _packed_params.
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def params_by_dtype(module: nn.Module) -> dict[str, int]:
    """Element counts over the state_dict per dtype, e.g. {"float32": n, "qint8": m}."""
    counts: dict[str, int] = {}
    for value in module.state_dict().values():
        for t in _tensors(value):
            key = str(t.dtype).removeprefix("torch.")
            counts[key] = counts.get(key, 0) + t.numel()
    return dict(sorted(counts.items()))


def matches_keep_float(name: str, patterns: Iterable[str]) -> str | None:
    """The first pattern matching the module or one of its parents, else None.

    A parent match counts so that "roi_heads.box_predictor" keeps its cls_score too.
    """
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
    for pattern in patterns:
        if any(fnmatchcase(p, pattern) for p in prefixes):
            return pattern
    return None


def keep_float_inside(module: nn.Module, prefix: str, patterns: Iterable[str]) -> dict[str, str]:
    """Submodules of `module` (names relative to it) that keep_float leaves float, each with
    the pattern that matched, outermost only: a match inside a kept module is not repeated."""
    keep: dict[str, str] = {}
    for name, _ in module.named_modules():
        if not name or any(name.startswith(k + ".") for k in keep):
            continue
        pattern = matches_keep_float(".".join(p for p in (prefix, name) if p), patterns)
        if pattern:
            keep[name] = pattern
    return keep


def weight_modules(module: nn.Module, prefix: str = "") -> tuple[list[str], list[str]]:
    """Qualified names of conv/linear layers, split into (int8, float).

    A float fused conv+relu (FX fuses even where it does not quantize) is named as the conv it
    replaced, not as its inner ".0".
    """
    int8: list[str] = []
    floats: list[str] = []
    fused: list[str] = []
    for name, sub in module.named_modules():
        if any(name.startswith(f + ".") for f in fused):
            continue
        full = ".".join(p for p in (prefix, name) if p)
        if isinstance(sub, _INT8_WEIGHT_TYPES):
            int8.append(full)
        elif isinstance(sub, _FLOAT_WEIGHT_TYPES):
            floats.append(full)
        elif isinstance(sub, _FusedModule):
            fused.append(name)
            floats.append(full)
    return int8, floats


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _cast_floats(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_floats(v, dtype) for v in value)
    return value


def make_predict(task: TaskKind | Task, module: nn.Module, device: str, dtype: torch.dtype | None = None,
                 per_image: bool = False) -> Callable[[torch.Tensor], Any]:
    """predict(batch NCHW in [0, 1]) for a module; with dtype, the batch is cast to it and
    floating outputs come back as float32 (numpy and metrics cannot take bf16). per_image:
    a detector runs one image at a time (same detections, each image is processed alone)."""

    kind = as_kind(task)

    def predict(batch: torch.Tensor) -> Any:
        batch = batch.to(device=device, dtype=dtype or batch.dtype)
        out = kind.run(module, batch, per_image=per_image)
        return _cast_floats(out, torch.float32) if dtype is not None else out

    return predict


def copy_to(module: nn.Module, device: str, dtype: torch.dtype | None = None) -> nn.Module:
    """A copy on device/dtype: the loader's fp32 module stays the untouched reference."""
    return copy.deepcopy(module).to(device=device, dtype=dtype).eval()


class CastIO(nn.Module):
    """Runs a module in a low-precision dtype behind float32 inputs and outputs."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, *args: Any) -> Any:
        return _cast_floats(self.module(*_cast_floats(args, self.dtype)), torch.float32)


def low_precision(model: LoadedModel, device: str, dtype: torch.dtype) -> Quantized:
    """fp16/bf16: the whole model, or only the parts its kind names (a detector's
    weight-carrying parts: torchvision's NMS has no bf16 kernel, box coordinates need float32)."""
    module = copy_to(model.module, device)
    name = str(dtype).removeprefix("torch.")
    plan = model.kind.low_precision_parts(module)
    if plan is not None:
        paths, why = plan
        cast = []
        for path in paths:
            parent_path, _, attr = path.rpartition(".")
            parent = module.get_submodule(parent_path) if parent_path else module
            sub = getattr(parent, attr, None)
            if isinstance(sub, nn.Module):
                setattr(parent, attr, CastIO(sub.to(dtype), dtype))
                cast.append(path)
        notes = f"{', '.join(cast)} in {name}; {why}"
        predict = make_predict(model.kind, module, device)
    else:
        module = module.to(dtype)
        notes = f"all layers in {name}; outputs cast back to float32"
        predict = make_predict(model.kind, module, device, dtype)
    return Quantized(
        predict=predict,
        backend="torch-eager",
        size_bytes=serialized_size_bytes(module),
        params_by_dtype=params_by_dtype(module),
        float_modules=weight_modules(model.module)[1],
        notes=notes,
        module=module,
    )


def torch_quantized(model: LoadedModel, module: nn.Module, backend: str, device: str, *,
                    int8_modules: list[str] | None = None, float_modules: list[str] | None = None,
                    notes: list[str] | None = None, per_image: bool = False) -> Quantized:
    """A Quantized for a torch module: size and dtype counts read off the module itself."""
    return Quantized(
        predict=make_predict(model.kind, module, device, per_image=per_image),
        backend=backend,
        size_bytes=serialized_size_bytes(module),
        params_by_dtype=params_by_dtype(module),
        int8_modules=int8_modules or [],
        float_modules=float_modules or [],
        notes="; ".join(notes or []),
        module=module,
    )
