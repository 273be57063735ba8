"""How closely a quantized model reproduces its fp32 original on the same images.

Needs no ground truth: the fp32 detections are the reference, so it works for any input.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from qbench.tensors import tensors_of

Detections = dict[str, torch.Tensor]  # torchvision output: boxes (N,4 xyxy), scores, labels


def _keep(det: Detections, score_threshold: float) -> Detections:
    m = det["scores"].detach().float().cpu() >= score_threshold
    return {k: det[k].detach().cpu()[m] for k in ("boxes", "scores", "labels")}


def match(ref: Detections, cand: Detections, iou_threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching (cand index, ref index, IoU), same label and IoU >= threshold.

    Candidates claim references in descending score order, each taking its highest-IoU
    free reference, like COCO's matching.
    """
    if len(ref["boxes"]) == 0 or len(cand["boxes"]) == 0:
        return []
    iou = box_iou(cand["boxes"].float(), ref["boxes"].float())
    iou[cand["labels"][:, None] != ref["labels"][None, :]] = -1.0
    taken = torch.zeros(len(ref["boxes"]), dtype=torch.bool)
    pairs = []
    for i in torch.argsort(cand["scores"].float(), descending=True, stable=True).tolist():
        row = iou[i].masked_fill(taken, -1.0)
        j = int(row.argmax())
        if row[j] >= iou_threshold:
            taken[j] = True
            pairs.append((i, j, float(row[j])))
    return pairs


def _ratio(num: int, den: int, empty_both: bool) -> float:
    # Nothing to match on either side counts as full agreement; one empty side as none.
    return num / den if den else float(empty_both)


def detection_agreement(
    fp32: list[Detections],
    quant: list[Detections],
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Agreement of per-image quantized detections with the fp32 ones (same image order).

    precision: share of quantized detections matching an fp32 one; recall: share of fp32
    detections reproduced. count_error: per image |n_q - n_fp32| / max(n_fp32, 1), reported
    as mean and population std over images ("error margin +- std").
    """
    if len(fp32) != len(quant):
        raise ValueError(f"fp32 has {len(fp32)} images but quantized has {len(quant)}")
    matched = n_ref = n_cand = 0
    ious, score_diffs, count_err = [], [], []
    for ref_all, cand_all in zip(fp32, quant, strict=True):
        ref, cand = _keep(ref_all, score_threshold), _keep(cand_all, score_threshold)
        pairs = match(ref, cand, iou_threshold)
        matched += len(pairs)
        n_ref += len(ref["scores"])
        n_cand += len(cand["scores"])
        for i, j, iou in pairs:
            ious.append(iou)
            score_diffs.append(abs(float(cand["scores"][i]) - float(ref["scores"][j])))
        count_err.append(abs(len(cand["scores"]) - len(ref["scores"])) / max(len(ref["scores"]), 1))
    precision = _ratio(matched, n_cand, n_ref == 0)
    recall = _ratio(matched, n_ref, n_cand == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "mean_iou": float(np.mean(ious)) if ious else math.nan,
        "score_abs_diff_mean": float(np.mean(score_diffs)) if score_diffs else math.nan,
        "count_error_mean": float(np.mean(count_err)) if count_err else math.nan,
        "count_error_std": float(np.std(count_err)) if count_err else math.nan,
        "matched": matched,
        "fp32_detections": n_ref,
        "quant_detections": n_cand,
        "images": len(fp32),
        "score_threshold": score_threshold,
        "iou_threshold": iou_threshold,
    }


def classification_agreement(fp32_logits: torch.Tensor, quant_logits: torch.Tensor) -> dict[str, float]:
    """Top-1 agreement and mean cosine similarity of logits (computed in float32)."""
    a, b = fp32_logits.detach().float().flatten(1), quant_logits.detach().float().flatten(1)
    if a.shape != b.shape:
        raise ValueError(f"logit shapes differ: fp32 {tuple(a.shape)} vs quantized {tuple(b.shape)}")
    if a.shape[0] == 0:
        return {"top1_agreement": math.nan, "cosine_mean": math.nan}
    return {
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).float().mean()),
        "cosine_mean": float(F.cosine_similarity(a, b, dim=1).mean()),
    }


# fp32's top class must lead its runner-up by this much softmax probability for an image to
# count as decided: a flip on an image fp32 itself barely resolved is a near-tie broken, which
# even bf16 rounding does (measured on MobileNetV2 and real photos: every view bf16 or int8
# flipped had a margin under 0.11, one in ten views had one under 0.05)
DECIDED_MARGIN = 0.1


def decided_agreement(fp32_logits: torch.Tensor, quant_logits: torch.Tensor) -> tuple[float, int]:
    """(top-1 agreement on the images fp32 decided, how many it decided); outputs already
    probabilities (non-negative, rows summing to 1) are taken as they are."""
    a, b = fp32_logits.detach().float().flatten(1), quant_logits.detach().float().flatten(1)
    if a.shape[0] == 0 or a.shape[1] < 2:
        return math.nan, 0
    is_probability = bool((a >= 0).all()) and torch.allclose(a.sum(1), torch.ones(a.shape[0]),
                                                             atol=1e-3)
    top2 = (a if is_probability else a.softmax(1)).topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) >= DECIDED_MARGIN
    n = int(decided.sum())
    if n == 0:
        return math.nan, 0
    return float((a.argmax(1) == b.argmax(1))[decided].float().mean()), n


def outputs_cosine(fp32: Any, quant: Any) -> float:
    """Mean over images of the cosine similarity of all of an image's outputs flattened
    together: `fp32` and `quant` a [N, ...] tensor or a nest of them (an ONNX file's outputs)."""
    def rows(value: Any) -> torch.Tensor:
        return torch.cat([t.detach().float().flatten(1) for t in tensors_of(value)], 1)

    return classification_agreement(rows(fp32), rows(quant))["cosine_mean"]
