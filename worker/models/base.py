"""What a loader returns: the fp32 model and how to feed it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

Task = Literal["detection", "classification"]


@dataclass
class LoadedModel:
    model_id: str
    arch: str
    task: Task
    module: nn.Module  # fp32, eval mode, on the CPU
    input_size: tuple[int, int]  # (h, w)
    num_classes: int
    category_names: list[str] = field(default_factory=list)
    trained: bool = False  # False: random weights, never reported as an accuracy
    source: str = "torchvision"

    def predict(self, module: nn.Module, batch: torch.Tensor) -> Any:
        """Run a torch module of this model's task on an NCHW batch in [0, 1]."""
        return run_task(self.task, module, batch)


def run_task(task: Task, module: nn.Module, batch: torch.Tensor) -> Any:
    with torch.inference_mode():
        if task == "detection":
            # torchvision detectors take a list of CHW images and return a list of dicts.
            return module(list(batch.unbind(0)))
        return module(batch)
