"""Forward hooks on conv/linear layers of an fp32 model and a quantized one, paired by name.

Names are the fp32 model's qualified names: wrappers that quantization adds (CastIO's
`.module`, PerLevelRPNHead's `.level`) are left out of the path, and FX keeps a fused
module under the name of the conv or linear it replaced. Layers are ordered by their first
call in the fp32 run (network order).

Images run one at a time: only one image's fp32 activations are held at once, and each
quantized output is compared as soon as it is produced. In a two-stage detector the RoI heads
only line up when both models pool the same boxes, so the quantized model is given the fp32
model's proposals (teacher forcing); its final outputs are compared separately, unforced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.ao.nn.intrinsic.modules.fused import _FusedModule

from qbench.backends.torch.runtime import CastIO
from qbench.inspect.record import LayerComparison, LayerRecord, image_hwc
from qbench.models.kinds import TaskKind, as_kind
from qbench.models.kinds.detection import PerLevelRPNHead

log = logging.getLogger(__name__)

_CONV = (nn.modules.conv._ConvNd, nnq.modules.conv._ConvNd)
_LINEAR = (nn.Linear, nnq.Linear)  # nnq.dynamic.Linear subclasses nnq.Linear
_WRAPPERS = ((CastIO, "module"), (PerLevelRPNHead, "level"))
FORCED_NOTE = "RoI heads of both models run on the fp32 proposals"
KINDS = {"conv": ("conv",), "linear": ("linear",), "all": ("conv", "linear")}


def layer_kind(module: nn.Module) -> str | None:
    if isinstance(module, _FusedModule):  # float conv+relu etc.: the kind of its first op
        module = module[0]
    if isinstance(module, _CONV):
        return "conv"
    if isinstance(module, _LINEAR):
        return "linear"
    return None


def named_layers(module: nn.Module, layers: str = "all") -> dict[str, tuple[str, nn.Module]]:
    """{name without wrapper segments: (kind, module)} of the layers of the chosen kinds."""
    kinds = KINDS[layers]
    found: dict[str, tuple[str, nn.Module]] = {}

    def walk(parent: nn.Module, prefix: str) -> None:
        for child_name, child in parent.named_children():
            wrapped = any(isinstance(parent, t) and child_name == a for t, a in _WRAPPERS)
            name = prefix if wrapped else ".".join(p for p in (prefix, child_name) if p)
            kind = layer_kind(child)
            if kind is None:
                walk(child, name)
            elif kind in kinds:
                found[name] = (kind, child)

    walk(module, "")
    return found


def _as_float(out: Any, keep: bool = False) -> torch.Tensor | None:
    """A float CPU copy of a layer output; `keep`: it must survive the rest of the forward
    (an in-place ReLU after a conv would otherwise overwrite the kept fp32 output)."""
    if not isinstance(out, torch.Tensor):
        return None
    t = (out.dequantize() if out.is_quantized else out).detach().float().cpu()
    return t.clone() if keep and t.data_ptr() == out.data_ptr() else t


@contextmanager
def _hooks(pairs: list[tuple[nn.Module, Callable]]) -> Iterator[None]:
    handles = [m.register_forward_hook(fn) for m, fn in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _canvas_hook(image: torch.Tensor, seen: dict) -> Callable:
    """A hook on a detector's transform: the padded canvas it builds, in image pixels."""
    h, w = image.shape[-2:]

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        image_list = out[0]
        rh, rw = image_list.image_sizes[0]
        ch, cw = image_list.tensors.shape[-2:]
        seen["canvas"] = (ch * h / rh, cw * w / rw)

    return hook


class _Pairing:
    """State of one fp32 vs quantized comparison, fed one image at a time."""

    def __init__(self, ref: nn.Module, quant: nn.Module, kind: TaskKind, layers: str) -> None:
        self.ref, self.quant, self.kind = ref, quant, kind
        self.ref_layers, self.q_layers = named_layers(ref, layers), named_layers(quant, layers)
        self.records: dict[str, LayerRecord] = {}
        self.skipped = {n: "only in the quantized model"
                        for n in self.q_layers.keys() - self.ref_layers.keys()}
        self.forcing = kind.teacher_forcing and hasattr(ref, "rpn") and hasattr(quant, "rpn")
        self.seen: dict[str, tuple[float, float]] = {}
        # Per image: fp32 outputs per layer and call, fp32 proposals, quantized call counts.
        self.outs: dict[str, list[torch.Tensor | None]] = {}
        self.proposals: list[Any] = []
        self.calls: dict[str, int] = {}
        self.first_image = True

    def _save(self, name: str) -> Callable:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            t = _as_float(out, keep=True)
            if t is None:
                return
            if name not in self.records:
                self.records[name] = LayerRecord(name, self.ref_layers[name][0], len(self.records))
            self.outs.setdefault(name, []).append(t)
        return hook

    def _compare(self, name: str) -> Callable:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            k = self.calls[name] = self.calls.get(name, 0) + 1
            q, rec, pending = _as_float(out), self.records.get(name), self.outs.get(name, [])
            if q is None or rec is None or k > len(pending):
                self.skipped.setdefault(name, "called more often than in fp32 or not a tensor")
                return
            x, pending[k - 1] = pending[k - 1], None  # freed as soon as compared
            if x.shape != q.shape:
                self.skipped.setdefault(name, f"shape {tuple(x.shape)} vs {tuple(q.shape)}")
                return
            rec.update(x, q, first=self.first_image and k == 1)
        return hook

    def _force(self, _m: nn.Module, _i: Any, out: Any) -> Any:
        device = out[0][0].device if out[0] else "cpu"
        return [b.to(device) for b in self.proposals[0]], out[1]

    def run(self, image: torch.Tensor, predict: Callable[[torch.Tensor], Any]) -> None:
        self.outs, self.proposals, self.calls = {}, [], {}
        ref_hooks = [(m, self._save(n)) for n, (_, m) in self.ref_layers.items()]
        if self.forcing:
            ref_hooks.append((self.ref.rpn, lambda _m, _i, out: self.proposals.append(out[0])))
        if self.first_image and self.kind.resizes_inside and hasattr(self.ref, "transform"):
            ref_hooks.append((self.ref.transform, _canvas_hook(image[0], self.seen)))
        with _hooks(ref_hooks):
            self.kind.run(self.ref, image)
        q_hooks = [(m, self._compare(n)) for n, (_, m) in self.q_layers.items()
                   if n in self.ref_layers]
        if self.forcing and self.proposals:
            q_hooks.append((self.quant.rpn, self._force))
        with _hooks(q_hooks):
            predict(image)
        self.first_image = False

    def result(self, images: torch.Tensor) -> LayerComparison:
        for name in self.ref_layers.keys() - self.q_layers.keys():
            if name in self.records:
                self.skipped[name] = "only in the fp32 model"
        kept = sorted((r for r in self.records.values()
                       if r.name not in self.skipped and r.stats.count), key=lambda r: r.index)
        for new_index, rec in enumerate(kept):
            rec.index = new_index
        if self.skipped:
            log.info("inspect: %d layers not paired: %s", len(self.skipped), sorted(self.skipped)[:10])
        h, w = images.shape[-2:]
        return LayerComparison(layers=kept, image=image_hwc(images[0]),
                          canvas=self.seen.get("canvas", (float(h), float(w))),
                          skipped=[f"{n}: {why}" for n, why in sorted(self.skipped.items())],
                          note=FORCED_NOTE if self.forcing else "")


def compare_torch(ref: nn.Module, quant: nn.Module, predict: Callable[[torch.Tensor], Any],
                  task: TaskKind | str, images: torch.Tensor, layers: str) -> LayerComparison:
    """Run `ref` (fp32) and `predict` (which runs `quant`) on each image and compare layers."""
    if images.shape[0] == 0:
        raise ValueError("inspect: no images")
    pairing = _Pairing(ref, quant, as_kind(task), layers)
    for image in images.split(1):
        pairing.run(image, predict)
    return pairing.result(images)
