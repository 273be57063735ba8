"""bf16: bfloat16 weights and activations (CPU with AVX-512 BF16/AMX, or CUDA)."""

from __future__ import annotations

import torch

from worker.models.base import LoadedModel
from worker.quantize.common import low_precision
from worker.quantize.registry import Quantized, QuantizeRequest, register


@register("bf16", devices=("cpu", "cuda"), description="bfloat16 weights and activations")
def quantize_bf16(model: LoadedModel, request: QuantizeRequest) -> Quantized:
    return low_precision(model, request.device, torch.bfloat16)
