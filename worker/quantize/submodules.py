"""Static int8 of models FX cannot trace whole (RetinaNet, SSD, YOLO): the largest traceable
submodules are quantized one by one, each behind its own quant/dequant borders.

From each root module down: prepare it with FX; where tracing fails (list inputs, shape
unpacking, data-dependent control flow), try its children instead. Example inputs are recorded
with hooks on one calibration image, so each submodule is traced on what it really receives.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from worker.models.base import run_task
from worker.quantize.common import matches_keep_float, weight_modules
from worker.quantize.detection_parts import Convert, DetectorResult, Prepare, frozen_bn_to_bn

WEIGHT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def _has_weights(module: nn.Module) -> bool:
    return bool(weight_modules(module)[1])


def _record_inputs(model: nn.Module, task: str, image: torch.Tensor) -> dict[str, tuple]:
    """Positional inputs of each submodule's first call on one image."""
    seen: dict[str, tuple] = {}
    hooks = []
    for name, sub in model.named_modules():
        def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
            seen.setdefault(name, args)
        hooks.append(sub.register_forward_pre_hook(hook))
    try:
        run_task(task, model, image)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _install(model: nn.Module, name: str, new: nn.Module, old: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    # Plain attributes callers read on the module (ultralytics routes layers by .f and .i).
    for key, value in vars(old).items():
        if not key.startswith("_") and not hasattr(new, key):
            setattr(new, key, value)
    setattr(parent, attr, new)


def quantize_submodules(module: nn.Module, task: str, roots: Iterable[str], prepare: Prepare,
                        convert: Convert, batches: Iterable[torch.Tensor],
                        keep_float: list[str]) -> DetectorResult:
    """A quantized copy of `module`; everything outside `roots` stays float."""
    model = copy.deepcopy(module).eval()
    frozen_bn_to_bn(model)
    batches = list(batches)
    if not batches:
        raise ValueError("int8_static: calibration yielded no images")
    examples = _record_inputs(model, task, batches[0][:1])
    result = DetectorResult(model)
    observed: list[tuple[str, nn.Module, nn.Module, bool]] = []

    def visit(name: str) -> None:
        sub = model.get_submodule(name)
        if not _has_weights(sub):
            return
        pattern = matches_keep_float(name, keep_float)
        if pattern:
            result.float_modules += weight_modules(sub, name)[1]
            result.notes.append(f"{name} kept float (keep_float {pattern!r})")
            return
        skip = [n for n, _ in sub.named_modules() if n and matches_keep_float(f"{name}.{n}",
                                                                            keep_float)]
        # A bare conv/linear traced as the root becomes a functional op that no module list
        # can see: wrap it, so it converts to a quantized module named "<name>.0".
        leaf = isinstance(sub, WEIGHT_TYPES)
        try:
            if name not in examples:  # never called itself (a ModuleList): try its children
                raise LookupError(name)
            obs = prepare(nn.Sequential(sub) if leaf else sub, examples[name], skip)
        except Exception:  # not traceable as a whole: its children may be
            children = [f"{name}.{c}" for c, _ in sub.named_children()]
            if not children:
                result.float_modules += weight_modules(sub, name)[1]
                result.notes.append(f"{name} stays float: FX cannot trace it")
            for child in children:
                visit(child)
            return
        result.notes += [f"{name}.{n} kept float (keep_float)" for n in skip]
        _install(model, name, obs, sub)
        observed.append((name, obs, sub, leaf))

    for root in roots:
        visit(root)
    for batch in batches:
        run_task(task, model, batch)
    for name, obs, old, leaf in observed:
        quantized = convert(obs)
        _install(model, name, quantized, old)
        int8, floats = weight_modules(quantized, name)
        if leaf:
            int8 = [name if n == f"{name}.0" else n for n in int8]
            floats = [name if n == f"{name}.0" else n for n in floats]
        result.int8_modules += int8
        result.float_modules += floats
    done = [name for name, *_ in observed]
    result.float_modules += [n for n in weight_modules(model)[1]
                             if not any(n == d or n.startswith(d + ".") for d in done)
                             and n not in result.float_modules]
    result.notes.append(f"{len(done)} submodules quantized separately, each with its own "
                        "quant/dequant at its borders")
    return result



def submodule_roots(task: str, module: nn.Module) -> list[str]:
    """Where to start: a detector's backbone and head (anchors, transform and postprocessing
    stay float); a YOLO network's layers, but in its Detect head only the conv branches (the
    DFL expectation over softmax bins stays float: int8 would coarsen every box edge); else
    the model's children."""
    if task == "yolo":
        layers = module.get_submodule("model.model")
        last = len(layers) - 1
        return [f"model.model.{i}" for i in range(last)] + [
            f"model.model.{last}.{c}" for c, _ in layers[last].named_children() if c != "dfl"]
    if task == "detection":
        return [r for r in ("backbone", "head") if hasattr(module, r)]
    return [c for c, _ in module.named_children()]
