"""A unit's accuracy and its agreement with fp32, on the dataset's evaluation images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qbench.evaluate.class_metrics import CLASS_ROWS
from qbench.evaluate.datasets import UnitData
from qbench.evaluate.evalset import BATCH
from qbench.manifest import Unit
from qbench.models.base import LoadedModel
from qbench.preprocess.defaults import Resolved
from qbench.quantize.registry import Quantized


def _outputs(loaded: LoadedModel, predict, images: torch.Tensor, device: str) -> list[Any]:
    outs: list[Any] = []
    for batch in images.split(BATCH):
        outs += loaded.kind.per_image_outputs(predict(batch.to(device)))
    return outs


@dataclass(frozen=True)
class Evaluation:
    """Agreement with fp32 and accuracy (trained weights only) on the evaluation images, and
    a detector's accuracy per class (the `class_metrics` rows, without the unit's identity)."""

    eval_images: int
    agreement: dict[str, Any]
    accuracy: dict[str, Any]
    class_rows: tuple[dict[str, Any], ...] = ()

    def columns(self) -> dict[str, Any]:
        return {"eval_images": self.eval_images, **self.agreement, **self.accuracy}


def evaluate_unit(unit: Unit, loaded: LoadedModel, q: Quantized, dataset: UnitData,
                  pre: Resolved) -> Evaluation:
    """`dataset` and `pre`: the unit's dataset and preprocessing, resolved once per unit."""
    data = dataset.evaluation_set
    if loaded.kind.decodes_outputs:  # raw outputs: decoded by the manifest's outputs block
        from qbench.evaluate.decoded import evaluate_decoded

        columns = evaluate_decoded(unit, loaded, loaded.predict_fp32, q.predict, data, unit.device,
                                   pre)
        rows = columns.pop(CLASS_ROWS, [])
        return Evaluation(len(data.image_ids), columns, {}, tuple(rows))
    reference = _outputs(loaded, loaded.predict_fp32, data.images, "cpu")
    candidate = _outputs(loaded, q.predict, data.images, unit.device)
    agreement, accuracy = loaded.kind.evaluation_columns(data, reference, candidate,
                                                         loaded.trained)
    rows = accuracy.pop(CLASS_ROWS, [])
    return Evaluation(len(data.image_ids), agreement, accuracy, tuple(rows))
