"""A given ONNX file: generic outputs, so `run` returns the list of output tensors.

Only the ONNX Runtime modes take it (its module is a stand-in running the file with ORT); its
outputs have no known layout yet, so there is no evaluation: a decoder chosen by the manifest
belongs here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from qbench.models.kinds.base import TaskKind


class Onnx(TaskKind):
    name = "onnx"
    dataset_formats = ("imagefolder",)  # COCO too, with outputs.decoder
    decodes_outputs = True

    def default_preprocess(self, arch: str | None) -> Any:
        from qbench.preprocess.defaults import Resolved
        from qbench.preprocess.spec import PreprocessSpec

        # a given file declares nothing: timed and calibrated, but its accuracy is not reported
        return Resolved(PreprocessSpec(), "none declared: [0, 1] RGB stretched", trusted=False)

    def agreement_name_for(self, reference: Any) -> str:
        return ("top-1 agreement with fp32" if logits_of(reference) is not None
                else self.agreement_name)

    def agreement_score(self, reference: Any, out: Any,
                        score_threshold: float = 0.5) -> float | tuple[float, float]:
        """A file whose one output is [N, C] is scored as a classifier (top-1 agreement with
        fp32, tie-broken by the cosine), as its evaluation reports it; other files by the
        outputs' mean cosine similarity."""
        from qbench.evaluate.agreement import classification_agreement

        ref, ours = logits_of(reference), logits_of(out)
        if ref is None or ours is None:
            return super().agreement_score(reference, out, score_threshold)
        a = classification_agreement(ref, ours)
        return a["top1_agreement"], a["cosine_mean"]

    def ort_outputs(self, runs: list[list[np.ndarray]], names: list[str],
                    has_batch_dim: bool) -> Any:
        return [torch.from_numpy(np.concatenate(parts) if has_batch_dim else np.stack(parts))
                for parts in zip(*runs, strict=True)]


def logits_of(outputs: Any) -> torch.Tensor | None:
    """The one [N, C] output tensor of a file, else None."""
    if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
        outputs = outputs[0]
    return outputs if isinstance(outputs, torch.Tensor) and outputs.dim() == 2 else None


ONNX = Onnx()
