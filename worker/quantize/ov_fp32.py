"""ov_fp32: the model converted to OpenVINO (or an ONNX file read) and run in float32.

INFERENCE_PRECISION_HINT f32 is forced: left alone, OpenVINO runs an fp32 model in bf16 on a
CPU with AMX or AVX-512 BF16, which is neither fp32's accuracy nor its speed.
"""

from __future__ import annotations

from qbench.backends.openvino.convert import convert
from qbench.models.base import LoadedModel
from qbench.quantize.openvino_model import ov_quantized
from qbench.quantize.registry import Quantized, QuantizeRequest, register


@register("ov_fp32")
def quantize_ov_fp32(loaded: LoadedModel, request: QuantizeRequest) -> Quantized:
    return ov_quantized(loaded, convert(loaded, request.work_dir), "fp32", [])
