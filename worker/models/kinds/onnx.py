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
    dataset_formats = ("imagefolder",)  # COCO too, with outputs.decoder
    decodes_outputs = True

    def default_preprocess(self, arch: str | None) -> Any:
        from worker.preprocess.defaults import Resolved
        from worker.preprocess.spec import PreprocessSpec

        # a given file declares nothing: timed and calibrated, but its accuracy is not reported
        return Resolved(PreprocessSpec(), "none declared: [0, 1] RGB stretched", trusted=False)

    def ort_outputs(self, runs: list[list[np.ndarray]], names: list[str],
                    has_batch_dim: bool) -> Any:
        return [torch.from_numpy(np.concatenate(parts) if has_batch_dim else np.stack(parts))
                for parts in zip(*runs, strict=True)]


ONNX = Onnx()
