"""Decoders: a batch's raw outputs -> per image {boxes xyxy (input pixels), scores, labels}.

Every decoder ends in the same class-wise NMS (torchvision.ops.batched_nms) with the manifest's
thresholds, except `torchvision`, whose model has already run its own NMS.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import batched_nms, box_convert

from qbench.decode.spec import OutputsSpec

Detections = dict[str, torch.Tensor]


class DecodeError(ValueError):
    """Outputs that do not have the layout the manifest's decoder expects (one line)."""


def _as_list(outputs) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return list(outputs.values())
    return [torch.as_tensor(o) for o in outputs]


def _empty() -> Detections:
    return {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64)}


def nms(boxes: torch.Tensor, scores: torch.Tensor, spec: OutputsSpec) -> Detections:
    """Class-wise NMS of candidates: boxes [N, 4] xyxy, scores [N, C] (every class a candidate)."""
    keep_idx, labels = (scores > spec.score_threshold).nonzero(as_tuple=True)
    if keep_idx.numel() == 0:
        return _empty()
    b, s = boxes[keep_idx].float(), scores[keep_idx, labels].float()
    # bound the candidates NMS sees, as the libraries' own post-processing does
    if s.numel() > 30_000:
        top = s.topk(30_000).indices
        b, s, labels = b[top], s[top], labels[top]
    kept = batched_nms(b, s, labels, spec.iou_threshold)[: spec.max_detections]
    return {"boxes": b[kept], "scores": s[kept], "labels": labels[kept].to(torch.int64)}


def decode_ultralytics(outputs, spec: OutputsSpec) -> list[Detections]:
    (pred, *_) = _as_list(outputs)
    if pred.dim() != 3 or pred.shape[1] < 5:
        raise DecodeError(f"outputs.decoder ultralytics expects one [B, 4 + classes, anchors] "
                          f"tensor, got {list(pred.shape)}")
    pred = pred.float().transpose(1, 2)  # [B, anchors, 4 + C]
    return [nms(box_convert(p[:, :4], "cxcywh", "xyxy"), p[:, 4:], spec) for p in pred]


def _ssd_pair(outs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(outs) != 2 or any(o.dim() != 3 for o in outs):
        raise DecodeError("outputs.decoder ssd expects two outputs, boxes [B, N, 4] and scores "
                          f"[B, N, C]; got {[list(o.shape) for o in outs]}")
    boxes, scores = outs
    if boxes.shape[-1] != 4 and scores.shape[-1] == 4:
        boxes, scores = scores, boxes
    if boxes.shape[-1] != 4 or boxes.shape[:2] != scores.shape[:2]:
        raise DecodeError("outputs.decoder ssd expects boxes [B, N, 4] and scores [B, N, C] with "
                          f"the same B and N; got {list(boxes.shape)} and {list(scores.shape)}")
    return boxes, scores


def decode_ssd(outputs, spec: OutputsSpec, input_size: tuple[int, int]) -> list[Detections]:
    boxes, scores = _ssd_pair(_as_list(outputs))
    h, w = input_size
    dets = []
    for b, s in zip(boxes.float(), scores.float(), strict=True):
        if spec.box_format != "xyxy":
            b = box_convert(b, spec.box_format, "xyxy")
        if spec.normalized_boxes:
            b = b * torch.tensor([w, h, w, h], dtype=b.dtype)
        det = nms(b, s[:, 1:] if spec.background_class else s, spec)
        if spec.background_class:  # label indices keep counting the background as 0
            det["labels"] = det["labels"] + 1
        dets.append(det)
    return dets


def gfl_levels(outs: list[torch.Tensor], spec: OutputsSpec) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(scores [B, N_l, C], distributions [B, N_l, 4(reg_max+1)]) per stride, finest first."""
    bins = 4 * (spec.reg_max + 1)
    if any(o.dim() != 3 for o in outs):
        raise DecodeError(f"outputs.decoder gfl expects rank-3 outputs [B, N, C] per stride; got "
                          f"{[list(o.shape) for o in outs]}")
    dists = [o for o in outs if o.shape[-1] == bins]
    scores = [o for o in outs if o.shape[-1] != bins]
    if len(dists) != len(spec.strides) or len(scores) != len(spec.strides):
        raise DecodeError(f"outputs.decoder gfl with strides {list(spec.strides)} and reg_max "
                          f"{spec.reg_max} expects {len(spec.strides)} score and "
                          f"{len(spec.strides)} distribution ([.., {bins}]) outputs; got "
                          f"{[list(o.shape) for o in outs]}")
    by_size = lambda ts: sorted(ts, key=lambda t: -t.shape[1])  # noqa: E731
    return list(zip(by_size(scores), by_size(dists), strict=True))


def gfl_points(stride: int, count: int, input_size: tuple[int, int]) -> torch.Tensor:
    """Cell centres (x, y) of one stride's grid, row-major, in input pixels."""
    h, w = input_size
    fh, fw = -(-h // stride), -(-w // stride)
    if fh * fw != count:
        raise DecodeError(f"outputs.decoder gfl: stride {stride} on a {h}x{w} input gives "
                          f"{fh}x{fw} = {fh * fw} cells, the output has {count}")
    ys, xs = torch.meshgrid(torch.arange(fh), torch.arange(fw), indexing="ij")
    return (torch.stack([xs.flatten(), ys.flatten()], 1).float() + 0.5) * stride


def decode_gfl(outputs, spec: OutputsSpec, input_size: tuple[int, int]) -> list[Detections]:
    levels = gfl_levels(_as_list(outputs), spec)
    project = torch.arange(spec.reg_max + 1, dtype=torch.float32)
    all_boxes, all_scores = [], []
    for stride, (scores, dists) in zip(spec.strides, levels, strict=True):
        b, n, _ = dists.shape
        centre = gfl_points(stride, n, input_size)
        prob = dists.float().reshape(b, n, 4, spec.reg_max + 1).softmax(-1)
        ltrb = (prob @ project) * stride  # [B, N, 4]: distances left, top, right, bottom
        boxes = torch.cat([centre - ltrb[..., :2], centre + ltrb[..., 2:]], -1)
        all_boxes.append(boxes)
        all_scores.append(scores.float())
    boxes, scores = torch.cat(all_boxes, 1), torch.cat(all_scores, 1)
    return [nms(b, s, spec) for b, s in zip(boxes, scores, strict=True)]


def decode_torchvision(outputs, spec: OutputsSpec, names: Sequence[str] | None = None) -> list[Detections]:
    """One image's (or a batch of one's) boxes, labels, scores; matched by name, else by order."""
    outs = _as_list(outputs)
    if isinstance(outputs, dict):
        names = list(outputs.keys())
    if len(outs) != 3:
        raise DecodeError(f"outputs.decoder torchvision expects three outputs (boxes, labels, "
                          f"scores); got {len(outs)}")
    order = ["boxes", "labels", "scores"]
    if names and set(order) <= set(names):
        outs = [outs[list(names).index(k)] for k in order]
    boxes, labels, scores = (o[0] if o.dim() == (3 if k == "boxes" else 2) else o
                             for o, k in zip(outs, order, strict=True))
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != scores.shape:
        raise DecodeError(f"outputs.decoder torchvision expects boxes [N, 4], labels [N], scores "
                          f"[N]; got {[list(o.shape) for o in outs]}")
    keep = scores.float() >= spec.score_threshold
    return [{"boxes": boxes[keep].float(), "scores": scores[keep].float(),
             "labels": labels[keep].to(torch.int64)}]


def decode(outputs, spec: OutputsSpec, input_size: tuple[int, int],
           names: Sequence[str] | None = None) -> list[Detections]:
    """The batch's detections by the manifest's decoder (boxes in model-input pixels)."""
    if spec.decoder == "ultralytics":
        return decode_ultralytics(outputs, spec)
    if spec.decoder == "ssd":
        return decode_ssd(outputs, spec, input_size)
    if spec.decoder == "gfl":
        return decode_gfl(outputs, spec, input_size)
    if spec.decoder == "torchvision":
        if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
            return [decode_torchvision(o, spec)[0] for o in outputs]  # a torch detector's list
        return decode_torchvision(outputs, spec, names)
    raise DecodeError(f"outputs.decoder: unknown decoder {spec.decoder!r}")
