"""Facts of torch modules the modes share: sizes, dtype counts, keep-float patterns, copies."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.ao.nn.intrinsic.modules.fused import _FusedModule

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


def copy_to(module: nn.Module, device: str, dtype: torch.dtype | None = None) -> nn.Module:
    """A copy on device/dtype: the loader's fp32 module stays the untouched reference."""
    return copy.deepcopy(module).to(device=device, dtype=dtype).eval()
