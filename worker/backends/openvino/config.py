"""The OpenVINO backend as plain data (no openvino import): read by the mode table and validate."""

from __future__ import annotations

NAME = "openvino"
SOURCES = ("torchvision", "yolo", "onnx")  # a torch model is converted; an ONNX file is read
ARTIFACT_FORMAT = "openvino-ir"  # the IR's .xml and .bin in one uncompressed tar
DISTRIBUTIONS = ("openvino",)

# INFERENCE_PRECISION_HINT per mode precision. Without the hint, OpenVINO runs an fp32 model
# in bf16 on a CPU with AMX or AVX-512 BF16: every mode states the precision it asks for. An
# int8 mode's layers that stay float run in f32, as they do in the other runtimes' int8 modes.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32", "mixed": "f32"}


def devices() -> tuple[str, ...]:
    """The CPU plugin only: qbench's GPU queue runs CUDA devices, which OpenVINO does not."""
    return ("cpu",)


def compile_properties(precision: str, threads: int) -> dict[str, object]:
    """What every OpenVINO model qbench compiles is told. benchmark.threads means what it means
    for torch and ONNX Runtime: that many threads for one inference, one stream, latency
    first; no pinning, as neither torch nor ONNX Runtime pins its threads."""
    return {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
            "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
