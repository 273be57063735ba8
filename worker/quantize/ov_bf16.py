"""ov_bf16: the OpenVINO model compiled with INFERENCE_PRECISION_HINT bf16.

On a CPU whose OpenVINO plugin lists no BF16 capability (no AVX-512 BF16 or AMX) the plugin
would quietly run f32: the unit fails instead, naming what the CPU offers.
"""

from __future__ import annotations

from qbench.backends.openvino.backend import cpu_has_bf16
from qbench.backends.openvino.convert import convert
from qbench.errors import ModelError
from qbench.models.base import LoadedModel
from qbench.quantize.openvino_model import ov_quantized
from qbench.quantize.registry import Quantized, QuantizeRequest, register


@register("ov_bf16")
def quantize_ov_bf16(loaded: LoadedModel, request: QuantizeRequest) -> Quantized:
    has, capabilities = cpu_has_bf16()
    if not has:
        raise ModelError("ov_bf16: this CPU has no bf16 support in OpenVINO (it offers "
                         f"{capabilities}; bf16 needs AVX-512 BF16 or AMX)")
    return ov_quantized(loaded, convert(loaded, request.work_dir), "bf16", [])
