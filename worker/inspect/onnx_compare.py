"""ONNX models: intermediate outputs of an fp32 file and its quantized (QDQ) version.

A session cannot be hooked, so the tensors to compare are added as graph outputs (onnx
helper) to in-memory copies of both models. Layers pair by node name: ONNX Runtime's QDQ
quantizer keeps the float model's node and tensor names. Where it folded a Relu into the
conv before it, the conv now writes the Relu's output tensor; that tensor name is then looked
up in the fp32 graph, so both sides are compared at the same point. The quantized value is
the output of the DequantizeLinear after the layer: what the next layer receives.

Sessions run with graph optimizations off (as ONNX Runtime's own qdq_loss_debug does): the
QDQ arithmetic is simulated in float, which can differ by rounding from fused int8 kernels.
QOperator-format models (QLinearConv) rename their nodes and are not paired.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from qbench.inspect.capture import KINDS
from qbench.inspect.record import LayerComparison, LayerRecord, image_hwc

log = logging.getLogger(__name__)

OP_KINDS = {"Conv": "conv", "ConvTranspose": "conv", "Gemm": "linear", "MatMul": "linear"}


@dataclass(frozen=True)
class NodePair:
    name: str  # node name, the same in both models
    kind: str
    fp32_tensor: str
    quant_tensor: str


def _after_qdq(graph: onnx.GraphProto, tensor: str) -> str:
    """The DequantizeLinear output reached from `tensor` through QuantizeLinear, if any."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for q in consumers.get(tensor, []):
        if q.op_type == "QuantizeLinear":
            for dq in consumers.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    return dq.output[0]
    return tensor


def pair_nodes(fp32: onnx.ModelProto, quant: onnx.ModelProto, layers: str) -> tuple[list[NodePair], list[str]]:
    """Conv/Gemm/MatMul nodes of the fp32 graph in graph (topological) order, paired by name."""
    kinds = KINDS[layers]
    fp32_tensors = {o for n in fp32.graph.node for o in n.output}
    by_name = {n.name: n for n in quant.graph.node}
    pairs, skipped = [], []
    for node in fp32.graph.node:
        kind = OP_KINDS.get(node.op_type)
        if kind not in kinds:
            continue
        q_node = by_name.get(node.name)
        if q_node is None or q_node.op_type != node.op_type:
            skipped.append(f"{node.name}: not in the quantized model")
            continue
        q_out = q_node.output[0]
        stripped = q_out.removesuffix("_QuantizeLinear_Input")
        ref = q_out if q_out in fp32_tensors else stripped if stripped in fp32_tensors else node.output[0]
        pairs.append(NodePair(node.name, kind, ref, _after_qdq(quant.graph, q_out)))
    return pairs, skipped


def _with_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs `tensors` (element types from shape inference)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
        types = {v.name: v.type.tensor_type.elem_type
                 for v in [*inferred.value_info, *inferred.output, *inferred.input]}
    except Exception:  # shape inference is optional: outputs default to float
        types = {}
    present = {o.name for o in model.graph.output}
    for name in dict.fromkeys(tensors):
        if name not in present:
            model.graph.output.append(
                helper.make_tensor_value_info(name, types.get(name) or TensorProto.FLOAT, None))
    return model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    # no graph optimisation at all: WeightBiasQuantization among them stays off
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _feed(session: ort.InferenceSession, image: torch.Tensor) -> dict[str, np.ndarray]:
    """One image, as NCHW or (a detector export) CHW, in the input's float type."""
    inp = session.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    arr = image.numpy() if len(inp.shape) == 4 else image[0].numpy()
    return {inp.name: arr.astype(dtype)}


def _unique_names(names: list[str]) -> list[str]:
    """A module exported once per call (an RPN head per FPN level): name, name#2, ..."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def compare_onnx(fp32_path: Path, quant_path: Path, images: torch.Tensor, layers: str,
                 rename: Callable[[str], str | None] | None = None) -> LayerComparison:
    """`rename(node name)`: the row's layer name (e.g. the torch module it was exported
    from); None or no rename keeps the node name."""
    if images.shape[0] == 0:
        raise ValueError("inspect: no images")
    fp32, quant = onnx.load(str(fp32_path)), onnx.load(str(quant_path))
    pairs, skipped = pair_nodes(fp32, quant, layers)
    n_out = len(fp32.graph.output)
    f_names = [o.name for o in fp32.graph.output] + [p.fp32_tensor for p in pairs]
    q_names = [o.name for o in quant.graph.output] + [p.quant_tensor for p in pairs]
    f_sess = _session(_with_outputs(fp32, f_names))
    q_sess = _session(_with_outputs(quant, q_names))
    names = _unique_names([(rename(p.name) if rename else None) or p.name for p in pairs])
    records = [LayerRecord(n, p.kind, i) for i, (n, p) in enumerate(zip(names, pairs, strict=True))]
    final_x: list[np.ndarray] = []
    final_q: list[np.ndarray] = []
    mismatched: set[str] = set()
    for i, image in enumerate(images.split(1)):
        f_out = f_sess.run(f_names, _feed(f_sess, image))
        q_out = q_sess.run(q_names, _feed(q_sess, image))
        for a, b in zip(f_out[:n_out], q_out[:n_out], strict=False):
            if a.shape == b.shape:
                final_x.append(np.asarray(a, np.float32).ravel())
                final_q.append(np.asarray(b, np.float32).ravel())
        for rec, a, b in zip(records, f_out[n_out:], q_out[n_out:], strict=True):
            if a.shape != b.shape:
                mismatched.add(rec.name)
                skipped.append(f"{rec.name}: shape {a.shape} vs {b.shape}")
                continue
            rec.update(torch.from_numpy(np.asarray(a, np.float32)),
                       torch.from_numpy(np.asarray(b, np.float32)), first=(i == 0))
    kept = [r for r in records if r.name not in mismatched and r.stats.count]
    for new_index, rec in enumerate(kept):
        rec.index = new_index
    if skipped:
        log.info("inspect onnx: %d layers not paired: %s", len(skipped), skipped[:10])
    outputs = {"model outputs": (np.concatenate(final_x), np.concatenate(final_q))} if final_x else {}
    h, w = images.shape[-2:]
    return LayerComparison(layers=kept, image=image_hwc(images[0]), canvas=(float(h), float(w)),
                      outputs=outputs, skipped=sorted(set(skipped)))
