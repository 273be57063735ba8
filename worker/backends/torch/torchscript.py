"""A benchmarked torch module as a TorchScript program: what `torch.jit.load` runs without qbench.

Why TorchScript (measured on torch 2.14, see docs/quantization.md, "Artifacts"): torch.export cannot hold the
torch.ao int8 modules (their packed weights are TorchBind objects without `__obj_flatten__`)
nor a whole detector (data-dependent NMS), and `torch.export.load` unpickles entries flagged
as pickled with `weights_only=False`. A TorchScript archive is read by the C++ loader, which
rebuilds tensors and TorchScript classes only, and it runs the same int8 kernels bit for bit.

The detector is scripted, so its control flow (transform, RPN, NMS, RoI heads) stays general.
Parts TorchScript cannot compile are traced on the inputs they receive from one forward pass of
an example image: FX GraphModules (the int8 parts; their generated code carries string
annotations TorchScript cannot resolve) and `CastIO` wrappers (bf16/fp16 parts, `*args`).
Those parts have no control flow, so the trace replays exactly the ops they run.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn

from qbench.backends.torch.runtime import CastIO
from qbench.models.kinds import TaskKind, as_kind

LOW_PRECISION = (torch.bfloat16, torch.float16)


class CastInput(nn.Module):
    """A low-precision tensor model (classifier, YOLO) behind float32 input and output, as
    qbench's predict runs it."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.dtype)).float()


def low_precision_dtype(module: nn.Module) -> torch.dtype | None:
    """bf16/fp16 when every floating parameter of the module has that dtype."""
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    if len(dtypes) == 1 and (dtype := dtypes.pop()) in LOW_PRECISION:
        return dtype
    return None


def _outermost(module: nn.Module, kinds: tuple[type, ...]) -> Iterator[tuple[str, nn.Module]]:
    taken: list[str] = []
    for name, sub in module.named_modules():
        if name and isinstance(sub, kinds) and not any(name.startswith(t + ".") for t in taken):
            taken.append(name)
            yield name, sub


def trace_parts(module: nn.Module, task: TaskKind | str, example: torch.Tensor) -> list[str]:
    """Replace FX GraphModules and CastIO parts inside `module` by their traces, in place."""
    parts = dict(_outermost(module, (fx.GraphModule, CastIO)))
    inputs: dict[str, tuple] = {}

    def recorder(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:  # None: the inputs go on unchanged
            inputs.setdefault(name, args)
        return hook

    hooks = [sub.register_forward_pre_hook(recorder(name)) for name, sub in parts.items()]
    try:
        as_kind(task).example_call(module, example)
    finally:
        for hook in hooks:
            hook.remove()
    for name, sub in parts.items():
        if name not in inputs:
            raise RuntimeError(f"TorchScript: part {name} did not run on the example image")
        traced = torch.jit.trace(sub, inputs[name], strict=False, check_trace=False)
        parent, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, attr, traced)
    return list(parts)


def _compile(work: nn.Module, kind: TaskKind, example: torch.Tensor
             ) -> tuple[torch.jit.ScriptModule, list[str]]:
    if kind.traceable_whole and isinstance(work, fx.GraphModule):
        return torch.jit.trace(work, example, strict=False, check_trace=False), ["(whole model)"]
    traced = trace_parts(work, kind, example)
    try:
        return torch.jit.script(work), traced
    except Exception:
        if not kind.traceable_whole:
            raise  # a traced detector would freeze its NMS to the example image
    # A tensor model (classifier, YOLO network) TorchScript cannot compile: no data-dependent
    # control flow to freeze.
    return torch.jit.trace(work, example, strict=False, check_trace=False), ["(whole model)"]


def to_torchscript(module: nn.Module, task: TaskKind | str, example: torch.Tensor
                   ) -> tuple[torch.jit.ScriptModule, list[str]]:
    """A TorchScript program computing what the benchmarked module computes; `module` itself
    is left untouched (it may still be measured). Returns it and the names of traced parts."""
    kind = as_kind(task)
    work = copy.deepcopy(module).eval()
    # A tensor model cast whole runs behind float32 borders; a detector's cast parts carry
    # their own (CastIO).
    dtype = low_precision_dtype(work) if kind.traceable_whole else None
    if dtype is not None:
        work = CastInput(work, dtype)
    with warnings.catch_warnings():
        # TorchScript warns that it is deprecated on every call; the choice is deliberate.
        warnings.simplefilter("ignore")
        return _compile(work, kind, example)


def run_program(program: torch.jit.ScriptModule, task: TaskKind | str,
                batch: torch.Tensor) -> Any:
    """Outputs of a saved program in qbench's structure (a detector returns (losses, dets))."""
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "RCNN always returns a (Losses, Detections) tuple"
        return as_kind(task).program_outputs(program, batch)


def max_difference(expected: Any, got: Any) -> float:
    """Largest difference between two output structures, absolute below 1 and relative above
    (|e - g| / |e|: box coordinates in pixels differ by float32 rounding, about 1e-7 of their
    size, when a program's kernels run in another order); inf where they differ in structure,
    shape, dtype or integer values (labels)."""
    if isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor):
        if expected.shape != got.shape or expected.dtype != got.dtype:
            return float("inf")
        if expected.numel() == 0:
            return 0.0
        if not expected.is_floating_point():
            return 0.0 if torch.equal(expected, got) else float("inf")
        e, g = expected.float(), got.float()
        return float(((e - g).abs() / e.abs().clamp(min=1.0)).max())
    if isinstance(expected, dict) and isinstance(got, dict):
        if set(expected) != set(got):
            return float("inf")
        return max((max_difference(expected[k], got[k]) for k in expected), default=0.0)
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)):
        if len(expected) != len(got):
            return float("inf")
        return max((max_difference(e, g) for e, g in zip(expected, got, strict=True)),
                   default=0.0)
    return float("inf")
