"""A given ONNX file: generic outputs, so `run` returns the list of output tensors.

Only the ONNX Runtime modes take it (its module is a stand-in running the file with ORT); its
outputs have no known layout yet, so there is no evaluation: a decoder chosen by the manifest
belongs here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from worker.models.kinds.base import TaskKind


class Onnx(TaskKind):
    name = "onnx"

    def ort_outputs(self, runs: list[list[np.ndarray]], names: list[str],
                    has_batch_dim: bool) -> Any:
        return [torch.from_numpy(np.concatenate(parts) if has_batch_dim else np.stack(parts))
                for parts in zip(*runs, strict=True)]


ONNX = Onnx()
