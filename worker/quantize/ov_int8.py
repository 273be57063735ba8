"""ov_int8: NNCF post-training int8 of the OpenVINO model, on the job's calibration images.

The calibration images are fed through the model's own preprocessing (the request's batches),
one feed per image or batch exactly as the benchmark feeds it. The manifest's calibration block
maps onto NNCF: method minmax -> min/max ranges, mean_minmax -> NNCF's own default (the mean of
each feed's min and max per tensor), histogram -> NNCF's histogram search,
percentile -> the mean per-image quantile at 1 - percentile/100; per_channel -> per-channel
weights; bias_correction -> NNCF's fast bias correction (true or "fast": each layer's own
offset) or its BiasCorrection ("full": offsets measured through the int8 model, so each layer
also absorbs the error of the layers before it); off unless asked, as for ort_int8.
keep_float patterns become NNCF's ignored scope. A torchvision detector's post-processing
(transform, anchors, box decoding, RoIAlign, NMS, top-k) is ignored too: only its
weight-carrying parts are quantized, so the int8 model does the same work as fp32.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from qbench.backends.onnxruntime.runtime import feeds
from qbench.backends.openvino.convert import Converted, convert
from qbench.errors import ModelError
from qbench.models.base import LoadedModel
from qbench.quantize.common import matches_keep_float
from qbench.quantize.openvino_model import WEIGHT_OPS, ov_quantized
from qbench.quantize.registry import Quantized, QuantizeRequest, register


def ignored_ops(loaded: LoadedModel, converted: Converted,
                keep_float: list[str]) -> tuple[list[str], list[str]]:
    """Operator names NNCF must leave float, and notes saying which and why."""
    scope = (loaded.kind.ort_int8_scope(loaded.module)
             if converted.from_torch else None)
    names: list[str] = []
    matched: dict[str, None] = {}
    for op in converted.model.get_ordered_ops():
        name = op.get_friendly_name()
        owner = converted.op_module(op)
        if scope is not None and not (
                owner and any(owner == p or owner.startswith(p + ".") for p in scope[0])):
            names.append(name)
            continue
        pattern = (owner and matches_keep_float(owner, keep_float)) or (
            not converted.from_torch and matches_keep_float(converted.layer_name(op), keep_float))
        if pattern:
            names.append(name)
            matched[pattern] = None
    notes = [scope[1]] if scope is not None else []
    if not converted.from_torch and in_graph_nms(converted.model):
        # A file that decodes and suppresses in its graph: left to itself NNCF also quantizes
        # the box decoding and level mapping (measured on the fixture detector exported to
        # ONNX: quantizers on rpn and roi_heads Add/Subtract/Multiply), which changes the work
        # the detector does. Only the inputs of weight-carrying operators are quantized.
        kept = [op.get_friendly_name() for op in all_ops(converted.model)
                if op.get_type_name() not in WEIGHT_OPS]
        names += kept
        notes.append("the file runs NMS in its graph: only conv/matmul inputs are int8, its "
                     "box decoding, level mapping and NMS stay float")
    if matched:
        notes.append(f"operators of {', '.join(map(repr, matched))} kept float (keep_float)")
    return names, notes


NMS_OPS = {"NonMaxSuppression", "MulticlassNms", "MatrixNms", "NMSRotated"}


def all_ops(model: object) -> list:
    """The model's operators and those of its If operators' bodies (where a detector's
    batched NMS usually sits)."""
    ops = []
    for op in model.get_ordered_ops():
        ops.append(op)
        if op.get_type_name() == "If":
            for branch in range(2):
                ops += all_ops(op.get_function(branch))
    return ops


def in_graph_nms(model: object) -> bool:
    """Whether the model suppresses boxes itself (its post-processing is in the graph)."""
    return any(op.get_type_name() in NMS_OPS for op in all_ops(model))


def nncf_parameters(request: QuantizeRequest) -> tuple[dict, str]:
    """nncf.quantize keyword arguments for the manifest's calibration block, and a note."""
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        QuantizationParameters,
    )
    from nncf.quantization.range_estimator import (
        AggregatorType,
        RangeEstimatorParameters,
        RangeEstimatorParametersSet,
        StatisticsCollectorParameters,
        StatisticsType,
    )

    spec = request.calibration
    if spec.method == "percentile":
        outlier = 1.0 - spec.percentile / 100.0
        side = StatisticsCollectorParameters(statistics_type=StatisticsType.QUANTILE,
                                             aggregator_type=AggregatorType.MEAN,
                                             quantile_outlier_prob=outlier)
        ranges = RangeEstimatorParameters(min=side, max=side)
        how = f"mean per-feed quantile ranges (p{spec.percentile:g})"
    elif spec.method == "mean_minmax":
        # NNCF's default, left to NNCF: setting MEAN_MINMAX would apply the mean to the
        # per-channel activation quantizers NNCF puts before depthwise convs too, whose
        # default is the global min/max (measured on MobileNetV2: top-1 agreement 0.77 set,
        # 0.91 left to NNCF).
        ranges, how = None, "NNCF's default ranges (mean per-feed min/max; per-channel: min/max)"
    elif spec.method == "histogram":
        ranges, how = RangeEstimatorParametersSet.HISTOGRAM, "NNCF histogram ranges"
    else:
        ranges, how = RangeEstimatorParametersSet.MINMAX, "min/max ranges"
    advanced = AdvancedQuantizationParameters(
        activations_range_estimator_params=ranges,
        weights_quantization_params=QuantizationParameters(per_channel=spec.per_channel),
        disable_bias_correction=spec.bias_correction_method is None)
    corrected = {None: "", "fast": "; NNCF fast bias correction",
                 "full": "; NNCF bias correction through the int8 model"}
    note = (f"calibration: {spec.method} -> {how}, "
            + ("per-channel" if spec.per_channel else "per-tensor") + " int8 weights"
            + corrected[spec.bias_correction_method])
    return {"advanced_parameters": advanced,
            "fast_bias_correction": spec.bias_correction_method != "full"}, note


def calibration_feeds(converted: Converted, request: QuantizeRequest) -> list:
    """The calibration images as the model is fed them: one array per feed."""
    data = [next(iter(feed.values())) for batch in request.calibration_batches()
            for feed in feeds(converted.info, batch)]
    if not data:
        raise ValueError("ov_int8: calibration yielded no images")
    return data


def refuse_if_bodies(loaded: LoadedModel, converted: Converted) -> None:
    """Measured here: NNCF's quantization of the If bodies of an ONNX detector (the fixture
    exported with its batched NMS) crashed the process (SIGSEGV, in its statistics collection)
    in 3 of 4 runs; a failed unit beats a lost worker."""
    if not converted.from_torch and any(op.get_type_name() == "If"
                                        for op in converted.model.get_ordered_ops()):
        raise ModelError(f"{Path(loaded.onnx_path).name}: ov_int8 does not quantize ONNX files with "
                         "If operators (NNCF crashed on them); use ort_int8, or export the "
                         "model without its post-processing")


def quiet_nncf() -> None:
    """NNCF logs every node it leaves unquantized at INFO: hundreds of lines per detector."""
    import logging

    import nncf

    nncf.set_log_level(logging.WARNING)


def quantize_with_nncf(loaded: LoadedModel, converted: Converted, request: QuantizeRequest,
                       data: list | None = None) -> tuple[object, list[str]]:
    """The NNCF-quantized OpenVINO model (converted.model itself stays float) and notes on
    what was left float and how; data: the calibration feeds, when already read."""
    import nncf

    refuse_if_bodies(loaded, converted)
    quiet_nncf()
    data = data if data is not None else calibration_feeds(converted, request)
    ignored, notes = ignored_ops(loaded, converted, request.keep_float)
    kwargs, how = nncf_parameters(request)
    # NNCF draws progress bars on stdout; the worker's log is one line per step.
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = nncf.quantize(converted.model, nncf.Dataset(data), subset_size=len(data),
                                  ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
                                  **kwargs)
    except ValueError as exc:
        error = histogram_error(request, exc)
        if error is exc:
            raise
        raise error from exc
    return model, [*notes, f"{how}, {len(data)} feeds (NNCF)"]


def histogram_error(request: QuantizeRequest, exc: ValueError) -> ValueError:
    """NNCF's histogram search bins each tensor's range in 2048 bins with numpy, which refuses
    a range too narrow for them (measured: a YOLOv8 network's constant branch)."""
    if request.calibration.method != "histogram" or "Too many bins" not in str(exc):
        return exc
    return ValueError("quantization.calibration.method histogram: NNCF's histogram search "
                      "cannot bin a tensor of this model whose values barely vary; use minmax "
                      "or percentile")


@register("ov_int8")
def quantize_ov_int8(loaded: LoadedModel, request: QuantizeRequest) -> Quantized:
    converted = convert(loaded, request.work_dir)
    model, notes = quantize_with_nncf(loaded, converted, request)
    return ov_quantized(loaded, converted, "int8", notes, model=model)
