"""fp16: float16 weights and activations on CUDA (CPU half kernels are slow or missing)."""

from __future__ import annotations

import torch

from worker.models.base import LoadedModel
from worker.quantize.common import low_precision
from worker.quantize.registry import Quantized, QuantizeRequest, register


@register("fp16", devices=("cuda",), description="float16 weights and activations (CUDA)")
def quantize_fp16(model: LoadedModel, request: QuantizeRequest) -> Quantized:
    return low_precision(model, request.device, torch.float16)
