"""Running a torch module the way qbench measures it: predict(batch) and low-precision borders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from qbench.models.kinds import TaskKind, as_kind


def cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors inside a (nested) output cast to dtype; everything else as is."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: cast_floats(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cast_floats(v, dtype) for v in value)
    return value


def make_predict(task: TaskKind | str, module: nn.Module, device: str,
                 dtype: torch.dtype | None = None,
                 per_image: bool = False) -> Callable[[torch.Tensor], Any]:
    """predict(batch NCHW in [0, 1]) for a module; with dtype, the batch is cast to it and
    floating outputs come back as float32 (numpy and metrics cannot take bf16). per_image:
    a detector runs one image at a time (same detections, each image is processed alone)."""

    kind = as_kind(task)

    def predict(batch: torch.Tensor) -> Any:
        batch = batch.to(device=device, dtype=dtype or batch.dtype)
        out = kind.run(module, batch, per_image=per_image)
        return cast_floats(out, torch.float32) if dtype is not None else out

    return predict


class CastIO(nn.Module):
    """Runs a module in a low-precision dtype behind float32 inputs and outputs."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, *args: Any) -> Any:
        return cast_floats(self.module(*cast_floats(args, self.dtype)), torch.float32)
