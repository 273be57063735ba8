"""fp32: the unmodified model, the reference every other mode is compared with."""

from __future__ import annotations

from qbench.models.base import LoadedModel
from qbench.quantize.common import (
    copy_to,
    weight_modules,
)
from qbench.quantize.registry import Quantized, QuantizeRequest, register
from qbench.quantize.torch_result import torch_quantized


@register("fp32")
def quantize_fp32(model: LoadedModel, request: QuantizeRequest) -> Quantized:
    # On the CPU the loader's module is used as is; elsewhere a copy, so the CPU reference stays.
    module = model.module if request.device == "cpu" else copy_to(model.module, request.device)
    _, floats = weight_modules(module)
    return torch_quantized(model, module, "torch-eager", request.device, float_modules=floats)
