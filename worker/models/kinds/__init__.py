"""Task kinds: one object per model task, owning everything that differs by task.

The interface (feeding, export, pairing, quantized parts, evaluation, and where per-model
preprocessing and decoders go) is documented in worker/models/kinds/base.py. Adding a task is
adding one module here, its object in KINDS, and its tests; nothing outside this package
compares task names.
"""

from __future__ import annotations

from qbench.models.kinds.base import Part, PartPlan, TaskKind
from qbench.models.kinds.classification import CLASSIFICATION
from qbench.models.kinds.detection import DETECTION
from qbench.models.kinds.onnx import ONNX
from qbench.models.kinds.yolo import YOLO

KINDS: dict[str, TaskKind] = {k.name: k for k in (DETECTION, CLASSIFICATION, YOLO, ONNX)}

__all__ = ["KINDS", "Part", "PartPlan", "TaskKind", "as_kind", "kind_named"]


def kind_named(name: str) -> TaskKind:
    """The kind of a task name (the `models.task` column)."""
    if name not in KINDS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(KINDS))}")
    return KINDS[name]


def as_kind(task: TaskKind | str) -> TaskKind:
    return task if isinstance(task, TaskKind) else kind_named(task)
