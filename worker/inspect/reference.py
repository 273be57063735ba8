"""The fp32 side of an inspection, built with the same structure as the quantized model.

FX int8 fuses conv+bn+relu (and linear+relu) into one module named after the conv: its
output is the block's output, not the conv's. Comparing it with the fp32 conv would count
BN and ReLU as quantization error. So for FX-quantized models the reference is the fp32
model put through the same surgery and FX fusion, without quantization: numerically the fp32
model (BN folded in float), with every fused module under the same name as in the int8 model.
Other modes (bf16, fp16, int8_dynamic) keep the fp32 module structure: the reference is the
fp32 model itself.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.ao.quantization.quantize_fx import fuse_fx

from worker.models.base import LoadedModel
from worker.quantize.detection_parts import frozen_bn_to_bn, quantize_detector
from worker.quantize.submodules import quantize_submodules, submodule_roots

# The parts quantize_detector quantizes one by one (detection_parts._parts).
DETECTOR_PARTS = ("backbone", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor")


def has_fx(module: nn.Module) -> bool:
    return any(isinstance(m, fx.GraphModule) for m in module.modules())


def _fuse(module: nn.Module, _example: tuple, _skip: list[str]) -> nn.Module:
    return fuse_fx(module.eval())


def _float_parts(quant: nn.Module) -> list[str]:
    """Detector parts the quantized model left untouched (kept float as a whole)."""
    kept = []
    for path in DETECTOR_PARTS:
        try:
            part = quant.get_submodule(path)
        except AttributeError:
            continue
        if not has_fx(part):
            kept.append(path)
    return kept


def float_reference(loaded: LoadedModel, quant: nn.Module, images: torch.Tensor) -> nn.Module:
    """A float model whose layer names and boundaries match `quant`'s."""
    if not has_fx(quant):
        return loaded.module
    if loaded.task == "detection" and hasattr(loaded.module, "roi_heads"):
        # One forward pass is quantize_detector's calibration step; here it only runs.
        return quantize_detector(loaded.module, _fuse, lambda m: m, [images[:1]],
                                 _float_parts(quant)).module.eval()
    if loaded.task != "classification":  # YOLO, RetinaNet, SSD: quantized part by part
        return quantize_submodules(loaded.module, loaded.task,
                                   submodule_roots(loaded.task, loaded.module), _fuse,
                                   lambda m: m, [images[:1]], []).module.eval()
    module = copy.deepcopy(loaded.module).eval()
    frozen_bn_to_bn(module)
    return fuse_fx(module).eval()
