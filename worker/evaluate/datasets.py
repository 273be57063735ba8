"""A unit's dataset, split once: calibration images never overlap evaluation images."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from worker.evaluate.coco import DatasetError, load_batch, load_coco, load_image_folder, split
from worker.manifest import Unit
from worker.models.base import LoadedModel

SPLIT_SEED = 0  # fixed: every mode of a job calibrates and evaluates on the same images
BATCH = 4


@dataclass
class EvalSet:
    images: torch.Tensor  # NCHW at the model's input size
    image_ids: list[int]  # COCO ids (detection) or indices (classification)
    scales: list[tuple[float, float]]  # resize factors back to the original images
    labels: torch.Tensor | None  # classification labels
    gt: dict | None  # the COCO instances document (detection)


@lru_cache(maxsize=4)
def _load(unit_json: str, num_classes: int, size: tuple[int, int]):
    unit = Unit.model_validate_json(unit_json)
    spec = unit.dataset
    images = unit.resolve(spec.images)
    calib_count = unit.quantization.calibration.images
    if spec.format == "coco":
        ds = load_coco(images, unit.resolve(spec.annotations), num_classes=num_classes)
        calib_ids, eval_ids = split(ds.image_ids, calib_count, SPLIT_SEED)
        return ds, calib_ids, eval_ids[: spec.eval_images]
    batch, labels, _ = load_image_folder(images, size)
    calib_ids, eval_ids = split(list(range(len(labels))), calib_count, SPLIT_SEED)
    return (batch, labels), calib_ids, eval_ids[: spec.eval_images]


def _dataset(unit: Unit, loaded: LoadedModel):
    if unit.dataset.format not in loaded.kind.dataset_formats:
        if unit.dataset.format == "coco":
            raise DatasetError(f"{unit.dataset.annotations}: a COCO detection dataset needs a "
                               "detector")
        raise DatasetError(f"{unit.dataset.images}: an ImageFolder dataset needs a classifier")
    return _load(unit.model_dump_json(), loaded.num_classes, tuple(loaded.input_size))


def calibration_batches(unit: Unit, loaded: LoadedModel, count: int) -> list[torch.Tensor]:
    data, calib_ids, _ = _dataset(unit, loaded)
    if unit.dataset.format == "coco":
        images, _ = load_batch(data, calib_ids, tuple(loaded.input_size))
    else:
        images = data[0][calib_ids]
    return list(images.split(BATCH))


def evaluation_set(unit: Unit, loaded: LoadedModel) -> EvalSet:
    data, _, eval_ids = _dataset(unit, loaded)
    if unit.dataset.format == "coco":
        images, scales = load_batch(data, eval_ids, tuple(loaded.input_size))
        return EvalSet(images, eval_ids, scales, None, data.doc)
    return EvalSet(data[0][eval_ids], eval_ids, [], data[1][eval_ids], None)


def calibration_map_scorer(unit: Unit, loaded: LoadedModel):
    """mAP on the calibration split's annotations: what int8_mixed optimises (never eval)."""
    from worker.evaluate.coco import evaluate_detections, to_coco_results

    data, calib_ids, _ = _dataset(unit, loaded)
    images, scales = load_batch(data, calib_ids, tuple(loaded.input_size))

    def score(predict) -> float:
        outs = [o for batch in images.split(BATCH) for o in predict(batch)]
        return evaluate_detections(data.doc, to_coco_results(calib_ids, outs, scales), calib_ids)["map"]

    return score
