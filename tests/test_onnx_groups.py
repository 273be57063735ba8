"""ort_int8_mixed's groups on a given ONNX file: runs of weight nodes, refined by halves."""

from __future__ import annotations

from fnmatch import fnmatchcase

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qbench.quantize.onnx_groups import node_groups


def _chain(tmp_path, names):
    """Convs in a chain (with a Relu between each, which is not a group), as an ONNX file."""
    nodes, inits, prev = [], [], "x"
    for k, name in enumerate(names):
        w = f"w{k}"
        inits.append(numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), w))
        nodes.append(helper.make_node("Conv", [prev, w], [f"c{k}"], name=name))
        nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}"))
        prev = f"r{k}"
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    path = tmp_path / "chain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_runs_of_weight_nodes_in_graph_order_split_by_halves(tmp_path):
    names = [f"p2o.Conv.{k}" for k in range(5)]
    groups = node_groups(_chain(tmp_path, names))
    assert groups.nodes == names  # the Relus are not weight nodes
    assert groups.top(2) == ["p2o.Conv.0..p2o.Conv.2", "p2o.Conv.3..p2o.Conv.4"]
    assert groups.children("p2o.Conv.0..p2o.Conv.2") == ["p2o.Conv.0", "p2o.Conv.1..p2o.Conv.2"]
    assert groups.children("p2o.Conv.1..p2o.Conv.2") == ["p2o.Conv.1", "p2o.Conv.2"]
    assert groups.children("p2o.Conv.1") == []
    assert groups.top(8) == names  # fewer nodes than runs: one node each
    assert groups.patterns(["p2o.Conv.3..p2o.Conv.4"]) == ["p2o.Conv.3", "p2o.Conv.4"]


def test_patterns_match_exactly_their_nodes_even_with_glob_characters(tmp_path):
    names = ["conv[1]", "conv*", "conv?x", "conv1"]
    groups = node_groups(_chain(tmp_path, names))
    patterns = groups.patterns(groups.top(4))
    for name, pattern in zip(names, patterns, strict=True):
        assert [n for n in names if fnmatchcase(n, pattern)] == [name]
