"""Final outputs of fp32 and quantized models as value pairs for the hexbin plots."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from worker.evaluate.agreement import match
from worker.models.base import Task

Pairs = dict[str, tuple[np.ndarray, np.ndarray]]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().reshape(-1).numpy()


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [t for v in value for t in _tensors(v)] if isinstance(value, (list, tuple)) else []


def output_pairs(task: Task, fp32: Any, quant: Any, iou_threshold: float = 0.5) -> Pairs:
    """Classifier: logits. Detector: scores and box coordinates (px) of detections matched
    one to one across the two models (same label, IoU >= iou_threshold)."""
    if task == "classification":
        return {"logits": (_np(fp32), _np(quant))}
    if not (isinstance(fp32, list) and fp32 and isinstance(fp32[0], dict)):  # YOLO: raw tensors
        return {"network outputs": (np.concatenate([_np(t) for t in _tensors(fp32)]),
                                    np.concatenate([_np(t) for t in _tensors(quant)]))}
    scores: list[tuple[np.ndarray, np.ndarray]] = []
    boxes: list[tuple[np.ndarray, np.ndarray]] = []
    for ref, cand in zip(fp32, quant, strict=True):
        ref = {k: v.detach().cpu() for k, v in ref.items()}
        cand = {k: v.detach().cpu() for k, v in cand.items()}
        pairs = match(ref, cand, iou_threshold)
        if not pairs:
            continue
        ci = torch.tensor([p[0] for p in pairs])
        ri = torch.tensor([p[1] for p in pairs])
        scores.append((_np(ref["scores"][ri]), _np(cand["scores"][ci])))
        boxes.append((_np(ref["boxes"][ri]), _np(cand["boxes"][ci])))

    def cat(items: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        if not items:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        return np.concatenate([a for a, _ in items]), np.concatenate([b for _, b in items])

    return {"detection scores (matched)": cat(scores), "box coordinates (px, matched)": cat(boxes)}
