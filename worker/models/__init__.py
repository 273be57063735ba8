"""Model loaders: load_model(unit) picks one by the manifest's source."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qbench.models.base import LoadedModel
from qbench.models.torchvision_models import ModelError, load_torchvision

if TYPE_CHECKING:
    from qbench.manifest import Unit

__all__ = ["LoadedModel", "ModelError", "load_model"]


def load_model(unit: Unit) -> LoadedModel:
    spec = unit.model
    checkpoint = unit.resolve(spec.checkpoint) if spec.checkpoint else None
    if spec.source == "torchvision":
        return load_torchvision(spec.id, spec.arch, spec.num_classes, tuple(spec.input_size),
                                checkpoint)
    if spec.source == "onnx":
        from qbench.models.onnx_models import load_onnx

        return load_onnx(spec.id, unit.resolve(spec.path), tuple(spec.input_size))
    if spec.source == "yolo":
        from qbench.models.yolo import load_yolo

        return load_yolo(spec.id, spec.arch, spec.num_classes, tuple(spec.input_size), checkpoint)
    raise ModelError(f"models[{spec.id}].source: unknown source {spec.source!r}")
