"""A unit's accuracy and its agreement with fp32, on the dataset's evaluation images."""

from __future__ import annotations

import math
from typing import Any

import torch

from worker.evaluate.agreement import classification_agreement, detection_agreement
from worker.evaluate.coco import evaluate_detections, to_coco_results, topk_accuracy
from worker.evaluate.datasets import BATCH, EvalSet, evaluation_set
from worker.manifest import Unit
from worker.models.base import LoadedModel, run_task
from worker.quantize.registry import Quantized


def _nan_to_none(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def logits_sqnr(ref: torch.Tensor, ours: torch.Tensor) -> float | None:
    from worker.inspect.metrics import sqnr_db

    value = sqnr_db(float((ref.double() ** 2).sum()), float(((ref.double() - ours.double()) ** 2).sum()))
    return value if math.isfinite(value) else None


def _outputs(predict, images: torch.Tensor, device: str) -> list[Any]:
    outs: list[Any] = []
    for batch in images.split(BATCH):
        result = predict(batch.to(device))
        outs += ([{k: v.detach().float().cpu() for k, v in o.items()} for o in result]
                 if isinstance(result, list) else [result.detach().float().cpu()])
    return outs


def evaluate_unit(unit: Unit, loaded: LoadedModel, q: Quantized) -> dict[str, Any]:
    """Columns of the `models` row: accuracy (trained weights only) and agreement with fp32."""
    data = evaluation_set(unit, loaded)
    if loaded.task in ("yolo", "onnx"):  # raw outputs: decoded by the manifest's outputs block
        from worker.evaluate.decoded import evaluate_decoded

        fp32 = lambda b: run_task(loaded.task, loaded.module, b)  # noqa: E731
        return {"eval_images": len(data.image_ids),
                **evaluate_decoded(unit, loaded, fp32, q.predict, data, unit.device)}
    reference = _outputs(lambda b: run_task(loaded.task, loaded.module, b), data.images, "cpu")
    candidate = _outputs(q.predict, data.images, unit.device)
    row: dict[str, Any] = {"eval_images": len(data.image_ids)}
    if loaded.task == "detection":
        row.update(_detection(data, reference, candidate, loaded.trained))
    else:
        row.update(_classification(data, reference, candidate, loaded.trained))
    return row


def _detection(data: EvalSet, fp32: list[dict], quant: list[dict], trained: bool) -> dict[str, Any]:
    agree = detection_agreement(fp32, quant)
    row = {
        "agreement_precision": agree["precision"], "agreement_recall": agree["recall"],
        "agreement_mean_iou": _nan_to_none(agree["mean_iou"]),
        "agreement_score_diff": _nan_to_none(agree["score_abs_diff_mean"]),
        "count_error_mean": agree["count_error_mean"], "count_error_std": agree["count_error_std"],
    }
    if trained and data.gt is None:
        row["accuracy_note"] = "no annotations: agreement with fp32 only"
    elif trained:  # random weights are never reported as an accuracy
        ours = evaluate_detections(data.gt, to_coco_results(data.image_ids, quant, data.scales),
                                   data.image_ids)
        ref = evaluate_detections(data.gt, to_coco_results(data.image_ids, fp32, data.scales),
                                  data.image_ids)
        row.update(map=_nan_to_none(ours["map"]), map50=_nan_to_none(ours["map50"]),
                   map_fp32=_nan_to_none(ref["map"]), map50_fp32=_nan_to_none(ref["map50"]))
    return row


def _classification(data: EvalSet, fp32: list, quant: list, trained: bool) -> dict[str, Any]:
    ref, ours = torch.cat(fp32), torch.cat(quant)
    agree = classification_agreement(ref, ours)
    row: dict[str, Any] = {"agreement_top1": agree["top1_agreement"],
                           "logits_sqnr_db": logits_sqnr(ref, ours)}
    if trained and data.labels is None:
        row["accuracy_note"] = data.labels_note
    elif trained:
        acc = topk_accuracy(ours, data.labels, ks=(1, 5))
        row.update(top1=acc["top1"], top5=acc["top5"])
    return row
