"""What a loader returns: the fp32 model and the kind of task it is (how to feed it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from qbench.models.kinds import TaskKind, as_kind, kind_named

Task = str  # a task's name, e.g. "detection": the `models.task` column (worker/models/kinds)


@dataclass
class LoadedModel:
    model_id: str
    arch: str
    task: Task  # the name; `kind` is its object
    module: nn.Module  # fp32, eval mode, on the CPU
    input_size: tuple[int, int]  # (h, w)
    num_classes: int
    category_names: list[str] = field(default_factory=list)
    trained: bool = False  # False: random weights, never reported as an accuracy
    source: str = "torchvision"
    onnx_path: str | None = None  # source onnx: the file ORT modes read instead of exporting
    kind: TaskKind = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.kind = kind_named(self.task)

    def predict(self, module: nn.Module, batch: torch.Tensor) -> Any:
        """Run a torch module of this model's task on an NCHW batch in [0, 1]."""
        return self.kind.run(module, batch)

    def predict_fp32(self, batch: torch.Tensor) -> Any:
        """The fp32 reference's outputs on a batch."""
        return self.kind.run(self.module, batch)


def run_task(task: TaskKind | Task, module: nn.Module, batch: torch.Tensor) -> Any:
    """Run a torch module of a task (its object or its name) on an NCHW batch in [0, 1]."""
    return as_kind(task).run(module, batch)
