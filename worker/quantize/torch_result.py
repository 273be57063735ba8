"""A torch mode's result: a Quantized on the torch backend, its facts read off the module."""

from __future__ import annotations

import torch
from torch import nn

from qbench.backends.torch.backend import TorchBackend
from qbench.backends.torch.runtime import CastIO, make_predict
from qbench.models.base import LoadedModel
from qbench.quantize.common import copy_to, params_by_dtype, serialized_size_bytes, weight_modules
from qbench.quantize.registry import Quantized


def low_precision(model: LoadedModel, device: str, dtype: torch.dtype) -> Quantized:
    """fp16/bf16: the whole model, or only the parts its kind names (a detector's
    weight-carrying parts: torchvision's NMS has no bf16 kernel, box coordinates need float32)."""
    module = copy_to(model.module, device)
    name = str(dtype).removeprefix("torch.")
    plan = model.kind.low_precision_parts(module)
    if plan is not None:
        paths, why = plan
        cast = []
        for path in paths:
            parent_path, _, attr = path.rpartition(".")
            parent = module.get_submodule(parent_path) if parent_path else module
            sub = getattr(parent, attr, None)
            if isinstance(sub, nn.Module):
                setattr(parent, attr, CastIO(sub.to(dtype), dtype))
                cast.append(path)
        notes = f"{', '.join(cast)} in {name}; {why}"
        predict = make_predict(model.kind, module, device)
    else:
        module = module.to(dtype)
        notes = f"all layers in {name}; outputs cast back to float32"
        predict = make_predict(model.kind, module, device, dtype)
    return Quantized(
        predict=predict,
        backend="torch-eager",
        size_bytes=serialized_size_bytes(module),
        params_by_dtype=params_by_dtype(module),
        float_modules=weight_modules(model.module)[1],
        notes=notes,
        runtime=TorchBackend(module),
    )


def torch_quantized(model: LoadedModel, module: nn.Module, backend: str, device: str, *,
                    int8_modules: list[str] | None = None, float_modules: list[str] | None = None,
                    notes: list[str] | None = None, per_image: bool = False) -> Quantized:
    """A Quantized for a torch module: size and dtype counts read off the module itself."""
    return Quantized(
        predict=make_predict(model.kind, module, device, per_image=per_image),
        backend=backend,
        size_bytes=serialized_size_bytes(module),
        params_by_dtype=params_by_dtype(module),
        int8_modules=int8_modules or [],
        float_modules=float_modules or [],
        notes="; ".join(notes or []),
        runtime=TorchBackend(module, backend),
    )
