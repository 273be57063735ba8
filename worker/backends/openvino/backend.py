"""The OpenVINO backend: an OpenVINO model compiled for the CPU with qbench's properties.

The precision that ran is read off the compiled model's runtime graph (each executed
operator's runtimePrecision), not assumed from the mode's name: on a CPU with AMX an fp32
model left without a precision hint runs in bf16.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qbench.backends.base import Artifact, ArtifactError, Backend
from qbench.backends.onnxruntime.runtime import feeds
from qbench.backends.openvino import config

if TYPE_CHECKING:
    from qbench.backends.openvino.convert import Converted
    from qbench.inspect.record import LayerComparison
    from qbench.models.base import LoadedModel
    from qbench.models.kinds import TaskKind

# Runtime-graph layer types that carry weights (a conv or a matmul once the plugin fused it).
WEIGHT_LAYERS = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"}
# The plugin's precision names, named as torch's.
PRECISIONS = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "i8": "int8", "u8": "int8"}
REPORTED_PROPERTIES = ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS",
                       "PERFORMANCE_HINT", "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING")
IR_NAME = "model"  # model.xml and model.bin inside the artifact's tar


def cpu_has_bf16() -> tuple[bool, str]:
    """Whether OpenVINO's CPU plugin can run bf16 here, and what it reported."""
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in caps, ", ".join(caps)


def _property_text(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "get_type_name"):  # an element type: "f32", "bf16"
        return value.get_type_name()
    return str(getattr(value, "name", None) or value)


class OpenVinoBackend(Backend):
    """`converted.model` compiled with config.compile_properties(precision, threads)."""

    config = config
    label = "openvino"

    def __init__(self, converted: Converted, precision: str, threads: int | None = None,
                 compiled: Any | None = None) -> None:
        """compiled: a model someone else compiled from converted.model (NNCF's accuracy
        control hands its candidates so), run as given."""
        import openvino as ov

        self.converted = converted
        self.precision = precision
        self.properties = config.compile_properties(precision, threads or torch.get_num_threads())
        self.compiled = compiled if compiled is not None else ov.Core().compile_model(
            converted.model, "CPU", self.properties)

    def predict(self, kind: TaskKind) -> Callable[[torch.Tensor], Any]:
        """predict(batch) in the structure the kind's torch module returns."""
        compiled, info, names = self.compiled, self.converted.info, self.converted.output_names
        request = compiled.create_infer_request()

        def predict(batch: torch.Tensor) -> Any:
            runs = []
            for feed in feeds(info, batch):
                result = request.infer(list(feed.values()))
                runs.append([np.array(result[out]) for out in compiled.outputs])
            return kind.ort_outputs(runs, names, info.has_batch_dim)

        return predict

    def proposals_per_image(self, predict: Callable[[torch.Tensor], Any],
                            images: torch.Tensor) -> list[int] | None:
        """The wrapper's proposals output (a two-stage torchvision detector converted here)."""
        from qbench.backends.openvino.convert import PROPOSALS

        names = self.converted.output_names
        if PROPOSALS not in names:
            return None
        output = self.compiled.outputs[names.index(PROPOSALS)]
        request = self.compiled.create_infer_request()
        return [int(np.asarray(request.infer(list(feed.values()))[output]))
                for feed in feeds(self.converted.info, images)]

    def runtime_config(self) -> dict[str, Any]:
        """The properties the compiled model reports (what the plugin really took)."""
        return {key: _property_text(self.compiled.get_property(key))
                for key in REPORTED_PROPERTIES}

    @classmethod
    def load_snippet(cls, kind: TaskKind, file: str, input_name: str | None) -> str:
        return ("import tarfile, openvino as ov\n"
                f"tarfile.open({file!r}).extractall('ir', filter='data')\n"
                f"compiled = ov.Core().compile_model('ir/{IR_NAME}.xml', 'CPU', "
                "{'INFERENCE_PRECISION_HINT': 'f32'})  # as qbench ran it; ov_bf16: 'bf16'\n"
                "outputs = list(compiled([batch]).values())  # batch: float32 numpy "
                "[N, 3, H, W] in [0, 1]; a detector: one image [1, 3, H, W] -> boxes, labels, "
                "scores (+ proposals)")

    def artifact(self, kind: TaskKind, example: torch.Tensor,
                 predict: Callable[[torch.Tensor], Any]) -> Artifact:
        import openvino as ov

        with tempfile.TemporaryDirectory() as tmp:
            xml = Path(tmp) / f"{IR_NAME}.xml"
            ov.save_model(self.converted.model, str(xml), compress_to_fp16=False)
            blobs = {p.name: p.read_bytes() for p in (xml, xml.with_suffix(".bin"))}
        if not blobs[f"{IR_NAME}.bin"] and not blobs[f"{IR_NAME}.xml"]:
            raise ArtifactError("OpenVINO wrote an empty IR")

        def write(path: Path) -> None:
            with tarfile.open(path, "w") as tar:
                for name, data in blobs.items():
                    entry = tarfile.TarInfo(name)
                    entry.size = len(data)
                    tar.addfile(entry, io.BytesIO(data))

        return Artifact(config.ARTIFACT_FORMAT, write,
                        "artifact: the OpenVINO IR it compiled (model.xml and model.bin in a tar)")

    def compare_layers(self, loaded: LoadedModel, predict: Callable[[torch.Tensor], Any],
                       images: torch.Tensor, layers: str) -> LayerComparison:
        """The final outputs only (the output hexbins): a compiled model does not expose its
        intermediate tensors, so there are no layer rows."""
        from qbench.inspect.outputs import output_pairs
        from qbench.inspect.record import LayerComparison, image_hwc

        return LayerComparison(
            layers=[], image=image_hwc(images[0]),
            canvas=(float(images.shape[-2]), float(images.shape[-1])),
            outputs=output_pairs(loaded.kind, loaded.predict_fp32(images), predict(images)),
            note="OpenVINO: final outputs only (a compiled model's intermediate tensors are "
                 "not exposed)")

    def executed_precision(self) -> dict[str, int]:
        """Weight-carrying layers of the runtime graph by the precision the plugin ran them in."""
        counts: dict[str, int] = {}
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) not in WEIGHT_LAYERS:
                continue
            ran = info["runtimePrecision"].astype(str)
            key = PRECISIONS.get(ran, ran)
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))


BACKEND = OpenVinoBackend
