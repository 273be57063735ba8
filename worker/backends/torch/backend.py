"""The torch backend: a torch module run eagerly (fp32, fp16/bf16, torch.ao int8) or compiled.

Its artifact is a TorchScript program checked against the benchmarked module on an example
image; inspection hooks the module's layers directly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.ao.nn.quantized import dynamic as nnqd

from qbench.backends.base import Artifact, ArtifactError, Backend
from qbench.backends.torch import config
from qbench.backends.torch.torchscript import max_difference, run_program, to_torchscript

if TYPE_CHECKING:
    from qbench.inspect.record import LayerComparison
    from qbench.models.base import LoadedModel
    from qbench.models.kinds import TaskKind

# A saved program must reproduce the benchmarked outputs: same kernels, so on the CPU the
# difference is 0; the bound only absorbs fusions TorchScript may do on a GPU.
RELATIVE_TOLERANCE = 1e-5

_FLOAT_WEIGHT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
_INT8_WEIGHT_TYPES = (nnq.modules.conv._ConvNd, nnq.Linear, nnqd.Linear)


class TorchBackend(Backend):
    """A torch module; label: "torch-eager", "torch-fx-x86" (torch.ao FX int8) or
    "torch-inductor" (torch.compile; `module` is then the eager module it compiled)."""

    config = config

    def __init__(self, module: nn.Module, label: str = "torch-eager") -> None:
        self._module = module
        self.label = label

    @property
    def module(self) -> nn.Module:
        return self._module

    @classmethod
    def load_snippet(cls, kind: TaskKind, file: str, input_name: str | None) -> str:
        return kind.torchscript_usage(file)

    def artifact(self, kind: TaskKind, example: torch.Tensor,
                 predict: Callable[[torch.Tensor], Any]) -> Artifact:
        program, traced = to_torchscript(self._module, kind, example)
        diff = max_difference(predict(example), run_program(program, kind, example))
        if diff > RELATIVE_TOLERANCE:
            raise ArtifactError(f"the TorchScript program differs from the benchmarked model on "
                                f"an example image (max |diff| {diff:.3g})")

        def write(tmp: Path) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "torch.jit.save is deprecated"
                torch.jit.save(program, str(tmp))

        how = f"traced parts: {', '.join(traced)}" if traced else "scripted"
        return Artifact(config.ARTIFACT_FORMAT, write, f"artifact: TorchScript ({how})")

    def compare_layers(self, loaded: LoadedModel, predict: Callable[[torch.Tensor], Any],
                       images: torch.Tensor, layers: str) -> LayerComparison:
        from qbench.inspect.capture import compare_torch
        from qbench.inspect.outputs import output_pairs
        from qbench.inspect.reference import float_reference

        ref = float_reference(loaded, self._module, images)
        comp = compare_torch(ref, self._module, predict, loaded.kind, images, layers)
        comp.outputs = output_pairs(loaded.kind, loaded.predict_fp32(images), predict(images))
        return comp

    def proposals_per_image(self, predict: Callable[[torch.Tensor], Any],
                            images: torch.Tensor) -> list[int] | None:
        """Read at the RoI heads' input (the proposals the RPN hands them) by a hook."""
        roi_heads = getattr(self._module, "roi_heads", None)
        if roi_heads is None or not hasattr(self._module, "rpn"):
            return None
        counts: list[int] = []

        def count(_module: nn.Module, args: tuple) -> None:
            counts.extend(len(p) for p in args[1])  # roi_heads(features, proposals, sizes)

        handle = roi_heads.register_forward_pre_hook(count)
        try:
            predict(images)
        finally:
            handle.remove()
        return counts

    def executed_precision(self) -> dict[str, int]:
        """Conv/linear layers by the dtype their weights are stored and run in: torch.ao int8
        modules as "int8", float layers by their parameter dtype (a bf16/fp16 cast shows)."""
        counts: dict[str, int] = {}
        for sub in self._module.modules():
            if isinstance(sub, _INT8_WEIGHT_TYPES):
                key = "int8"
            elif isinstance(sub, _FLOAT_WEIGHT_TYPES):
                key = str(sub.weight.dtype).removeprefix("torch.")
            else:
                continue
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))


BACKEND = TorchBackend
