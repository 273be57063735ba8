"""bf16: bfloat16 weights and activations (CPU with AVX-512 BF16/AMX, or CUDA)."""

from __future__ import annotations

import torch

from qbench.models.base import LoadedModel
from qbench.quantize.registry import Quantized, QuantizeRequest, register
from qbench.quantize.torch_result import low_precision


@register("bf16")
def quantize_bf16(model: LoadedModel, request: QuantizeRequest) -> Quantized:
    return low_precision(model, request.device, torch.bfloat16)
