"""Layer groups of a given ONNX file for ort_int8_mixed: runs of weight nodes in graph order.

A torch model's groups are its module paths (stage -> block -> layer); an ONNX file's node
names often carry no hierarchy (a Paddle export names its convs p2o.Conv.0 ... p2o.Conv.101),
but graph order is the network's order. So the top-level groups are consecutive runs of the
weight-carrying nodes (Conv, Gemm, MatMul with a weight), a run's children are its two halves,
and a single node is a leaf. A run is named "first..last"; a single node by its own name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from qbench.backends.onnxruntime.runtime import WEIGHT_OPS

TOP_GROUPS = 8  # runs the search ranks first: one trial each


def _escaped(name: str) -> str:
    """An fnmatch pattern matching exactly `name` (keep_float patterns are fnmatch)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@dataclass
class NodeGroups:
    nodes: list[str]  # weight nodes in graph order
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # label -> [start, end)

    def label(self, start: int, end: int) -> str:
        name = (self.nodes[start] if end - start == 1
                else f"{self.nodes[start]}..{self.nodes[end - 1]}")
        self.spans[name] = (start, end)
        return name

    def top(self, count: int = TOP_GROUPS) -> list[str]:
        n = len(self.nodes)
        size = max(1, math.ceil(n / count))
        return [self.label(i, min(i + size, n)) for i in range(0, n, size)]

    def children(self, group: str) -> list[str]:
        start, end = self.spans[group]
        if end - start == 1:
            return []
        mid = (start + end) // 2
        return [self.label(start, mid), self.label(mid, end)]

    def patterns(self, groups: list[str]) -> list[str]:
        """keep_float patterns for the nodes of the groups."""
        out: list[str] = []
        for group in groups:
            start, end = self.spans[group]
            out += [_escaped(n) for n in self.nodes[start:end]]
        return out


def node_groups(path: Path) -> NodeGroups:
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    consts = {n.output[0] for n in graph.node if n.op_type == "Constant"}
    nodes = [n.name for n in graph.node if n.op_type in WEIGHT_OPS and len(n.input) >= 2
             and n.name and (n.input[1] in inits or n.input[1] in consts)]
    return NodeGroups(nodes)
