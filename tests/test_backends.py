"""Runtimes as backends: what each one reports, and that nothing outside backends/ guesses it."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from torch import nn

from qbench import backends
from qbench.backends.onnxruntime.backend import OnnxRuntimeBackend
from qbench.backends.torch.backend import TorchBackend
from qbench.evaluate.synth import synth_images
from qbench.models.kinds import CLASSIFICATION, DETECTION
from qbench.quantize.torch_result import low_precision

WORKER = Path(__file__).resolve().parents[1] / "worker"


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5)).eval()


def test_torch_backend_reports_the_dtype_its_layers_run_in():
    from torch.ao.quantization import quantize_dynamic

    net = small_net()
    assert TorchBackend(net).executed_precision() == {"float32": 2}
    dyn = quantize_dynamic(net, {nn.Linear}, dtype=torch.qint8)
    assert TorchBackend(dyn).executed_precision() == {"float32": 1, "int8": 1}
    from qbench.models.base import LoadedModel

    loaded = LoadedModel("m", "m", "classification", net, (16, 16), 5)
    q = low_precision(loaded, "cpu", torch.bfloat16)
    assert q.runtime.executed_precision() == {"bfloat16": 2}
    assert q.runtime.label == q.backend == "torch-eager"


class _Reader(CalibrationDataReader):
    def __init__(self, images: torch.Tensor) -> None:
        self._it = iter([{"input": images[i:i + 1].numpy()} for i in range(len(images))])

    def get_next(self):
        return next(self._it, None)


def test_onnxruntime_backend_reads_precision_off_the_graph_it_runs(tmp_path):
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m_int8.onnx"
    torch.onnx.export(small_net(), (torch.rand(1, 3, 16, 16),), str(fp32), dynamo=False,
                      input_names=["input"], output_names=["logits"])
    quantize_static(str(fp32), str(int8), _Reader(synth_images(4, (16, 16), seed=1)),
                    quant_format=QuantFormat.QDQ, per_channel=True)
    assert OnnxRuntimeBackend(fp32).executed_precision() == {"float32": 2}
    ran = OnnxRuntimeBackend(int8).executed_precision()
    assert ran.get("int8", 0) >= 1 and sum(ran.values()) == 2, ran
    # the same session predicts in the task's structure
    out = OnnxRuntimeBackend(int8, reference_path=fp32).predict(CLASSIFICATION)(
        synth_images(2, (16, 16), seed=2))
    assert tuple(out.shape) == (2, 5)
    assert onnx.load(str(int8)).graph.node  # the file it ran stays where it was


def test_backend_facts_without_an_instance():
    assert set(backends.CONFIGS) == {"torch", "onnxruntime", "openvino"}
    assert backends.backend_class("torch") is TorchBackend
    assert backends.for_format("onnx") is OnnxRuntimeBackend
    assert TorchBackend.version().split("+")[0] == torch.__version__.split("+")[0]
    import onnxruntime

    assert OnnxRuntimeBackend.version() == onnxruntime.__version__
    assert "cpu" in OnnxRuntimeBackend.devices() and TorchBackend.devices() == ("cpu", "cuda")
    snippet = backends.for_format("onnx").load_snippet(DETECTION, "m.onnx", "images")
    assert "disabled_optimizers=['WeightBiasQuantization']" in snippet
    assert "boxes, labels, scores = session.run(None, {'images': image})" in snippet
    assert "torch.jit.load('m.pt')" in TorchBackend.load_snippet(CLASSIFICATION, "m.pt", None)
    import openvino

    openvino_backend = backends.for_format("openvino-ir")
    assert openvino_backend.name() == "openvino" and openvino_backend.devices() == ("cpu",)
    assert openvino_backend.version() == openvino.__version__.split("-")[0]
    assert "compile_model('ir/model.xml'" in openvino_backend.load_snippet(DETECTION, "m.tar", None)


# What used to guess the runtime from a result's type or attributes.
GUESSES = re.compile(r"_model_path|getattr\([^)]*[\"']onnx_path[\"']|__module__\.startswith\("
                     r"[\"']onnxruntime|isinstance\([^)]*InferenceSession")


def test_nothing_outside_backends_guesses_the_runtime():
    offenders = [f"{p.relative_to(WORKER)}:{n}" for p in WORKER.rglob("*.py")
                 if "backends" not in p.relative_to(WORKER).parts
                 for n, line in enumerate(p.read_text().splitlines(), 1) if GUESSES.search(line)]
    assert not offenders, offenders
