"""A saved artifact back as predict(batch): what side-by-side timing runs for each variant.

The file is the one the unit benchmarked and checked against its model (save.py): a TorchScript
archive, read by torch's C++ loader (tensors and TorchScript classes only, no pickled Python
objects), the ONNX file ONNX Runtime ran, in a session set up as the unit's was, or the
OpenVINO IR (its .xml and .bin in a tar), compiled with the mode's properties.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qbench.models.kinds import as_kind

if TYPE_CHECKING:
    from qbench.models.base import LoadedModel


def load_program(path: Path, fmt: str, task: str, device: str, mode: str,
                 loaded: LoadedModel) -> Callable[[torch.Tensor], Any]:
    """predict(batch) of the artifact at `path`; `mode` and `loaded` (the model it was made
    from) say how an OpenVINO IR is compiled and fed."""
    kind = as_kind(task)
    if fmt == "openvino-ir":
        return _openvino(path, mode, loaded)
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


def _openvino(path: Path, mode: str, loaded: LoadedModel) -> Callable[[torch.Tensor], Any]:
    import tarfile
    import tempfile

    from qbench.backends.openvino.backend import IR_NAME, OpenVinoBackend
    from qbench.backends.openvino.convert import from_ir
    from qbench.modes import MODES

    with tempfile.TemporaryDirectory() as tmp, tarfile.open(path) as tar:
        members = {m.name for m in tar.getmembers()}
        if members != {f"{IR_NAME}.xml", f"{IR_NAME}.bin"}:
            raise ValueError(f"{path.name}: not an IR qbench saved ({sorted(members)[:4]})")
        tar.extractall(tmp, filter="data")  # two plain files, nothing outside tmp
        converted = from_ir(loaded, Path(tmp) / f"{IR_NAME}.xml")
        # the precision the mode compiles with (its INFERENCE_PRECISION_HINT)
        runtime = OpenVinoBackend(converted, MODES[mode].precision)
    return runtime.predict(loaded.kind)
