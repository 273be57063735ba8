"""ort_int8: ONNX Runtime static int8, QDQ format, of the same exported model.

Steps: opset >= 13 (per-channel DequantizeLinear needs an axis), quant_pre_process (symbolic
shape inference fails on dynamic dims: retried without it), calibration one image/batch at a
time (ORT's histogram calibrators keep every intermediate tensor of a pass in memory), then
quantize_static with u8 activations and s8 weights. On a torchvision detector only the nodes of
the parts the torch int8 path quantizes are int8; transform, anchors, RoIAlign, box decoding
and NMS stay float, as in int8_static.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from qbench.backends.onnxruntime.export import module_names, node_module
from qbench.backends.onnxruntime.runtime import feeds, input_info
from qbench.measure.machine import cpu_isa
from qbench.models.base import LoadedModel
from qbench.quantize.common import matches_keep_float
from qbench.quantize.onnx_tails import activation_tails
from qbench.quantize.ort_bias_correction import bias_offsets, corrected_model
from qbench.quantize.ort_fp32 import fp32_onnx, ort_quantized
from qbench.quantize.registry import Quantized, QuantizeRequest, register

if TYPE_CHECKING:
    from qbench.manifest import CalibrationSpec

MIN_OPSET = 13
# torch's histogram observer minimises the L2 error; ORT's closest histogram method is Entropy.
METHODS = {"minmax": "MinMax", "histogram": "Entropy", "percentile": "Percentile",
           "mean_minmax": "MinMax"}


class Reader:
    """CalibrationDataReader with len/set_range, so ORT calibrates in strides of one feed."""

    def __init__(self, feeds_: list[dict]) -> None:
        self.feeds = feeds_
        self.set_range(0, len(feeds_))

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.feeds[start_index:end_index])

    def get_next(self) -> dict | None:
        return next(self._it, None)


def ensure_opset(path: Path, work: Path) -> tuple[Path, list[str]]:
    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= MIN_OPSET:
        return path, []
    from onnx import version_converter

    out = work / "opset13.onnx"
    onnx.save(version_converter.convert_version(model, MIN_OPSET), str(out))
    return out, [f"converted from opset {opset} to {MIN_OPSET} for per-channel QDQ"]


# Ops whose output shapes depend on the data: symbolic shape inference cannot finish on them and
# spent 270 s in sympy on the fixture detector before giving up.
DATA_DEPENDENT = {"NonMaxSuppression", "NonZero"}


def pre_process(path: Path, work: Path) -> tuple[Path, list[str]]:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "preprocessed.onnx"
    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    # quant_pre_process leaves temporary models (and their external data) in the current
    # folder when it fails half-way: run it from the unit's scratch folder.
    with contextlib.chdir(work):
        if not ops & DATA_DEPENDENT:
            try:
                quant_pre_process(str(path), str(out))
                return out, []
            except Exception:  # symbolic shape inference cannot resolve some dynamic dims
                pass
        try:
            quant_pre_process(str(path), str(out), skip_symbolic_shape=True)
            return out, ["quant_pre_process without symbolic shape inference"]
        except Exception as exc:
            return path, [f"quant_pre_process failed ({type(exc).__name__}); quantized unprocessed"]


def excluded_nodes(model: LoadedModel, graph: onnx.ModelProto,
                   keep_float: list[str]) -> tuple[list[str], list[str]]:
    """Nodes left float: keep_float matches, and everything outside the kind's int8 scope
    (a detector exported from torch: outside its weight-carrying parts).

    keep_float patterns match torch module names; on a given ONNX file, the node's dotted scope
    ("/layer1/layer1.0/conv1/Conv" -> "layer1.0.conv1") or the node name itself, and a matched
    node's tail (its activation's elementwise nodes, and the Split/Reshape/Transpose on the way
    to an output: nodes that only transform its output) stays float with it, as a torch
    module's activation does.
    """
    from_torch = model.onnx_path is None
    names = module_names(model.module) if from_torch else None
    scope = model.kind.ort_int8_scope(model.module) if from_torch else None
    exclude: list[str] = []
    matched: dict[str, None] = {}  # the patterns that matched, in order
    for node in graph.graph.node:
        owner = node_module(node.name, names)
        if scope is not None and not (
                owner and any(owner == p or owner.startswith(p + ".") for p in scope[0])):
            exclude.append(node.name)
            continue
        pattern = (owner and matches_keep_float(owner, keep_float)) or (
            not from_torch and matches_keep_float(node.name, keep_float))
        if pattern:
            exclude.append(node.name)
            matched[pattern] = None
    notes = ([f"nodes of {', '.join(map(repr, matched))} kept float (keep_float)"]
             if matched else [])
    if not from_torch and matched:
        tail = activation_tails(graph.graph, exclude)
        exclude += tail
        if tail:
            notes.append(f"{len(tail)} nodes of their activations and output layout kept float "
                         "with them")
    return exclude, notes


def output_ranges(path: Path, data: list[dict]) -> dict[str, list[dict]]:
    """TensorQuantOverrides giving each graph output its observed min/max over the calibration
    feeds. A model's outputs carry its decision (the top logit, the best box score): a histogram
    or percentile range clips exactly those extremes, so several classes end up tied at the
    clipped maximum (measured: a real MobileNetV2's top-1 agreement with fp32 fell from 0.90 to
    0.34 with Entropy-clipped logits, at the same 17 dB SQNR). Inner tensors keep the method's
    range."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    lo = dict.fromkeys(names, np.inf)
    hi = dict.fromkeys(names, -np.inf)
    for feed in data:
        for name, value in zip(names, session.run(names, feed), strict=True):
            value = np.asarray(value)
            if value.size and np.issubdtype(value.dtype, np.floating):
                lo[name] = min(lo[name], float(value.min()))
                hi[name] = max(hi[name], float(value.max()))
    # ORT reads the overrides as float32 arrays (it asks for their .dtype)
    return {n: [{"rmin": np.float32(min(lo[n], 0.0)), "rmax": np.float32(max(hi[n], 0.0))}]
            for n in names if np.isfinite(lo[n]) and np.isfinite(hi[n])}


def reduce_range_for(device: str) -> tuple[bool, str]:
    """ORT's advice: without VNNI, u8 x s8 products go through vpmaddubsw, whose 16-bit
    intermediate sums can saturate, so weights are quantized to 7 bits (reduce_range); with
    AVX-512 VNNI or AVX-VNNI the full 8 bits are safe. The note says what was detected."""
    if device != "cpu":
        return False, "GPU: no reduce_range"
    isa = cpu_isa()
    if isa.vnni:
        found = "avx512_vnni" if "avx512_vnni" in isa.flags else "avx_vnni"
        return False, f"VNNI ({found}) detected: no reduce_range"
    best = next((f for f in ("avx512bw", "avx512f", "avx2") if f in isa.flags), "no AVX2")
    return True, f"no VNNI ({best} only): reduce_range, 7-bit weights"


@dataclass
class PreparedOrt:
    """What every ort_int8 quantization of one unit shares: the pre-processed float file,
    the calibration feeds, the graph outputs' ranges and where the calibrated ranges are kept.

    The ranges depend on the float model and the feeds only, not on which nodes stay float, so
    a search that quantizes the same model many times (ort_int8_mixed) calibrates it once."""

    path: Path
    data: list[dict]
    overrides: dict[str, list[dict]]
    ranges_file: Path
    notes: list[str]
    # calibration.bias_correction: node name -> the mean output offset of its int8 weights
    offsets: dict[str, np.ndarray] | None = None


def prepare_ort_int8(model: LoadedModel, request: QuantizeRequest) -> PreparedOrt:
    work = Path(request.work_dir)
    src, notes = fp32_onnx(model, request)
    src, more = ensure_opset(src, work)
    pre, more2 = pre_process(src, work)
    notes += more + more2
    info = input_info(pre)
    data = [f for batch in request.calibration_batches() for f in feeds(info, batch)]
    if not data:
        raise ValueError("ort_int8: calibration yielded no images")
    overrides = (output_ranges(pre, data)
                 if request.calibration.method not in ("minmax", "mean_minmax") else {})
    ranges = work / "calibration_ranges.json"
    ranges.unlink(missing_ok=True)  # a rerun of the unit calibrates afresh
    prep = PreparedOrt(pre, data, overrides, ranges, notes)
    if request.calibration.bias_correction:
        probe = work / "bias_probe_int8.onnx"  # all int8 in scope: every node's int8 weights
        exclude, _ = excluded_nodes(model, onnx.load(str(pre)), [])
        _quantize_static(prep, request, exclude, probe)
        prep.offsets = bias_offsets(pre, probe, data)
        probe.unlink()
    return prep


def minmax_options(spec: CalibrationSpec) -> dict:
    """ORT's MinMax calibration, feed by feed for minmax (the global min and max, without
    holding every feed's outputs at once); for mean_minmax all feeds in one pass, where ORT's
    moving-average option is the mean of the feeds' mins and maxes."""
    if spec.method == "mean_minmax":
        return {"CalibMovingAverage": True}
    return {"CalibStridedMinMax": 1}


def _quantize_static(prep: PreparedOrt, request: QuantizeRequest, exclude: list[str], out: Path,
                     source: Path | None = None) -> None:
    """quantize_static of source (the prepared file by default); the first call calibrates and
    keeps the ranges in prep.ranges_file, later calls reuse them."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    spec = request.calibration
    reduce_range, _ = reduce_range_for(request.device)
    # ORT prints calibration progress, and divides by zero on empty tensors it then skips.
    with contextlib.redirect_stdout(io.StringIO()), np.errstate(divide="ignore", invalid="ignore"):
        quantize_static(
            str(source or prep.path), str(out), Reader(prep.data), quant_format=QuantFormat.QDQ,
            per_channel=spec.per_channel, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=exclude, reduce_range=reduce_range,
            calibrate_method=getattr(CalibrationMethod, METHODS[spec.method]),
            calibration_cache_path=str(prep.ranges_file),
            extra_options={"CalibPercentile": spec.percentile,
                           "CalibTensorRangeSymmetric": False,
                           "TensorQuantOverrides": prep.overrides, **minmax_options(spec)},
        )


def quantize_prepared(model: LoadedModel, request: QuantizeRequest, prep: PreparedOrt,
                      out: Path) -> Quantized:
    """quantize_static of the prepared file with request.keep_float left float (and, with
    bias correction, the biases of the nodes made int8 corrected)."""
    exclude, kept = excluded_nodes(model, onnx.load(str(prep.path)), request.keep_float)
    spec = request.calibration
    _, isa_note = reduce_range_for(request.device)
    source, corrected = None, None
    if prep.offsets is not None:
        source, corrected = corrected_model(prep.path, prep.offsets, set(exclude),
                                            out.with_name(out.stem + "_bias_corrected.onnx"))
    _quantize_static(prep, request, exclude, out, source)
    if source is not None:
        source.unlink()
    notes = list(prep.notes)
    scope = None if model.onnx_path is not None else model.kind.ort_int8_scope(model.module)
    if scope is not None:
        notes.append(scope[1])
    notes += kept
    notes.append(f"calibration: {spec.method} -> ORT {METHODS[spec.method]}"
                 + (f" p{spec.percentile}" if spec.method == "percentile" else "")
                 + f", {len(prep.data)} feeds, "
                 + ("per-channel" if spec.per_channel else "per-tensor")
                 + f" s8 weights, u8 activations ({isa_note})"
                 + ("; graph outputs keep their observed min/max" if prep.overrides else ""))
    if corrected is not None:
        notes.append(f"bias correction: {corrected} conv/gemm biases less the mean output offset "
                     "of their int8 weights on the calibration images")
    return ort_quantized(model, out, request.device, notes, fp32_path=prep.path)


@register("ort_int8")
def quantize_ort_int8(model: LoadedModel, request: QuantizeRequest) -> Quantized:
    prep = prepare_ort_int8(model, request)
    return quantize_prepared(model, request, prep, Path(request.work_dir) / "model_int8.onnx")
