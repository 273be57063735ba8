"""Image classifiers (torchvision): one logits tensor [N, classes] per batch.

int8_static traces the whole network as one FX graph; accuracy is top-1/top-5 on an
ImageFolder dataset, agreement is top-1 agreement with fp32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qbench.models.kinds.base import Pairs, Part, PartPlan, TaskKind, _flat_np


class Classification(TaskKind):
    name = "classification"
    default_classes = 1000
    dataset_formats = ("imagefolder",)

    def default_preprocess(self, arch: str | None) -> Any:
        from qbench.preprocess.defaults import Resolved, torchvision_classifier_spec

        return Resolved(torchvision_classifier_spec(arch or ""),
                        f"default: torchvision weights transform of {arch}")

    agreement_name = "top-1 agreement with fp32"

    def agreement_score(self, reference: Any, out: Any,
                        score_threshold: float = 0.5) -> tuple[float, float]:
        """Top-1 agreement with fp32, the figure the report shows as `agreement_top1` (a
        target of 0.97 means 97% of the images keep fp32's class), tie-broken by the logits'
        mean cosine similarity: on a few images top-1 agreement ties many configurations."""
        from qbench.evaluate.agreement import classification_agreement

        a = classification_agreement(reference, out)
        return a["top1_agreement"], a["cosine_mean"]

    def output_pairs(self, fp32: Any, quant: Any) -> Pairs:
        return {"logits": (_flat_np(fp32), _flat_np(quant))}

    def static_parts(self, model: nn.Module, input_size: tuple[int, int]) -> PartPlan:
        return PartPlan([Part("", model, (torch.rand(1, 3, *input_size),))], [])

    def evaluation_columns(self, data: Any, fp32: list[Any], quant: list[Any],
                           trained: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        from qbench.evaluate.scores import classification_columns

        return classification_columns(data, fp32, quant, trained)


CLASSIFICATION = Classification()
