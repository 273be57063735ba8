"""ONNX Runtime sessions behind qbench's predict(batch) interface, and ONNX file facts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper

from qbench.backends.onnxruntime.config import DISABLED_OPTIMIZERS
from qbench.models.kinds import TaskKind, as_kind


@dataclass(frozen=True)
class InputInfo:
    name: str
    per_image: bool  # fed one image at a time: [3,H,W] or a fixed batch of 1
    has_batch_dim: bool
    chw: tuple[int | None, ...] = (None, None, None)  # fixed dims, None where dynamic


def input_info(path: str | Path) -> InputInfo:
    """The single float image input of an ONNX file; anything else is a clear error."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"{Path(path).name}: qbench feeds one image tensor, the model has "
                         f"{len(inputs)} inputs ({', '.join(i.name for i in inputs)})")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise ValueError(f"{Path(path).name}: input {inputs[0].name} is "
                         f"{helper.tensor_dtype_to_np_dtype(tensor.elem_type)}, not float32")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if len(dims) == 3:
        return InputInfo(inputs[0].name, per_image=True, has_batch_dim=False, chw=tuple(dims))
    if len(dims) != 4:
        raise ValueError(f"{Path(path).name}: input {inputs[0].name} has rank {len(dims)}; "
                         "qbench feeds images as NCHW (rank 4) or CHW (rank 3)")
    if dims[0] not in (None, 1):
        raise ValueError(f"{Path(path).name}: input batch dimension is fixed at {dims[0]}; "
                         "export it with a dynamic batch or batch 1")
    return InputInfo(inputs[0].name, per_image=dims[0] == 1, has_batch_dim=True,
                     chw=tuple(dims[1:]))


def session(path: str | Path, device: str, optimized_to: Path | None = None):
    """An ORT session as qbench runs a model; optimized_to: also write the graph it runs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # The same thread count as the torch modes of the unit, so the toolchains compare fairly.
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized_to is not None:
        opts.optimized_model_filepath = str(optimized_to)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" \
        else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), opts, providers=providers,
                                disabled_optimizers=DISABLED_OPTIMIZERS)


def feeds(info: InputInfo, batch: torch.Tensor) -> Iterator[dict[str, np.ndarray]]:
    """The session inputs for an NCHW batch: the whole batch, or one image at a time."""
    arr = batch.detach().float().cpu().numpy()
    if not info.per_image:
        yield {info.name: arr}
        return
    for image in arr:
        yield {info.name: image[None] if info.has_batch_dim else image}


def make_ort_predict(sess, info: InputInfo, task: TaskKind | str
                     ) -> Callable[[torch.Tensor], Any]:
    """predict(batch) with the structure the task's torch module returns (detections per
    image, one tensor) or, for a given ONNX file, the list of outputs (TaskKind.ort_outputs)."""
    names = [o.name for o in sess.get_outputs()]
    kind = as_kind(task)

    def predict(batch: torch.Tensor) -> Any:
        runs = [sess.run(None, feed) for feed in feeds(info, batch)]
        return kind.ort_outputs(runs, names, info.has_batch_dim)

    return predict


def file_size(path: str | Path) -> int:
    """Bytes of the ONNX file plus any external-data files next to it."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    extra = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in extra)


def initializer_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Element counts of the initializers per dtype, named as torch's ("float32", "int8")."""
    counts: dict[str, int] = {}
    for init in model.graph.initializer:
        key = str(helper.tensor_dtype_to_np_dtype(init.data_type))
        counts[key] = counts.get(key, 0) + int(np.prod(init.dims, dtype=np.int64))
    return dict(sorted(counts.items()))


WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def weight_nodes(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Names of weight-carrying nodes split into (int8, float): int8 where the weight comes
    through a DequantizeLinear of an integer initializer (QDQ format)."""
    inits = {i.name: i.data_type for i in model.graph.initializer}
    int_types = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    dq = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    int8: list[str] = []
    floats: list[str] = []
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        weight = node.input[1]
        if weight in dq and inits.get(dq[weight]) in int_types:
            int8.append(node.name)
        elif weight in inits or weight in dq:
            floats.append(node.name)
    return int8, floats


def unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))
