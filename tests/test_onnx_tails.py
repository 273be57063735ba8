"""keep_float on a given ONNX file keeps a node's activation tail float with it."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from qbench.manifest import CalibrationSpec
from qbench.models.onnx_models import load_onnx
from qbench.quantize.onnx_tails import activation_tails
from qbench.quantize.registry import QuantizeRequest, quantize


def hardswish_net(path) -> onnx.ModelProto:
    """conv_a -> hardswish (Add, Clip, Mul, Div) -> conv_b -> Relu -> residual Add with the
    hardswish output -> conv_c; constants as initializers and as a Constant node, the way
    exporters mix them."""
    rng = np.random.default_rng(0)
    w = lambda *s: numpy_helper.from_array(rng.normal(0, 0.3, s).astype(np.float32))  # noqa: E731
    inits = []
    for name, shape in (("wa", (8, 3, 3, 3)), ("wb", (8, 8, 1, 1)), ("wc", (4, 8, 3, 3))):
        t = w(*shape)
        t.name = name
        inits.append(t)
    for name, value in (("three", 3.0), ("zero", 0.0), ("six", 6.0)):
        inits.append(numpy_helper.from_array(np.array(value, np.float32), name))
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a", "three"], ["a3"], name="hs_add"),
        helper.make_node("Clip", ["a3", "zero", "six"], ["a3c"], name="hs_clip"),
        helper.make_node("Mul", ["a", "a3c"], ["am"], name="hs_mul"),
        helper.make_node("Constant", [], ["six_c"], name="six_node",
                         value=numpy_helper.from_array(np.array(6.0, np.float32))),
        helper.make_node("Div", ["am", "six_c"], ["h"], name="hs_div"),
        helper.make_node("Conv", ["h", "wb"], ["b"], name="conv_b"),
        helper.make_node("Relu", ["b"], ["br"], name="relu_b"),
        helper.make_node("Add", ["br", "h"], ["r"], name="residual"),
        helper.make_node("Conv", ["r", "wc"], ["y"], name="conv_c", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return model


def test_tail_follows_the_activation_and_stops_at_a_residual(tmp_path):
    graph = hardswish_net(tmp_path / "hs.onnx").graph
    assert activation_tails(graph, ["conv_a"]) == ["hs_add", "hs_clip", "hs_mul", "hs_div"]
    assert activation_tails(graph, ["conv_b"]) == ["relu_b"]  # the residual reads another branch
    assert activation_tails(graph, ["conv_a", "conv_b"]) == [
        "hs_add", "hs_clip", "hs_mul", "hs_div", "relu_b", "residual"]
    assert activation_tails(graph, ["conv_c"]) == []
    assert activation_tails(graph, []) == []


def head_net() -> onnx.GraphProto:
    """A detector head's way out: conv -> Split into scores and boxes -> Sigmoid / Reshape ->
    Transpose -> outputs, plus a Concat that joins the head with another branch."""
    inits = [numpy_helper.from_array(np.ones((6, 4, 1, 1), np.float32), "wh"),
             numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "wo"),
             numpy_helper.from_array(np.array([2, 4], np.int64), "parts"),
             numpy_helper.from_array(np.array([0, 4, -1], np.int64), "shape")]
    nodes = [
        helper.make_node("Conv", ["x", "wh"], ["h"], name="head"),
        helper.make_node("Split", ["h", "parts"], ["cls", "reg"], name="split", axis=1),
        helper.make_node("Sigmoid", ["cls"], ["p"], name="sigmoid"),
        helper.make_node("Reshape", ["reg", "shape"], ["r"], name="reshape"),
        helper.make_node("Transpose", ["r"], ["boxes"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("Conv", ["x", "wo"], ["o"], name="other"),
        helper.make_node("Concat", ["reg", "o"], ["joined"], name="join", axis=1),
    ]
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    graph = helper.make_graph(nodes, "head", [vi("x", [1, 4, 8, 8])],
                              [vi("p", [1, 2, 8, 8]), vi("boxes", [1, 64, 4]),
                               vi("joined", [1, 8, 8, 8])], inits)
    onnx.checker.check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    return graph


def test_tail_follows_a_head_conv_to_its_outputs_and_stops_at_a_join():
    graph = head_net()
    assert activation_tails(graph, ["head"]) == ["split", "sigmoid", "reshape", "transpose"]
    assert activation_tails(graph, ["head", "other"]) == [
        "split", "sigmoid", "reshape", "transpose", "join"]


def test_ort_int8_keeps_the_tail_of_a_kept_node_float(tmp_path):
    hardswish_net(tmp_path / "hs.onnx")
    loaded = load_onnx("hs", tmp_path / "hs.onnx", (16, 16))
    calib = [torch.rand(4, 3, 16, 16)]
    request = QuantizeRequest(device="cpu", calibration=CalibrationSpec(images=4, method="minmax"),
                              keep_float=["conv_a"], calibration_batches=lambda: iter(calib),
                              work_dir=str(tmp_path))
    q = quantize(loaded, "ort_int8", request)
    assert "4 nodes of their activations and output layout kept float with them" in q.notes
    graph = onnx.load(q.runtime.model_path).graph
    made = {o: n for n in graph.node for o in n.output}
    # the kept conv and its hardswish read float tensors: no DequantizeLinear in front of them
    for name in ("conv_a", "hs_add", "hs_clip", "hs_mul", "hs_div"):
        node = next(n for n in graph.node if n.name == name)
        assert all(made[i].op_type != "DequantizeLinear" for i in node.input if i in made), name
    assert "conv_b" in q.int8_modules and "conv_a" not in q.int8_modules
    x = torch.rand(2, 3, 16, 16)
    assert torch.nn.functional.cosine_similarity(
        q.predict(x)[0].flatten(1), loaded.predict(loaded.module, x)[0].flatten(1)).min() > 0.99
