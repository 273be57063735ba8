"""The tail of an ONNX node: the nodes that only transform its output without weights.

Exporters spell an activation as several nodes (hardswish as Add, Clip, Mul, Div; BatchNorm left
unfused), and a detector's head conv reaches the graph outputs through Split, Reshape, Transpose
and Sigmoid. A conv kept float whose tail stays int8 has its output quantized per tensor right
after it, which is where a kept layer loses what keeping it float was for; and quantizing the
tail buys no speed (nothing in it multiplies by a weight). Measured on a real ONNX layout
detector (PP-PicoDet, mAP 0.735 in fp32, percentile calibration): its first two convs float
without their hardswish nodes 0.442 mAP, with them 0.622; its four head convs float but their
Split/Reshape/Transpose int8 0.699, with those float too 0.714.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

# Ops computed element by element from their inputs (broadcast constants allowed).
ELEMENTWISE = frozenset({
    "Abs", "Add", "BatchNormalization", "Clip", "Div", "Elu", "Erf", "Exp", "Gelu", "HardSigmoid",
    "HardSwish", "LeakyRelu", "Log", "Max", "Min", "Mish", "Mul", "Neg", "Pow", "PRelu", "Relu",
    "Selu", "Sigmoid", "Softplus", "Softsign", "Sqrt", "Sub", "Tanh",
})
# Ops that move, split or join values without arithmetic, and a softmax over one axis: what lies
# between a head conv and the graph outputs. Concat joins the tail only when every input is in it.
LAYOUT = frozenset({
    "Concat", "Flatten", "Identity", "Reshape", "Softmax", "Split", "Squeeze", "Transpose",
    "Unsqueeze",
})
TAIL_OPS = ELEMENTWISE | LAYOUT


def constant_tensors(graph: onnx.GraphProto) -> set[str]:
    return ({i.name for i in graph.initializer}
            | {o for n in graph.node if n.op_type == "Constant" for o in n.output})


def activation_tails(graph: onnx.GraphProto, kept: Iterable[str]) -> list[str]:
    """Names of the nodes, outside `kept`, whose every non-constant input is an output of a
    kept node or of its tail, and that compute element by element or only move values
    (TAIL_OPS). Graph order (ONNX nodes are
    topologically sorted), so one pass follows a chain of any length. A residual Add that also
    reads another branch is not part of the tail."""
    kept = set(kept)
    constants = constant_tensors(graph)
    inside = {o for n in graph.node if n.name in kept for o in n.output}
    tail: list[str] = []
    for node in graph.node:
        # an unnamed node cannot be excluded by name (ORT's nodes_to_exclude)
        if not node.name or node.name in kept or node.op_type not in TAIL_OPS:
            continue
        inputs = [i for i in node.input if i and i not in constants]
        if inputs and all(i in inside for i in inputs):
            tail.append(node.name)
            inside.update(node.output)
    return tail
