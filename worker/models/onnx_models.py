"""`source: onnx`: any .onnx file, benchmarked with the ONNX Runtime modes only.

Its task is "onnx": outputs are generic, so predict returns the list of output tensors. The
loader's module is a stand-in that runs the file with ORT fp32 (the reference other modes are
compared with) and weighs its file size; torch modes refuse it (modes.mode_source_problem).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from qbench.models.base import LoadedModel
from qbench.models.kinds.onnx import ONNX
from qbench.models.torchvision_models import ModelError


class OnnxModule(nn.Module):
    """Stands for an ONNX file: forward(batch) runs it with ORT fp32 on the CPU."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        from qbench.backends.onnxruntime.runtime import file_size

        self.path = str(path)
        self.file_size_bytes = file_size(path)  # what common.serialized_size_bytes reports
        self._predict = None

    def forward(self, batch: torch.Tensor) -> Any:
        if self._predict is None:  # the session is built on first use, not at load
            from qbench.backends.onnxruntime.runtime import input_info, make_ort_predict, session

            path = Path(self.path)
            self._predict = make_ort_predict(session(path, "cpu"), input_info(path), ONNX)
        return self._predict(batch)


def load_onnx(model_id: str, path: Path, input_size: tuple[int, int]) -> LoadedModel:
    from qbench.backends.onnxruntime.runtime import input_info

    if path.suffix.lower() != ".onnx":
        raise ModelError(f"models[{model_id}].path: {path.name} is not an .onnx file")
    if not path.is_file():
        raise ModelError(f"models[{model_id}].path: file not found: {path}")
    try:
        info = input_info(path)
    except ValueError as exc:
        raise ModelError(f"models[{model_id}].path: {exc}") from None
    except Exception as exc:  # not a protobuf, truncated file
        raise ModelError(f"models[{model_id}].path: {path.name} is not a readable ONNX model "
                         f"({type(exc).__name__})") from None
    want = (3, *input_size)
    if any(d is not None and d != w for d, w in zip(info.chw, want, strict=True)):
        shown = "x".join("?" if d is None else str(d) for d in info.chw)
        raise ModelError(f"models[{model_id}].input_size: {path.name} takes {shown} images, "
                         f"the manifest gives 3x{input_size[0]}x{input_size[1]}")
    return LoadedModel(
        model_id=model_id, arch=path.name, task=ONNX.name, module=OnnxModule(path),
        input_size=input_size, num_classes=0, source="onnx", onnx_path=str(path),
    )
