"""Decoded detections and the dataset's categories: the label mapping must reach every one
(COCO result dicts are written by evaluate.coco.to_coco_results, for every detector)."""

from __future__ import annotations

import torch

Detections = dict[str, torch.Tensor]


class CategoryMapError(ValueError):
    """Dataset categories the model's label mapping cannot produce (one line naming the field)."""


def check_categories(dataset_ids: set[int], mapping: dict[int, int] | None, num_labels: int | None,
                     field: str) -> None:
    """Every category of the dataset must be reachable from some model label."""
    reachable = set(mapping.values()) if mapping is not None else (
        set(range(num_labels)) if num_labels else dataset_ids)
    absent = sorted(dataset_ids - reachable)
    if absent:
        how = "the mapping" if mapping is not None else f"the model's label indices 0..{num_labels - 1}"
        raise CategoryMapError(f"{field}: dataset category ids {absent[:10]} are absent from "
                               f"{how}; declare outputs.category_map")
