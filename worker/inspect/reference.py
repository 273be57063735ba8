"""The fp32 side of an inspection, built with the same structure as the quantized model.

FX int8 fuses conv+bn+relu (and linear+relu) into one module named after the conv: its
output is the block's output, not the conv's. Comparing it with the fp32 conv would count
BN and ReLU as quantization error. So for FX-quantized models the reference is the fp32
model put through the same surgery and FX fusion, without quantization: numerically the fp32
model (BN folded in float), with every fused module under the same name as in the int8 model.
Other modes (bf16, fp16, int8_dynamic) keep the fp32 module structure: the reference is the
fp32 model itself.
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.ao.quantization.quantize_fx import fuse_fx

from qbench.models.base import LoadedModel
from qbench.quantize.parts import quantize_parts


def has_fx(module: nn.Module) -> bool:
    return any(isinstance(m, fx.GraphModule) for m in module.modules())


def _fuse(module: nn.Module, _example: tuple, _skip: list[str]) -> nn.Module:
    return fuse_fx(module.eval())


def _untouched(quant: nn.Module):
    """Whether a part of the quantized model was left float as a whole (no FX graph in it)."""
    def untouched(name: str) -> bool:
        try:
            part = quant.get_submodule(name)
        except AttributeError:
            return False
        return not has_fx(part)
    return untouched


def float_reference(loaded: LoadedModel, quant: nn.Module, images: torch.Tensor) -> nn.Module:
    """A float model whose layer names and boundaries match `quant`'s."""
    if not has_fx(quant):
        return loaded.module
    # The same parts as int8_static's, fused instead of quantized; the calibration pass
    # only runs.
    return quantize_parts(loaded.module, loaded.kind, loaded.input_size, _fuse, lambda m: m,
                          [images[:1]], [], keep_part=_untouched(quant)).module.eval()
