"""A saved artifact back as predict(batch): what side-by-side timing runs for each variant.

The file is the one the unit benchmarked and checked against its model (save.py): a TorchScript
archive, read by torch's C++ loader (tensors and TorchScript classes only, no pickled Python
objects), or the ONNX file ONNX Runtime ran, in a session set up as the unit's was.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from qbench.models.kinds import as_kind


def load_program(path: Path, fmt: str, task: str, device: str) -> Callable[[torch.Tensor], Any]:
    kind = as_kind(task)
    if fmt == "onnx":
        from qbench.backends.onnxruntime.backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, device).predict(kind)
    if fmt != "torchscript":
        raise ValueError(f"{path.name}: artifact format {fmt!r} is not one qbench saves")
    from qbench.backends.torch.torchscript import run_program

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.jit.load is deprecated"
        program = torch.jit.load(str(path), map_location=device).eval()

    def predict(batch: torch.Tensor) -> Any:
        return run_program(program, kind, batch.to(device))

    return predict
