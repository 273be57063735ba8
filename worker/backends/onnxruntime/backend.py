"""The ONNX Runtime backend: an ONNX file (exported from torch, or given) run by a session.

A session cannot be hooked, so inspection compares the fp32 and the quantized ONNX files node
by node; the artifact is the file the session ran.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import torch

from qbench.backends.base import Artifact, ArtifactError, Backend
from qbench.backends.onnxruntime import config
from qbench.backends.onnxruntime.runtime import input_info, make_ort_predict, session

if TYPE_CHECKING:
    from qbench.inspect.record import LayerComparison
    from qbench.models.base import LoadedModel
    from qbench.models.kinds import TaskKind

# Operators that compute in int8 once ORT has fused a QDQ graph (QLinear*, integer kernels),
# and the weight-carrying float operators they replace.
INT8_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
            "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention"}
FLOAT_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm",
                    "FusedMatMul", "NhwcConv"}


class OnnxRuntimeBackend(Backend):
    """A session over `model_path`; `reference_path`: the fp32 ONNX file it was quantized
    from, with matching node names (inspection compares the two)."""

    config = config
    label = "onnxruntime"

    def __init__(self, model_path: str | Path, device: str = "cpu",
                 reference_path: str | Path | None = None) -> None:
        self.model_path = Path(model_path)
        self.device = device
        self.reference_path = Path(reference_path) if reference_path else None
        self._session = None

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = session(self.model_path, self.device)
        return self._session

    def predict(self, kind: TaskKind | str) -> Callable[[torch.Tensor], Any]:
        """predict(batch) in the structure the kind's torch module returns."""
        return make_ort_predict(self.session, input_info(self.model_path), kind)

    @classmethod
    def load_snippet(cls, kind: TaskKind, file: str, input_name: str | None) -> str:
        # without disabled_optimizers ORT re-quantizes the layers kept float when it loads it
        return ("import onnxruntime as ort\n"
                f"session = ort.InferenceSession({file!r}, "
                f"disabled_optimizers={config.DISABLED_OPTIMIZERS!r})\n"
                + kind.onnx_usage(input_name or "input"))

    def artifact(self, kind: TaskKind, example: torch.Tensor,
                 predict: Callable[[torch.Tensor], Any]) -> Artifact:
        src = self.model_path
        if not src.is_file():
            raise ArtifactError(f"backend {self.label}: the ONNX file it ran is gone ({src.name})")
        graph = onnx.load(str(src), load_external_data=False)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer):
            raise ArtifactError(f"{src.name} keeps its weights in external data files; only "
                                "single-file ONNX models are saved")
        return Artifact(config.ARTIFACT_FORMAT, lambda tmp: shutil.copyfile(src, tmp),
                        "artifact: the ONNX file ONNX Runtime ran")

    def compare_layers(self, loaded: LoadedModel, predict: Callable[[torch.Tensor], Any],
                       images: torch.Tensor, layers: str) -> LayerComparison:
        """Layers from the two ONNX files; rows named as torch modules where the model came
        from torch; final outputs from the fp32 torch model vs the session, as for torch."""
        from qbench.backends.onnxruntime.export import module_names, node_module
        from qbench.inspect.onnx_compare import compare_onnx
        from qbench.inspect.outputs import output_pairs

        if self.reference_path is None:
            raise ValueError("inspect: an ONNX Runtime result needs the fp32 ONNX file it was "
                             "quantized from (reference_path): a session cannot be hooked")
        from_torch = loaded.onnx_path is None
        modules = module_names(loaded.module) if from_torch else None
        comp = compare_onnx(self.reference_path, self.model_path, images, layers,
                            rename=lambda node: node_module(node, modules))
        if from_torch:
            comp.outputs = output_pairs(loaded.kind, loaded.predict_fp32(images), predict(images))
        if loaded.kind.teacher_forcing:
            # No teacher forcing in a session: the RoI heads would compare different boxes.
            comp.drop("roi_heads.", "RoI heads of the two ONNX models pool different proposals")
            comp.note = "ONNX: RoI heads left out (each model pools its own proposals)"
        return comp

    def executed_precision(self) -> dict[str, int]:
        """Weight-carrying operators of the graph the session really runs (ORT's optimized
        graph, after its QDQ fusions) by precision: int8 kernels, or the float type they
        compute in."""
        with tempfile.TemporaryDirectory() as tmp:
            optimized = Path(tmp) / "optimized.onnx"
            session(self.model_path, self.device, optimized_to=optimized)
            graph = onnx.load(str(optimized), load_external_data=False).graph
        types = {v.name: v.type.tensor_type.elem_type
                 for v in [*graph.value_info, *graph.input, *graph.output]}
        types.update({i.name: i.data_type for i in graph.initializer})
        counts: dict[str, int] = {}
        for node in graph.node:
            if node.op_type in INT8_OPS:
                key = "int8"
            elif node.op_type in FLOAT_WEIGHT_OPS:
                elem = types.get(node.input[1]) if len(node.input) > 1 else None
                key = (onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem
                       else "float32")
            else:
                continue
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))


BACKEND = OnnxRuntimeBackend
