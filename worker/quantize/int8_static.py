"""int8_static: post-training static int8 with torch.ao FX on the x86 backend (CPU).

Base: the x86 backend's own QConfigMapping (hand-made qconfigs without reduce_range gave 0%
agreement when measured); only the activation observer (calibration.method) and the
weight granularity (calibration.per_channel) are changed. FX was picked over PT2E for speed
(PT2E was no faster than compiled fp32); `_prepare`/`_convert` are the only FX-specific code.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.ao.quantization import (
    HistogramObserver,
    MinMaxObserver,
    PerChannelMinMaxObserver,
    QConfig,
    QConfigMapping,
    get_default_qconfig_mapping,
)
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from worker.models.base import LoadedModel
from worker.quantize.common import (
    matches_keep_float,
    torch_quantized,
    weight_modules,
)
from worker.quantize.detection_parts import frozen_bn_to_bn, quantize_detector
from worker.quantize.registry import Quantized, QuantizeRequest, register
from worker.quantize.submodules import quantize_submodules, submodule_roots

if TYPE_CHECKING:
    from worker.manifest import CalibrationSpec

BACKEND = "x86"


class PercentileObserver(HistogramObserver):
    """Histogram observer whose range is the [100-p, p] percentiles instead of an L2 search.

    torch.ao has no percentile observer; clipping rare outliers is what helped detectors most
    when measured (minmax -8.2 mAP, percentile 99.99 -2.7).
    """

    def __init__(self, percentile: float = 99.99, **kwargs) -> None:
        super().__init__(**kwargs)
        self.percentile = percentile

    def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
        cdf = torch.cumsum(self.histogram, 0) / self.histogram.sum().clamp(min=1)
        q = self.percentile / 100.0
        lo_bin = int(torch.searchsorted(cdf, torch.tensor(1.0 - q)).clamp(max=self.bins - 1))
        hi_bin = int(torch.searchsorted(cdf, torch.tensor(q)).clamp(max=self.bins - 1))
        width = (self.max_val - self.min_val) / self.bins
        return self.min_val + width * lo_bin, self.min_val + width * (hi_bin + 1)


def _activation_observer(spec: CalibrationSpec):
    # reduce_range as in the x86 default: 7-bit activations avoid int16 overflow in the kernels.
    if spec.method == "minmax":
        return MinMaxObserver.with_args(reduce_range=True)
    if spec.method == "percentile":
        return PercentileObserver.with_args(percentile=spec.percentile, reduce_range=True)
    return HistogramObserver.with_args(reduce_range=True)


def qconfig_mapping(spec: CalibrationSpec) -> QConfigMapping:
    """The x86 default mapping with the requested observer and weight granularity."""
    mapping = get_default_qconfig_mapping(BACKEND)
    activation = _activation_observer(spec)
    weight = (PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                 qscheme=torch.per_channel_symmetric)
              if spec.per_channel else
              MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric))
    mapping.set_global(QConfig(activation=activation, weight=weight))
    # Entries that use the default histogram (layer_norm, conv_transpose) follow the method too;
    # fixed-qparams entries (sigmoid, hardsigmoid, tanh, softmax) stay as they are.
    for key, qc in list(mapping.object_type_qconfigs.items()):
        if qc is not None and type(qc.activation()) is HistogramObserver:
            mapping.set_object_type(key, QConfig(activation=activation, weight=qc.weight))
    return mapping


def _prepare(spec: CalibrationSpec):
    def prepare(module: nn.Module, example: tuple, keep_float: list[str]) -> nn.Module:
        mapping = qconfig_mapping(spec)
        for name in keep_float:
            mapping.set_module_name(name, None)
        return prepare_fx(module.eval(), mapping, example)
    return prepare


def _convert(observed: nn.Module) -> nn.Module:
    return convert_fx(observed).eval()


def _quantize_classifier(model: LoadedModel, request: QuantizeRequest):
    module = copy.deepcopy(model.module).eval()
    frozen_bn_to_bn(module)
    keep: dict[str, str] = {}
    for name, _ in module.named_modules():
        pattern = name and matches_keep_float(name, request.keep_float)
        if pattern and not any(name.startswith(k + ".") for k in keep):
            keep[name] = pattern
    example = (torch.rand(1, 3, *model.input_size),)
    observed = _prepare(request.calibration)(module, example, list(keep))
    n = 0
    with torch.no_grad():
        for batch in request.calibration_batches():
            observed(batch)
            n += batch.shape[0]
    if n == 0:
        raise ValueError("int8_static: calibration yielded no images")
    quantized = _convert(observed)
    int8, floats = weight_modules(quantized)
    notes = [f"{n} kept float (keep_float {p!r})" for n, p in keep.items()]
    return quantized, int8, floats, notes


# Image by image beats a batch once one image's largest feature map outgrows the caches: an
# R50-FPN at 800 px (10.2M elements at stride 4) ran 10% faster per image on a batch of 4;
# MobileNet FPNs at 320-512 px (under 1M) and the 256 px fixture were up to 2.5x slower.
PER_IMAGE_ELEMENTS = 8_000_000


def _per_image(module: nn.Module, request: QuantizeRequest) -> tuple[bool, str]:
    """Whether a detector's batch should run image by image, from one image's feature maps."""
    image = next(iter(request.calibration_batches()))[:1]
    with torch.inference_mode():
        feats = module.backbone(module.transform(list(image))[0].tensors)
    largest = max(f.numel() for f in (feats.values() if isinstance(feats, dict) else [feats]))
    per_image = largest >= PER_IMAGE_ELEMENTS
    how = "image by image" if per_image else "batched"
    return per_image, (f"a batch runs {how} (largest feature map {largest / 1e6:.1f}M elements "
                       f"per image; per image from {PER_IMAGE_ELEMENTS / 1e6:.0f}M)")


@register("int8_static", devices=("cpu",), needs_calibration=True,
          description="post-training static int8 (torch.ao FX, x86 backend)")
def quantize_int8_static(model: LoadedModel, request: QuantizeRequest) -> Quantized:
    torch.backends.quantized.engine = BACKEND  # packed weights are built for this engine
    prepare = _prepare(request.calibration)
    if model.task == "detection" and hasattr(model.module, "roi_heads"):
        res = quantize_detector(model.module, prepare, _convert, request.calibration_batches(),
                                request.keep_float)
        module, int8, floats, notes = res.module, res.int8_modules, res.float_modules, res.notes
    elif model.task == "classification":
        module, int8, floats, notes = _quantize_classifier(model, request)
    else:  # RetinaNet, SSD, YOLO: FX cannot trace them whole
        res = quantize_submodules(model.module, model.task,
                                  submodule_roots(model.task, model.module), prepare, _convert,
                                  request.calibration_batches(), request.keep_float)
        module, int8, floats, notes = res.module, res.int8_modules, res.float_modules, res.notes
        if model.task == "detection":
            notes.insert(0, "transform, anchors, box decoding and NMS stay float")
    spec = request.calibration
    notes.append(f"calibration: {spec.method}"
                 + (f" p{spec.percentile}" if spec.method == "percentile" else "")
                 + (", per-channel weights" if spec.per_channel else ", per-tensor weights"))
    per_image = False
    if model.task == "detection":
        per_image, note = _per_image(module, request)
        notes.append(note)
    return torch_quantized(model, module, "torch-fx-x86", "cpu", int8_modules=int8,
                           float_modules=floats, notes=notes, per_image=per_image)
