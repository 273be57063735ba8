"""The manifest's `outputs` block: how to read a model's outputs (torch-free).

decoder (detectors):
  torchvision  boxes [N, 4] xyxy, labels [N], scores [N] per image (NMS done by the model)
  ultralytics  one tensor [B, 4 + C, anchors]: cx, cy, w, h in input pixels, then C class scores
  ssd          boxes [B, N, 4] and scores [B, N, C]
  gfl          PP-PicoDet-style raw heads: per stride, class scores [B, N_l, C] and distance
               distributions [B, N_l, 4 * (reg_max + 1)], decoded by each distribution's integral
Without a decoder, agreement with fp32 is measured on the raw outputs (SQNR, cosine).

category_map: model label index -> dataset category id, for every detector (a torchvision
detector's label is a COCO category id when it is trained on COCO; on a KITTI, YOLO or VOC
dataset the ids are 1..N in `dataset.classes` order); "coco80" is ultralytics' 80 classes to
COCO's 91 ids. labels (classifiers): the name of each output index, or "imagenet" for
torchvision's 1000 ImageNet class names, matched against ImageFolder folder names.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
)

DECODERS = ("torchvision", "ultralytics", "ssd", "gfl")
MAX_CLASSES = 100_000  # as models[].num_classes


class OutputsSpec(BaseModel):
    # Strict types as in the rest of the manifest ("yes" is not true), finite numbers, and a
    # bound on every list and map.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    decoder: Literal["torchvision", "ultralytics", "ssd", "gfl"] | None = None
    score_threshold: StrictFloat = Field(default=0.001, ge=0, lt=1)  # candidates kept for mAP
    iou_threshold: StrictFloat = Field(default=0.6, gt=0, le=1)  # class-wise NMS
    max_detections: StrictInt = Field(default=100, ge=1, le=10_000)
    # ssd
    box_format: Literal["xyxy", "cxcywh", "xywh"] = "xyxy"
    normalized_boxes: StrictBool = False  # boxes in [0, 1] of the input size
    background_class: StrictBool = False  # scores[..., 0] is background, not a class
    # gfl
    strides: tuple[StrictInt, ...] = Field(default=(8, 16, 32, 64), max_length=8)
    reg_max: StrictInt = Field(default=7, ge=1, le=64)
    # categories
    category_map: Literal["coco80"] | dict[int, int] | None = Field(default=None,
                                                                     max_length=MAX_CLASSES)
    labels: Literal["imagenet"] | list[Annotated[str, Field(max_length=200)]] | None = Field(
        default=None, max_length=MAX_CLASSES)

    @field_validator("strides")
    @classmethod
    def _positive_strides(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(s < 1 or s > 1024 for s in v):
            raise ValueError("needs positive strides, e.g. [8, 16, 32, 64]")
        return v

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, v):
        if isinstance(v, list) and len(set(v)) != len(v):
            raise ValueError("a label name is listed twice")
        return v

    # category_map without a decoder is for torchvision detectors only: the model spec checks
    # it (qbench.manifest.ModelSpec), since only it knows the model's source and arch.


# ultralytics' 80 COCO classes (index) -> COCO's category ids (1..90 with gaps).
COCO80_TO_COCO91 = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90,
)


def category_mapping(spec: OutputsSpec | None) -> dict[int, int] | None:
    """label index -> dataset category id; None: identity."""
    if spec is None or spec.category_map is None:
        return None
    if spec.category_map == "coco80":
        return dict(enumerate(COCO80_TO_COCO91))
    return dict(spec.category_map)
