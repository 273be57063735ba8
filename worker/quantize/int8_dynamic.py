"""int8_dynamic: nn.Linear weights in int8, activations quantized per batch at run time.

Only Linear layers: dynamic quantization of convolutions was measured 6x slower than fp32 and
destroyed a detector's output, so conv-heavy models gain little here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

from qbench.models.base import LoadedModel
from qbench.quantize.common import (
    matches_keep_float,
    weight_modules,
)
from qbench.quantize.registry import Quantized, QuantizeRequest, register
from qbench.quantize.torch_result import torch_quantized


@register("int8_dynamic")
def quantize_int8_dynamic(model: LoadedModel, request: QuantizeRequest) -> Quantized:
    torch.backends.quantized.engine = "x86"
    linears = [n for n, m in model.module.named_modules() if isinstance(m, nn.Linear)]
    kept = {n: p for n in linears if (p := matches_keep_float(n, request.keep_float))}
    spec = {n: default_dynamic_qconfig for n in linears if n not in kept}
    module = quantize_dynamic(model.module, qconfig_spec=spec, dtype=torch.qint8).eval()
    int8, floats = weight_modules(module)
    notes = ["only nn.Linear layers are int8 (dynamic); convolutions stay float"]
    notes += [f"{n} kept float (keep_float {p!r})" for n, p in kept.items()]
    if not linears:
        notes.append("the model has no nn.Linear layer: nothing was quantized")
    return torch_quantized(model, module, "torch-dynamic-x86", "cpu", int8_modules=int8,
                           float_modules=floats, notes=notes)
