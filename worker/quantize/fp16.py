"""fp16: float16 weights and activations on CUDA (CPU half kernels are slow or missing)."""

from __future__ import annotations

import torch

from qbench.models.base import LoadedModel
from qbench.quantize.registry import Quantized, QuantizeRequest, register
from qbench.quantize.torch_result import low_precision


@register("fp16")
def quantize_fp16(model: LoadedModel, request: QuantizeRequest) -> Quantized:
    return low_precision(model, request.device, torch.float16)
