"""Scores of fp32 vs quantized outputs: the accuracy and agreement columns of a `models` row,
and the continuous agreement int8_mixed's search maximises without a dataset."""

from __future__ import annotations

import math
from typing import Any

import torch

from qbench.evaluate.agreement import (
    classification_agreement,
    decided_agreement,
    detection_agreement,
)
from qbench.evaluate.class_metrics import detector_accuracy
from qbench.evaluate.coco import to_coco_results, topk_accuracy
from qbench.measure.stats import proportion_ci


def nan_to_none(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


Columns = dict[str, Any]


def logits_sqnr(ref: torch.Tensor, ours: torch.Tensor) -> float | None:
    """SQNR in dB of the quantized logits against fp32's (None when it is not finite)."""
    from qbench.inspect.metrics import sqnr_db

    noise = float(((ref.double() - ours.double()) ** 2).sum())
    value = sqnr_db(float((ref.double() ** 2).sum()), noise)
    return value if math.isfinite(value) else None


def detection_agreement_columns(fp32: list[dict], quant: list[dict]) -> Columns:
    """The `models` columns of detections' agreement with fp32 (every detector: torchvision's
    outputs and decoded raw outputs alike)."""
    agree = detection_agreement(fp32, quant)
    return {
        "agreement_precision": agree["precision"], "agreement_recall": agree["recall"],
        "agreement_mean_iou": nan_to_none(agree["mean_iou"]),
        "agreement_score_diff": nan_to_none(agree["score_abs_diff_mean"]),
        "count_error_mean": agree["count_error_mean"], "count_error_std": agree["count_error_std"],
    }


def detection_columns(data: Any, fp32: list[dict], quant: list[dict],
                      trained: bool) -> tuple[Columns, Columns]:
    """(agreement with fp32, accuracy) of detections; accuracy only for trained weights."""
    agreement = detection_agreement_columns(fp32, quant)
    if not trained:  # random weights are never reported as an accuracy
        return agreement, {}
    if data.gt is None:  # an image folder: calibration and agreement, no boxes to score
        return agreement, {"accuracy_note": "no annotations: agreement with fp32 only"}
    mapping = getattr(data, "category_map", None)
    return agreement, detector_accuracy(
        data, to_coco_results(data.image_ids, fp32, data.scales, mapping),
        to_coco_results(data.image_ids, quant, data.scales, mapping))


def classification_columns(data: Any, fp32: list, quant: list,
                           trained: bool) -> tuple[Columns, Columns]:
    """(top-1 agreement with fp32, top-1/top-5 accuracy for trained weights) of logits."""
    ref, ours = torch.cat(fp32), torch.cat(quant)
    n = ref.shape[0]
    agreement = {**top1_agreement_columns(ref, ours), "logits_sqnr_db": logits_sqnr(ref, ours)}
    if not trained:
        return agreement, {}
    if data.labels is None:  # "no labels", never a top-1 of 0.000
        return agreement, {"accuracy_note": data.labels_note}
    acc = topk_accuracy(ours, data.labels, ks=(1, 5))
    return agreement, {"top1": acc["top1"], "top5": acc["top5"],
                       **wilson_columns("top1", acc["top1"], n)}


def top1_agreement_columns(ref: torch.Tensor, ours: torch.Tensor) -> Columns:
    """agreement_top1 over every image, and agreement_top1_decided over the images fp32
    decided (decided_images of them), each with its Wilson interval."""
    top1 = classification_agreement(ref, ours)["top1_agreement"]
    decided, n_decided = decided_agreement(ref, ours)
    return {"agreement_top1": top1, **wilson_columns("agreement_top1", top1, ref.shape[0]),
            "agreement_top1_decided": nan_to_none(decided), "decided_images": n_decided,
            **wilson_columns("agreement_top1_decided", decided, n_decided)}


def wilson_columns(name: str, fraction: float, n: int) -> Columns:
    """<name>_ci_low/_ci_high: the 95% Wilson interval of a fraction of n images."""
    ci = None if n == 0 or math.isnan(fraction) else proportion_ci(round(fraction * n), n)
    return {f"{name}_ci_low": ci and ci[0], f"{name}_ci_high": ci and ci[1]}


def detection_quality(agreement: dict) -> float:
    """Panoptic-quality-style agreement: sum of matched IoUs / (matched + (unmatched both
    sides) / 2), i.e. an F1 whose matches count by their IoU. 1.0 only for identical boxes;
    continuous, so one group kept float moves it even when F1 does not."""
    n = agreement["fp32_detections"] + agreement["quant_detections"]
    if n == 0:
        return 1.0
    if agreement["matched"] == 0:
        return 0.0
    return 2.0 * agreement["mean_iou"] * agreement["matched"] / n
