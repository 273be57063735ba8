"""fp32: the unmodified model, the reference every other mode is compared with."""

from __future__ import annotations

from worker.models.base import LoadedModel
from worker.quantize.common import (
    copy_to,
    make_predict,
    params_by_dtype,
    serialized_size_bytes,
    weight_modules,
)
from worker.quantize.registry import Quantized, QuantizeRequest, register


@register("fp32", devices=("cpu", "cuda"), description="float32 eager PyTorch (the reference)")
def quantize_fp32(model: LoadedModel, request: QuantizeRequest) -> Quantized:
    # On the CPU the loader's module is used as is; elsewhere a copy, so the CPU reference stays.
    module = model.module if request.device == "cpu" else copy_to(model.module, request.device)
    _, floats = weight_modules(module)
    return Quantized(
        predict=make_predict(model.task, module, request.device),
        backend="torch-eager",
        size_bytes=serialized_size_bytes(module),
        params_by_dtype=params_by_dtype(module),
        float_modules=floats,
        module=module,
    )
