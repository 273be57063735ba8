"""Decoded detections -> COCO result dicts in the original images' pixels and category ids."""

from __future__ import annotations

from typing import Any

import torch

from qbench.preprocess.transform import Geometry

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


def to_coco_results(image_ids: list[int], detections: list[Detections],
                    geometries: list[Geometry], mapping: dict[int, int] | None) -> list[dict[str, Any]]:
    """Labels outside the mapping are dropped (classes the dataset does not annotate)."""
    results = []
    for image_id, det, geo in zip(image_ids, detections, geometries, strict=True):
        boxes = geo.to_original(det["boxes"].detach().float().cpu())
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), det["scores"].tolist(),
                                                  det["labels"].tolist(), strict=True):
            category = mapping.get(int(label)) if mapping is not None else int(label)
            if category is None:
                continue
            results.append({"image_id": int(image_id), "category_id": int(category),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return results
