"""Nests of tensors (a model's outputs: tensors in lists, tuples and dicts), walked in order."""

from __future__ import annotations

from typing import Any

import torch


def tensors_of(value: Any) -> list[torch.Tensor]:
    """Every tensor in a nest of tensors, lists, tuples and dicts, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [t for v in value for t in tensors_of(v)] if isinstance(value, (list, tuple)) else []
