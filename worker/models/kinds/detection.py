"""torchvision detectors (Faster R-CNN family, RetinaNet, FCOS, SSD): a list of CHW images in,
a list of {boxes, labels, scores} dicts out, one per image.

int8_static: a Faster R-CNN's backbone (body + FPN), RPN head (one level at a time), box head
and box predictor are quantized as separate graphs; the whole detector cannot be traced
(data-dependent NMS) and quantized RoIAlign is slower than float and batch-1 only (measured).
Single-stage detectors are quantized submodule by submodule from their backbone and head.
The transform, anchors, box decoding, RoIAlign and NMS stay float. Accuracy is pycocotools
mAP on a COCO dataset; agreement matches detections one to one across the two models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead

from qbench.models.kinds.base import Pairs, Part, PartPlan, TaskKind, _flat_np

# Where a torchvision detector keeps its weights; the glue between them stays float32.
DETECTOR_PARTS = ("backbone", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor", "head")
OUTPUTS = ("boxes", "labels", "scores")

ALWAYS_FLOAT = ("transform (normalize, resize), anchor generation, box decoding and NMS, "
                "and MultiScaleRoIAlign run in float: NMS is data-dependent and quantized "
                "RoIAlign is slower than float and batch-1 only")

# Image by image beats a batch once one image's largest feature map outgrows the caches: an
# R50-FPN at 800 px (10.2M elements at stride 4) ran 10% faster per image on a batch of 4;
# MobileNet FPNs at 320-512 px (under 1M) and the 256 px fixture were up to 2.5x slower.
PER_IMAGE_ELEMENTS = 8_000_000


class RPNLevel(nn.Module):
    """One FPN level of an RPNHead: traceable, quantized once and shared by every level."""

    def default_preprocess(self, arch: str | None) -> Any:
        from qbench.preprocess.defaults import Resolved
        from qbench.preprocess.spec import PreprocessSpec

        # torchvision detectors normalise and resize inside the model
        return Resolved(PreprocessSpec(), "default: detector's internal transform ([0, 1] RGB)")

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


def rcnn_parts(det: nn.Module) -> PartPlan:
    """The quantizable parts of a two-stage torchvision detector, and notes on those it lacks."""
    from qbench.quantize.fast_roi_align import install_fast_roi_pool

    backbone = getattr(det, "backbone", None)
    if backbone is None:
        raise ValueError(f"int8_static: {type(det).__name__} has no .backbone; only torchvision "
                         "detectors with a backbone (Faster R-CNN family) are supported")
    fast_pool = install_fast_roi_pool(det)
    parts: list[Part] = []
    notes: list[str] = []
    channels = getattr(backbone, "out_channels", 256)
    parts.append(Part("backbone", backbone, (torch.rand(1, 3, 64, 64),),
                      lambda m: setattr(det, "backbone", m)))
    rpn = getattr(det, "rpn", None)
    if rpn is not None and isinstance(rpn.head, RPNHead):
        parts.append(Part("rpn.head", RPNLevel(rpn.head), (torch.rand(1, channels, 16, 16),),
                          lambda m: setattr(rpn, "head", PerLevelRPNHead(m))))
    elif rpn is not None:
        notes.append(f"rpn.head ({type(rpn.head).__name__}) stays float: not an RPNHead")
    roi = det.roi_heads
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
    return PartPlan(parts, [ALWAYS_FLOAT, *notes, *([fast_pool] if fast_pool else [])])


class Detection(TaskKind):
    name = "detection"
    default_classes = 91
    dataset_formats = ("coco", "imagefolder")
    labels_are_category_ids = True
    scores_map = True
    agreement_name = "detection agreement with fp32"
    group_depth = 3  # backbone.body.layer1, rpn.head.conv, roi_heads.box_head.fc6, ...
    onnx_per_image = True
    traceable_whole = False  # a traced detector would freeze its NMS to the example image
    teacher_forcing = True
    resizes_inside = True
    ort_output_names = OUTPUTS

    def call(self, module: nn.Module, batch: torch.Tensor) -> Any:
        # torchvision detectors take a list of CHW images and return a list of dicts.
        return module(list(batch.unbind(0)))

    def run(self, module: nn.Module, batch: torch.Tensor, per_image: bool = False) -> Any:
        run = super().run  # zero-argument super() does not work inside a comprehension
        if per_image:
            return [d for image in batch.split(1) for d in run(module, image)]
        return run(module, batch)

    def per_image_outputs(self, result: Any) -> list[Any]:
        return [{k: v.detach().float().cpu() for k, v in o.items()} for o in result]

    def program_outputs(self, program: torch.jit.ScriptModule, batch: torch.Tensor) -> Any:
        return program(list(batch.unbind(0)))[1]  # a scripted detector returns (losses, dets)

    def ort_outputs(self, runs: list[list[np.ndarray]], names: list[str],
                    has_batch_dim: bool) -> Any:
        return [{k: torch.from_numpy(out[names.index(k)]) for k in OUTPUTS} for out in runs]

    def torchscript_usage(self, file: str) -> str:
        return (f"import torch, torchvision  # torchvision registers nms/roi_align\n"
                f"model = torch.jit.load({file!r})\n"
                "losses, detections = model([image])  # image: float32 [3, H, W] in [0, 1]; "
                "detections: [{'boxes', 'labels', 'scores'}]")

    def onnx_usage(self, input_name: str) -> str:
        return (f"boxes, labels, scores = session.run(None, {{{input_name!r}: image}})  "
                "# one image: float32 numpy [3, H, W] in [0, 1]")

    def output_pairs(self, fp32: Any, quant: Any, iou_threshold: float = 0.5) -> Pairs:
        """Scores and box coordinates (px) of detections matched one to one across the two
        models (same label, IoU >= iou_threshold)."""
        from qbench.evaluate.agreement import match

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
            scores.append((_flat_np(ref["scores"][ri]), _flat_np(cand["scores"][ci])))
            boxes.append((_flat_np(ref["boxes"][ri]), _flat_np(cand["boxes"][ci])))

        def cat(items: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
            if not items:
                return np.zeros(0, np.float32), np.zeros(0, np.float32)
            return np.concatenate([a for a, _ in items]), np.concatenate([b for _, b in items])

        return {"detection scores (matched)": cat(scores),
                "box coordinates (px, matched)": cat(boxes)}

    def agreement_score(self, reference: Any, out: Any, score_threshold: float = 0.5) -> float:
        """detection_quality of detections with scores >= score_threshold."""
        from qbench.evaluate.agreement import detection_agreement
        from qbench.evaluate.scores import detection_quality

        return detection_quality(detection_agreement(reference, out, score_threshold))

    def static_parts(self, model: nn.Module, input_size: tuple[int, int]) -> PartPlan:
        if hasattr(model, "roi_heads"):
            return rcnn_parts(model)
        # RetinaNet, FCOS, SSD: FX cannot trace them whole; anchors and postprocessing stay float.
        roots = [r for r in ("backbone", "head") if hasattr(model, r)]
        return PartPlan([Part(r, model.get_submodule(r), split=True) for r in roots],
                        ["transform, anchors, box decoding and NMS stay float"],
                        separate_graphs=True)

    def low_precision_parts(self, module: nn.Module) -> tuple[tuple[str, ...], str]:
        return DETECTOR_PARTS, ("the transform, anchors, RoIAlign, box decoding and NMS stay "
                                "float32 (NMS has no bf16 kernel)")

    def ort_int8_scope(self, module: nn.Module) -> tuple[tuple[str, ...], str]:
        names = {n for n, _ in module.named_modules() if n}
        parts = [p for p in DETECTOR_PARTS if p in names]
        roi = "RoIAlign, " if hasattr(module, "roi_heads") else ""
        return DETECTOR_PARTS, (f"int8 only inside {', '.join(parts)}; transform, anchors, "
                                f"{roi}box decoding and NMS stay float")

    def batch_plan(self, module: nn.Module, first_image: Callable[[], torch.Tensor]
                   ) -> tuple[bool, str] | None:
        """Image by image when one image's largest feature map is past PER_IMAGE_ELEMENTS."""
        image = first_image()
        with torch.inference_mode():
            feats = module.backbone(module.transform(list(image))[0].tensors)
        largest = max(f.numel() for f in (feats.values() if isinstance(feats, dict) else [feats]))
        per_image = largest >= PER_IMAGE_ELEMENTS
        how = "image by image" if per_image else "batched"
        return per_image, (f"a batch runs {how} (largest feature map {largest / 1e6:.1f}M "
                           f"elements per image; per image from {PER_IMAGE_ELEMENTS / 1e6:.0f}M)")

    def evaluation_columns(self, data: Any, fp32: list[Any], quant: list[Any],
                           trained: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        from qbench.evaluate.scores import detection_columns

        return detection_columns(data, fp32, quant, trained)


DETECTION = Detection()
