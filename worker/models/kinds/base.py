"""TaskKind: what differs between model families, in one object per task.

A loader (worker/models/*.py) builds the fp32 module and names its task; `LoadedModel.kind` is
the object of that task, and every step asks it rather than comparing task names:

- feeding:     `run(module, batch, per_image=False)` runs a torch module on an NCHW batch in
               [0, 1] and returns outputs in qbench's structure (per-image detection dicts, a
               logits tensor, raw network tensors); `per_image_outputs(result)` splits them into
               one CPU float item per image for evaluation.
- export:      `example_call` / `program_outputs` (TorchScript artifacts), `onnx_per_image` and
               `ort_outputs` (ONNX export and ORT sessions returning torch's structure),
               `torchscript_usage` / `onnx_usage` (the task's part of the export card's "how
               to load it without qbench"; the backend writes the rest).
- pairing:     `output_pairs` (fp32 vs quantized values for the hexbins),
               `agreement_score` (int8_mixed's score without a dataset).
- quantizing:  `static_parts` (which submodules int8_static quantizes as separate graphs,
               worker/quantize/parts.py runs them), `low_precision_parts` (bf16/fp16),
               `ort_int8_scope` (ONNX nodes int8 may touch), `batch_plan` (a batch run image by
               image when that is faster).
- evaluation:  `dataset_formats` (which datasets it is scored on), `evaluation_columns` (the
               `models` row's accuracy and agreement columns), `scores_map` (int8_mixed may aim
               at an mAP drop).

Where the next pieces go: a model's own input preprocessing belongs in front of `run` (one
`preprocess(images)` method applied to every batch: calibration, evaluation, inspection and
the benchmark input alike), and a decoder from raw outputs to boxes belongs behind it
(`decode(outputs)`, used by `per_image_outputs` and `output_pairs`), both on the kind, chosen
by the manifest. A new task is one module in this package registered in `KINDS` (see
`worker/models/kinds/__init__.py`) and its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from qbench.tensors import tensors_of

Pairs = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass
class Part:
    """A submodule int8_static quantizes as its own graph.

    module: what FX traces (children named as in the model, so names map back); example:
    its positional inputs, or None to record them from one calibration image; install: puts a
    replacement in place (None: set it at `name`, keeping the attributes callers read);
    split: where tracing fails, try the children instead (else the failure is raised).
    """

    name: str  # qualified name in the model; "" is the whole model
    module: nn.Module
    example: tuple | None = None
    install: Callable[[nn.Module], None] | None = None
    split: bool = False


@dataclass
class PartPlan:
    parts: list[Part]
    notes: list[str]  # what stays float outside the parts, and why
    separate_graphs: bool = False  # say in the notes how many parts became their own graph


def _flat_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().reshape(-1).numpy()


class TaskKind:
    """A tensor-in, tensor-out model (the defaults); subclasses override what differs."""

    name = "tensor"
    default_classes = 0
    dataset_formats: tuple[str, ...] = ()  # manifest dataset.format values it is scored on
    # Raw outputs, decoded by the manifest's `outputs` block (worker/decode/) to be scored.
    decodes_outputs = False
    labels_are_category_ids = False  # output label i is COCO category id i (torchvision)
    scores_map = False  # int8_mixed's max_map_drop: scored as mAP on the calibration split
    agreement_name = "mean cosine similarity of the outputs with fp32"  # what agreement_score is
    group_depth = 1  # module-path depth of int8_mixed's layer groups
    onnx_per_image = False  # exported for one [3, H, W] image, run once per image
    traceable_whole = True  # TorchScript may trace it whole: no data-dependent control flow
    teacher_forcing = False  # inspection feeds fp32's proposals to the quantized model
    resizes_inside = False  # the module resizes its input itself (inspection maps it back)
    ort_output_names: tuple[str, ...] | None = None  # named ONNX outputs (None: output0..)

    # -- feeding ---------------------------------------------------------------------------
    def call(self, module: nn.Module, batch: torch.Tensor) -> Any:
        """One forward of a torch module of this task (no grad mode set)."""
        return module(batch)

    def run(self, module: nn.Module, batch: torch.Tensor, per_image: bool = False) -> Any:
        with torch.inference_mode():
            return self.call(module, batch)

    def per_image_outputs(self, result: Any) -> list[Any]:
        """A batch's outputs as CPU float32 items (one per batch, concatenated by the caller)."""
        return [result.detach().float().cpu()]

    # -- export ----------------------------------------------------------------------------
    def example_call(self, module: nn.Module, example: torch.Tensor) -> Any:
        with torch.no_grad():
            return self.call(module, example)

    def program_outputs(self, program: torch.jit.ScriptModule, batch: torch.Tensor) -> Any:
        return program(batch)

    def ort_outputs(self, runs: list[list[np.ndarray]], names: list[str],
                    has_batch_dim: bool) -> Any:
        """ORT outputs of a batch (one run per feed) in the structure `run` returns."""
        outs = [torch.from_numpy(np.concatenate(parts) if has_batch_dim else np.stack(parts))
                for parts in zip(*runs, strict=True)]
        return outs[0]

    def torchscript_usage(self, file: str) -> str:
        """How to load and call a saved TorchScript program of this task (the card's snippet)."""
        return (f"import torch\nmodel = torch.jit.load({file!r})\n"
                "outputs = model(batch)  # batch: float32 [N, 3, H, W] in [0, 1]")

    def onnx_usage(self, input_name: str) -> str:
        """The line that runs an ONNX session of this task (after the backend opened it)."""
        return (f"outputs = session.run(None, {{{input_name!r}: batch}})  "
                "# float32 numpy [N, 3, H, W] in [0, 1]")

    # -- pairing ---------------------------------------------------------------------------
    def output_pairs(self, fp32: Any, quant: Any) -> Pairs:
        """Final outputs of fp32 and quantized as value pairs for the hexbin plots."""
        return {"network outputs": (np.concatenate([_flat_np(t) for t in tensors_of(fp32)]),
                                    np.concatenate([_flat_np(t) for t in tensors_of(quant)]))}

    def agreement_name_for(self, reference: Any) -> str:
        """What agreement_score measures on outputs like `reference` (fp32's)."""
        return self.agreement_name

    def agreement_score(self, reference: Any, out: Any, score_threshold: float = 0.5) -> float:
        """Agreement with fp32, continuous so that few images still rank layer groups: the
        mean cosine similarity of the outputs (score_threshold: detections only)."""
        from qbench.evaluate.agreement import outputs_cosine

        return outputs_cosine(reference, out)

    # -- quantizing ------------------------------------------------------------------------
    def static_parts(self, model: nn.Module, input_size: tuple[int, int]) -> PartPlan:
        """The submodules int8_static quantizes as separate graphs, on `model` (a copy that
        may be changed in place): by default the model's children, split where FX fails."""
        return PartPlan([Part(c, m, split=True) for c, m in model.named_children()], [],
                        separate_graphs=True)

    def low_precision_parts(self, module: nn.Module) -> tuple[tuple[str, ...], str] | None:
        """(submodules cast to bf16/fp16 behind float32 borders, why the rest stays float32);
        None: the whole model is cast."""
        return None

    def ort_int8_scope(self, module: nn.Module) -> tuple[tuple[str, ...], str] | None:
        """(module paths whose ONNX nodes ort_int8 may quantize, a note saying so) for a model
        exported from torch; None: every node."""
        return None

    def batch_plan(self, module: nn.Module, first_image: Callable[[], torch.Tensor]
                   ) -> tuple[bool, str] | None:
        """(run a batch image by image?, why) for a quantized module, judged on one image
        (first_image() gives it, [1, 3, H, W]); None: always batched."""
        return None

    # -- inputs ----------------------------------------------------------------------------
    def default_preprocess(self, arch: str | None) -> Any:
        """The preprocessing (a qbench.preprocess.defaults.Resolved) a model of this kind gets
        when the manifest declares none: [0, 1] RGB stretched to the input size."""
        from qbench.preprocess.defaults import Resolved
        from qbench.preprocess.spec import PreprocessSpec

        return Resolved(PreprocessSpec(), "default: [0, 1] RGB stretched")

    # -- evaluation ------------------------------------------------------------------------
    def evaluation_columns(self, data: Any, fp32: list[Any], quant: list[Any],
                           trained: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """(agreement, accuracy) columns of the `models` row; accuracy for trained weights only."""
        raise ValueError(f"task {self.name}: no evaluation dataset is supported")
