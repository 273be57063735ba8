"""The work a detector did, beside its reference's: a faster row that does less is no speedup.

Quantizing a detector's post-processing can change how much work it does: int8 box decoding or
level mapping can drop proposals before the box head, which then looks fast by pooling fewer
RoIs. Each detector row (a torchvision detector, or a model whose outputs the manifest's
`outputs.decoder` turns into boxes: counted after decoding) carries its detections per image
and, where the runtime lets them be read, the proposals its box head pooled per image, both beside its reference's on the same
images; the report flags a difference over 5% (qbench.report.verdict.work_difference).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from qbench.quantize.registry import Quantized

WORK_IMAGES = 4  # images the work is counted on (the first evaluation images, or synthetic)


@dataclass(frozen=True)
class Work:
    """Per-image means over the images counted; proposals None where unreadable."""

    detections: float
    proposals: float | None


# predict, images -> one {boxes, labels, scores} dict per image
Detect = Callable[[Callable[[torch.Tensor], Any], torch.Tensor], list[dict]]


def work_of(q: Quantized, images: torch.Tensor, detect: Detect | None = None) -> Work:
    """detect: how raw outputs become detections (the manifest's decoder); None: the model
    returns them (a torchvision detector)."""
    outputs = detect(q.predict, images) if detect is not None else q.predict(images)
    detections = [len(d["boxes"]) for d in outputs]
    proposals = (q.runtime.proposals_per_image(q.predict, images)
                 if q.runtime is not None else None)
    return Work(sum(detections) / len(detections),
                sum(proposals) / len(proposals) if proposals else None)


@dataclass(frozen=True)
class WorkComparison:
    """The `models` columns of the work guard."""

    images: int
    reference_mode: str
    work: Work
    reference: Work

    def columns(self) -> dict[str, Any]:
        return {"work_images": self.images, "work_reference_mode": self.reference_mode,
                "detections_per_image": self.work.detections,
                "reference_detections_per_image": self.reference.detections,
                "proposals_per_image": self.work.proposals,
                "reference_proposals_per_image": self.reference.proposals}


def compare_work(q: Quantized, reference: Quantized, reference_mode: str,
                 images: torch.Tensor, detect: Detect | None = None) -> WorkComparison:
    with torch.inference_mode():
        return WorkComparison(len(images), reference_mode, work_of(q, images, detect),
                              work_of(reference, images, detect))
