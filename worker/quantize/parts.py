"""Static int8 part by part: copy -> fold BN -> keep-float -> prepare -> calibrate -> convert.

The task kind says which submodules are quantized as separate graphs (`TaskKind.static_parts`:
a classifier is one part, the whole network; a Faster R-CNN its backbone, RPN head, box head
and predictor; YOLO, RetinaNet and SSD their largest traceable submodules). Each part gets its
own quant/dequant borders; everything outside the parts stays float. The handler passes
`prepare`/`convert`, so the quantization API (FX today) is chosen there; inspection passes
FX fusion and the identity to build a float reference with the same structure.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from qbench.models.kinds import Part, TaskKind
from qbench.quantize.common import keep_float_inside, matches_keep_float, weight_modules

# prepare(module, example_inputs, names of submodules to keep float) -> observed module
Prepare = Callable[[nn.Module, tuple, list[str]], nn.Module]
Convert = Callable[[nn.Module], nn.Module]

WEIGHT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def frozen_bn_to_bn(module: nn.Module) -> None:
    """Replace FrozenBatchNorm2d by eval BatchNorm2d with the same statistics, in place.

    FX fusion patterns know BatchNorm2d only; fused conv+bn+relu is what makes int8 fast.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, FrozenBatchNorm2d):
            bn = nn.BatchNorm2d(child.weight.numel(), eps=child.eps)
            with torch.no_grad():
                bn.weight.copy_(child.weight)
                bn.bias.copy_(child.bias)
                bn.running_mean.copy_(child.running_mean)
                bn.running_var.copy_(child.running_var)
            setattr(module, name, bn.eval())
        else:
            frozen_bn_to_bn(child)


@dataclass
class PartsResult:
    module: nn.Module
    int8_modules: list[str] = field(default_factory=list)
    float_modules: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _join(prefix: str, name: str) -> str:
    return ".".join(p for p in (prefix, name) if p)


def _under(name: str, roots: Iterable[str]) -> bool:
    return any(r == "" or name == r or name.startswith(r + ".") for r in roots)


def _record_inputs(kind: TaskKind, model: nn.Module, image: torch.Tensor) -> dict[str, tuple]:
    """Positional inputs of each submodule's first call on one image."""
    seen: dict[str, tuple] = {}
    hooks = []
    for name, sub in model.named_modules():
        def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
            seen.setdefault(name, args)
        hooks.append(sub.register_forward_pre_hook(hook))
    try:
        kind.run(model, image)
    finally:
        for h in hooks:
            h.remove()
    return seen


class _Model:
    """The copy being quantized; installing at "" replaces the whole model."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def install(self, part: Part, new: nn.Module) -> None:
        if part.install is not None:
            part.install(new)
            return
        if not part.name:
            self.module = new
            return
        parent_name, _, attr = part.name.rpartition(".")
        parent = self.module.get_submodule(parent_name) if parent_name else self.module
        # Plain attributes callers read on the module (ultralytics routes layers by .f and .i).
        for key, value in vars(part.module).items():
            if not key.startswith("_") and not hasattr(new, key):
                setattr(new, key, value)
        setattr(parent, attr, new)


def quantize_parts(module: nn.Module, kind: TaskKind, input_size: tuple[int, int],
                   prepare: Prepare, convert: Convert, batches: Iterable[torch.Tensor],
                   keep_float: list[str],
                   keep_part: Callable[[str], bool] | None = None) -> PartsResult:
    """A quantized copy of `module` (left untouched); keep_part(name) leaves a part float."""
    target = _Model(copy.deepcopy(module).eval())
    frozen_bn_to_bn(target.module)
    plan = kind.static_parts(target.module, input_size)
    batches = list(batches)
    result = PartsResult(target.module, notes=list(plan.notes))
    examples: dict[str, tuple] = {}
    if any(p.example is None for p in plan.parts):
        if not batches:
            raise ValueError("int8_static: calibration yielded no images")
        examples = _record_inputs(kind, target.module, batches[0][:1])
    observed: list[tuple[Part, nn.Module, bool]] = []

    def visit(part: Part) -> None:
        if not weight_modules(part.module)[1]:
            return
        pattern = part.name and matches_keep_float(part.name, keep_float)
        if pattern or (keep_part is not None and keep_part(part.name)):
            result.float_modules += weight_modules(part.module, part.name)[1]
            if pattern:
                result.notes.append(f"{part.name} kept float (keep_float {pattern!r})")
            return
        skip = keep_float_inside(part.module, part.name, keep_float)
        # A bare conv/linear traced as the root becomes a functional op that no module list
        # can see: wrap it, so it converts to a quantized module named "<name>.0".
        leaf = isinstance(part.module, WEIGHT_TYPES)
        example = part.example if part.example is not None else examples.get(part.name)
        try:
            if example is None:  # never called itself (a ModuleList): try its children
                raise LookupError(part.name)
            obs = prepare(nn.Sequential(part.module) if leaf else part.module, example,
                          list(skip))
        except Exception:
            if not part.split:
                raise
            children = list(part.module.named_children())
            if not children:
                result.float_modules += weight_modules(part.module, part.name)[1]
                result.notes.append(f"{part.name} stays float: FX cannot trace it")
            for child, sub in children:
                visit(Part(_join(part.name, child), sub, split=True))
            return
        result.notes += [f"{_join(part.name, n)} kept float (keep_float {p!r})"
                         for n, p in skip.items()]
        target.install(part, obs)
        observed.append((part, obs, leaf))

    for part in plan.parts:
        visit(part)

    # One pass of the whole model calibrates every part on the inputs it really gets.
    n = 0
    for batch in batches:
        kind.run(target.module, batch)
        n += batch.shape[0]
    if observed and n == 0:
        raise ValueError("int8_static: calibration yielded no images")

    for part, obs, leaf in observed:
        quantized = convert(obs)
        target.install(part, quantized)
        int8, floats = weight_modules(quantized, part.name)
        if leaf:
            int8 = [part.name if m == f"{part.name}.0" else m for m in int8]
            floats = [part.name if m == f"{part.name}.0" else m for m in floats]
        result.int8_modules += int8
        result.float_modules += floats
    result.module = target.module
    done = [p.name for p, *_ in observed]
    result.float_modules += [m for m in weight_modules(target.module)[1]
                             if not _under(m, done) and m not in result.float_modules]
    if plan.separate_graphs:
        result.notes.append(f"{len(done)} submodules quantized separately, each with its own "
                            "quant/dequant at its borders")
    return result
