"""The images a unit is scored on, with what maps its outputs back to the dataset."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from qbench.preprocess.transform import Geometry

BATCH = 4


@dataclass
class EvalSet:
    images: torch.Tensor  # NCHW at the model's input size
    image_ids: list[int]  # COCO ids (detection) or indices (classification)
    scales: list[tuple[float, float]]  # resize factors back to the original images
    labels: torch.Tensor | None  # classification labels
    gt: dict | None  # the COCO instances document (detection)
    geometries: list[Geometry] = field(default_factory=list)  # model input -> original pixels
    labels_note: str | None = None  # why an image folder has no labels
    # model label -> dataset category id (outputs.category_map; None: the label is the id)
    category_map: dict[int, int] | None = None
    # format kitti: KITTI AP's IoU threshold per class name (None: not a KITTI dataset)
    kitti_iou: dict[str, float] | None = None
