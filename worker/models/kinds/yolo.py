"""Ultralytics YOLO detection networks: one tensor [B, 4 + classes, anchors] per batch
(decoded boxes and class scores; letterbox and NMS are outside the timed forward).

int8_static quantizes the network layer by layer; in the Detect head only the conv branches
(the DFL expectation over softmax bins stays float: int8 would coarsen every box edge).
A decoder to boxes (for mAP) belongs here, behind `run`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from qbench.models.kinds.base import Part, PartPlan, TaskKind


class Yolo(TaskKind):
    name = "yolo"
    dataset_formats = ("coco", "imagefolder")
    decodes_outputs = True

    def default_preprocess(self, arch: str | None) -> Any:
        from qbench.preprocess.defaults import Resolved
        from qbench.preprocess.spec import PreprocessSpec

        return Resolved(PreprocessSpec(resize="letterbox", pad_value=114), "default: YOLO letterbox")

    def static_parts(self, model: nn.Module, input_size: tuple[int, int]) -> PartPlan:
        layers = model.get_submodule("model.model")
        last = len(layers) - 1
        names = [f"model.model.{i}" for i in range(last)] + [
            f"model.model.{last}.{c}" for c, _ in layers[last].named_children() if c != "dfl"]
        return PartPlan([Part(n, model.get_submodule(n), split=True) for n in names], [],
                        separate_graphs=True)


YOLO = Yolo()
