"""Faster R-CNN surgery for static int8: which submodules are quantized, and how they are swapped.

The whole detector cannot be traced (data-dependent NMS), and quantized RoIAlign is slower than
float and batch-1 only (measured). So the traceable parts are quantized one by one:
backbone (body + FPN), RPN head (one level at a time), box head and box predictor. The transform,
anchors, box decoding, RoIAlign and NMS stay float.

The handler passes `prepare`/`convert`, so the quantization API (FX today) is chosen there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.misc import FrozenBatchNorm2d

from worker.models.base import run_task
from worker.quantize.common import matches_keep_float, weight_modules
from worker.quantize.fast_roi_align import install_fast_roi_pool

# prepare(module, example_inputs, names of submodules to keep float) -> observed module
Prepare = Callable[[nn.Module, tuple, list[str]], nn.Module]
Convert = Callable[[nn.Module], nn.Module]

ALWAYS_FLOAT = ("transform (normalize, resize), anchor generation, box decoding and NMS, "
                "and MultiScaleRoIAlign run in float: NMS is data-dependent and quantized "
                "RoIAlign is slower than float and batch-1 only")


def frozen_bn_to_bn(module: nn.Module) -> None:
    """Replace FrozenBatchNorm2d by eval BatchNorm2d with the same statistics, in place.

    FX fusion patterns know BatchNorm2d only; fused conv+bn+relu is what makes int8 fast.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, FrozenBatchNorm2d):
            bn = nn.BatchNorm2d(child.weight.numel(), eps=child.eps)
            with torch.no_grad():
                bn.weight.copy_(child.weight)
                bn.bias.copy_(child.bias)
                bn.running_mean.copy_(child.running_mean)
                bn.running_var.copy_(child.running_var)
            setattr(module, name, bn.eval())
        else:
            frozen_bn_to_bn(child)


class RPNLevel(nn.Module):
    """One FPN level of an RPNHead: traceable, quantized once and shared by every level."""

    def __init__(self, head: RPNHead) -> None:
        super().__init__()
        self.conv = head.conv
        self.cls_logits = head.cls_logits
        self.bbox_pred = head.bbox_pred

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.conv(x)
        return self.cls_logits(t), self.bbox_pred(t)


class PerLevelRPNHead(nn.Module):
    """RPNHead's interface (list of levels in, two lists out) around a one-level module."""

    def __init__(self, level: nn.Module) -> None:
        super().__init__()
        self.level = level

    def forward(self, x: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, boxes = [], []
        for feature in x:
            c, b = self.level(feature)
            logits.append(c)
            boxes.append(b)
        return logits, boxes


class BoxPredictor(nn.Module):
    """FastRCNNPredictor without its shape branch (`if x.dim() == 4` does not trace)."""

    def __init__(self, predictor: FastRCNNPredictor) -> None:
        super().__init__()
        self.cls_score = predictor.cls_score
        self.bbox_pred = predictor.bbox_pred

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


@dataclass
class Part:
    name: str  # qualified name in the detector
    traceable: nn.Module  # children named as in the detector, so names map back
    example: tuple
    install: Callable[[nn.Module], None]


@dataclass
class DetectorResult:
    module: nn.Module
    int8_modules: list[str] = field(default_factory=list)
    float_modules: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _parts(det: nn.Module) -> tuple[list[Part], list[str]]:
    """The quantizable parts a torchvision detector has, and notes on those it lacks."""
    parts: list[Part] = []
    notes: list[str] = []
    backbone = getattr(det, "backbone", None)
    if backbone is None:
        raise ValueError(f"int8_static: {type(det).__name__} has no .backbone; only torchvision "
                         "detectors with a backbone (Faster R-CNN family) are supported")
    channels = getattr(backbone, "out_channels", 256)
    parts.append(Part("backbone", backbone, (torch.rand(1, 3, 64, 64),),
                      lambda m: setattr(det, "backbone", m)))
    rpn = getattr(det, "rpn", None)
    if rpn is not None and isinstance(rpn.head, RPNHead):
        parts.append(Part("rpn.head", RPNLevel(rpn.head), (torch.rand(1, channels, 16, 16),),
                          lambda m: setattr(rpn, "head", PerLevelRPNHead(m))))
    elif rpn is not None:
        notes.append(f"rpn.head ({type(rpn.head).__name__}) stays float: not an RPNHead")
    roi = getattr(det, "roi_heads", None)
    if roi is not None:
        out = roi.box_roi_pool.output_size
        hw = (out, out) if isinstance(out, int) else tuple(out)
        flat = getattr(roi.box_roi_pool, "flat", False)  # FastMultiScaleRoIAlign's layout
        example = torch.rand(2, channels * hw[0] * hw[1]) if flat else torch.rand(2, channels, *hw)
        parts.append(Part("roi_heads.box_head", roi.box_head, (example,),
                          lambda m: setattr(roi, "box_head", m)))
        if isinstance(roi.box_predictor, FastRCNNPredictor):
            pred = BoxPredictor(roi.box_predictor)
            parts.append(Part("roi_heads.box_predictor", pred,
                              (torch.rand(2, pred.cls_score.in_features),),
                              lambda m: setattr(roi, "box_predictor", m)))
        else:
            notes.append("roi_heads.box_predictor stays float: not a FastRCNNPredictor")
        for extra in ("mask_head", "mask_predictor", "keypoint_head", "keypoint_predictor"):
            if getattr(roi, extra, None) is not None:
                notes.append(f"roi_heads.{extra} stays float: not handled by int8_static")
    else:
        notes.append(f"{type(det).__name__} has no roi_heads: only the backbone is quantized")
    return parts, notes


def quantize_detector(module: nn.Module, prepare: Prepare, convert: Convert,
                      batches: Iterable[torch.Tensor], keep_float: list[str]) -> DetectorResult:
    """A quantized copy of a torchvision detector; `module` itself is left untouched."""
    det = copy.deepcopy(module).eval()
    frozen_bn_to_bn(det)
    fast_pool = install_fast_roi_pool(det)
    parts, notes = _parts(det)
    result = DetectorResult(det, notes=[ALWAYS_FLOAT, *notes, *([fast_pool] if fast_pool else [])])
    observed: list[tuple[Part, nn.Module]] = []
    for part in parts:
        pattern = matches_keep_float(part.name, keep_float)
        if pattern:
            result.float_modules += weight_modules(part.traceable, part.name)[1]
            result.notes.append(f"{part.name} kept float (keep_float {pattern!r})")
            continue
        skip = []
        for name, _ in part.traceable.named_modules():
            sub_pattern = name and matches_keep_float(f"{part.name}.{name}", keep_float)
            if sub_pattern and not any(name.startswith(s + ".") for s in skip):
                skip.append(name)
                result.notes.append(f"{part.name}.{name} kept float (keep_float {sub_pattern!r})")
        obs = prepare(part.traceable, part.example, skip)
        part.install(obs)
        observed.append((part, obs))

    # One pass of the whole detector calibrates every part on the inputs it really gets.
    n = 0
    for batch in batches:
        run_task("detection", det, batch)
        n += batch.shape[0]
    if observed and n == 0:
        raise ValueError("int8_static: calibration yielded no images")

    for part, obs in observed:
        quantized = convert(obs)
        part.install(quantized)
        int8, floats = weight_modules(quantized, part.name)
        result.int8_modules += int8
        result.float_modules += floats
    done = {p.name for p in parts}
    rest = [n for n in weight_modules(det)[1]
            if not any(n == d or n.startswith(d + ".") for d in done)]
    result.float_modules += rest
    return result
