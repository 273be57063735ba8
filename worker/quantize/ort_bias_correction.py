"""Bias correction for ORT's int8 weights (`calibration.bias_correction`).

Rounding a conv's weights to int8 moves its output by (W_int8 - W) * x, whose mean over real
inputs is not zero: it is a per-channel offset that every later layer inherits, and the largest
error int8 weights add on depthwise networks. Subtracting that mean offset from the conv's bias,
measured on the calibration feeds of the float model, removes it (the empirical form of the
bias correction of Nagel et al., "Data-Free Quantization", 2019).
On a real EfficientNet-Lite0 with int8 weights alone, the logits' SQNR went from 18 to 25.5 dB.

The offsets are computed once per unit from one all-int8 quantization (the int8 weights of a
node do not depend on which other nodes stay float) and applied to the nodes quantized in each
call, so a search that keeps different nodes float never corrects a float node.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

WEIGHT_OPS = ("Conv", "Gemm")


def _attr(node: onnx.NodeProto, name: str, default: int | float) -> int | float:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _dequantized_weights(qdq: onnx.ModelProto) -> dict[str, np.ndarray]:
    """node name -> its weight as ORT's int8 gives it back, for every Conv/Gemm whose weight
    comes from a DequantizeLinear of an initializer."""
    inits = {i.name: i for i in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    out: dict[str, np.ndarray] = {}
    for node in qdq.graph.node:
        dq = producer.get(node.input[1]) if node.op_type in WEIGHT_OPS else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        zero = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64)
                if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale))
        shape = [1] * q.ndim
        if scale.ndim:  # per channel, along the node's axis
            shape[int(_attr(dq, "axis", 1))] = -1
        out[node.name] = (q - zero.reshape(shape)) * scale.reshape(shape)
    return out


def _channel_means(model: onnx.ModelProto, tensors: list[str],
                   feeds: list[dict]) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) mean of each tensor over the feeds, one feed at a time."""
    import onnxruntime as ort

    model.graph.output.extend(helper.make_value_info(t, onnx.TypeProto()) for t in tensors)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sums: dict[str, np.ndarray] = {}
    counts = dict.fromkeys(tensors, 0)
    for feed in feeds:
        for name, value in zip(tensors, session.run(tensors, feed), strict=True):
            value = np.asarray(value, dtype=np.float64)
            axes = tuple(i for i in range(value.ndim) if i != 1)
            sums[name] = sums.get(name, 0) + value.sum(axis=axes)
            counts[name] += value.size // value.shape[1]
    return {t: sums[t] / counts[t] for t in tensors if counts[t]}


def bias_offsets(float_path: Path, qdq_path: Path, feeds: list[dict]) -> dict[str, np.ndarray]:
    """node name -> the mean output offset its int8 weights add, on the calibration feeds.

    Measured, not modelled: beside each node, a copy of it with the weight error as its weight
    and no bias reads the same input, so padding, strides, groups and Gemm's transposes count
    exactly as the node applies them."""
    model = onnx.load(str(float_path))
    inits = {i.name: i for i in model.graph.initializer}
    dequantized = _dequantized_weights(onnx.load(str(qdq_path)))
    probes: dict[str, str] = {}
    for node in list(model.graph.node):
        if node.name not in dequantized or len(node.input) < 2 or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        if dequantized[node.name].shape != weight.shape:
            continue
        error = f"{node.name}.int8_weight_error"
        model.graph.initializer.append(numpy_helper.from_array(
            (dequantized[node.name] - weight).astype(np.float32), error))
        probe = helper.make_node(node.op_type, [node.input[0], error], [f"{error}.out"],
                                 name=f"{error}.probe", domain=node.domain)
        probe.attribute.extend(node.attribute)
        model.graph.node.append(probe)  # after its input's producer: still in graph order
        probes[node.name] = f"{error}.out"
    means = _channel_means(model, list(probes.values()), feeds)
    return {name: means[out] for name, out in probes.items()
            if out in means and np.all(np.isfinite(means[out]))}


def corrected_model(float_path: Path, offsets: dict[str, np.ndarray], skip: set[str],
                    out: Path) -> tuple[Path, int]:
    """float_path with each node of offsets (but those in skip) given bias - offset, as a new
    initializer of its own (a bias shared by two nodes is corrected for each apart)."""
    model = onnx.load(str(float_path))
    inits = {i.name: i for i in model.graph.initializer}
    replaced: set[str] = set()
    n = 0
    for node in model.graph.node:
        offset = offsets.get(node.name)
        if offset is None or node.name in skip:
            continue
        if node.op_type == "Gemm" and float(_attr(node, "beta", 1.0)) != 1.0:
            continue
        has_bias = len(node.input) > 2 and node.input[2] in inits
        if len(node.input) > 2 and node.input[2] and not has_bias:
            continue  # a bias computed by the graph: leave it alone
        bias = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if has_bias
                else np.zeros_like(offset))
        if bias.shape != offset.shape:
            continue
        name = f"{node.name}.bias_corrected"
        model.graph.initializer.append(
            numpy_helper.from_array((bias - offset).astype(np.float32), name))
        if has_bias:
            replaced.add(node.input[2])
        if len(node.input) > 2:
            node.input[2] = name
        else:
            node.input.append(name)
        n += 1
    used = {i for node in model.graph.node for i in node.input}
    for init in [i for i in model.graph.initializer if i.name in replaced - used]:
        model.graph.initializer.remove(init)
    onnx.save(model, str(out))
    return out, n
