"""Final outputs of fp32 and quantized models as value pairs for the hexbin plots.

How outputs pair up is the task kind's (TaskKind.output_pairs): logits for a classifier,
matched detections for a detector, raw tensors otherwise.
"""

from __future__ import annotations

from typing import Any

from qbench.models.kinds import TaskKind, as_kind
from qbench.models.kinds.base import Pairs

__all__ = ["Pairs", "output_pairs"]


def output_pairs(task: TaskKind | str, fp32: Any, quant: Any) -> Pairs:
    return as_kind(task).output_pairs(fp32, quant)
