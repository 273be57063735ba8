"""Save what a unit benchmarked: TorchScript for torch modes, the ONNX file for ORT modes."""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from worker.artifacts.store import artifact_file, relative, remove_others, write_atomic
from worker.artifacts.torchscript import max_difference, run_program, to_torchscript

if TYPE_CHECKING:
    from worker.manifest import Unit
    from worker.models.base import LoadedModel
    from worker.quantize.registry import Quantized

EXAMPLE_SEED = 11  # the synthetic image a saved program is checked on
# A saved program must reproduce the benchmarked outputs: same kernels, so on the CPU the
# difference is 0; the bound only absorbs fusions TorchScript may do on a GPU.
RELATIVE_TOLERANCE = 1e-5


class ArtifactError(RuntimeError):
    """Why an artifact could not be saved; the unit's measurements stay valid."""


@dataclass
class SavedArtifact:
    """The `models` row's artifact columns, and what the row says when nothing was saved."""

    path: str | None = None  # relative to the results folder
    sha256: str | None = None
    format: str | None = None  # "torchscript" | "onnx"
    note: str | None = None  # appended to the row's notes
    error: str | None = None  # "artifact not saved: ..." (the unit's status stays ok)

    def columns(self) -> dict[str, Any]:
        return {"artifact_path": self.path, "artifact_sha256": self.sha256,
                "artifact_format": self.format}

    def apply(self, row: dict[str, Any]) -> None:
        """Into a row held as a dict (the pipeline assembles its row from columns())."""
        row.update(self.columns())
        if self.note:
            row["notes"] = "; ".join(filter(None, [row.get("notes"), self.note]))
        if self.error:
            row["error"] = self.error


def saving_device(unit: Unit) -> str:
    """Artifacts are saved once per (job, model, mode): by the unit on the job's first device
    (validation guarantees every listed device runs every mode)."""
    return unit.benchmark.devices[0]


def discard_artifact(unit: Unit, root: Path) -> None:
    """Remove this unit's artifact (a failed retry must not leave an earlier attempt's file)."""
    if saving_device(unit) == unit.device:
        remove_others(root, unit.job_id, unit.model.id, unit.mode, keep=None)


def save_artifact(unit: Unit, loaded: LoadedModel, q: Quantized, root: Path) -> SavedArtifact:
    """Save q (after it was measured) under <root>/artifacts; never raises."""
    if not unit.artifacts:
        return SavedArtifact(note="artifact not saved: manifest artifacts: false")
    saver = saving_device(unit)
    if saver != unit.device:
        return SavedArtifact(note=f"artifact saved once per model and mode, by its {saver} unit")
    try:
        if isinstance(q.module, nn.Module):
            return _save_torch(unit, loaded, q, root)
        return _save_onnx(unit, q, root)
    except Exception as exc:  # the measurements stand; the row says why there is no file
        discard_artifact(unit, root)
        text = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")[:400]
        return SavedArtifact(error=f"artifact not saved: {reason}")


def _save_torch(unit: Unit, loaded: LoadedModel, q: Quantized, root: Path) -> SavedArtifact:
    from worker.evaluate.synth import synth_images

    example = synth_images(1, loaded.input_size, EXAMPLE_SEED).to(unit.device)
    program, traced = to_torchscript(q.module, loaded.kind, example)
    expected, got = q.predict(example), run_program(program, loaded.kind, example)
    diff = max_difference(expected, got)
    if diff > RELATIVE_TOLERANCE:
        raise ArtifactError(f"the TorchScript program differs from the benchmarked model on an "
                            f"example image (max |diff| {diff:.3g})")
    target = artifact_file(root, unit.job_id, unit.model.id, unit.mode, "torchscript")

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "torch.jit.save is deprecated"
            torch.jit.save(program, str(tmp))

    sha = write_atomic(target, write)
    remove_others(root, unit.job_id, unit.model.id, unit.mode, keep=target)
    how = f"traced parts: {', '.join(traced)}" if traced else "scripted"
    return SavedArtifact(relative(root, target), sha, "torchscript",
                         note=f"artifact: TorchScript ({how})")


def onnx_source(q: Quantized) -> Path:
    """The .onnx file an ORT mode ran (it lives in the unit's work_dir until the unit ends)."""
    path = getattr(q, "artifact_file", None) or getattr(q.module, "_model_path", None)
    if not path or not Path(path).is_file():
        raise ArtifactError(f"backend {q.backend}: no torch module and no ONNX file to save")
    return Path(path)


def _save_onnx(unit: Unit, q: Quantized, root: Path) -> SavedArtifact:
    import onnx

    src = onnx_source(q)
    graph = onnx.load(str(src), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer):
        raise ArtifactError(f"{src.name} keeps its weights in external data files; only "
                            "single-file ONNX models are saved")
    target = artifact_file(root, unit.job_id, unit.model.id, unit.mode, "onnx")
    sha = write_atomic(target, lambda tmp: shutil.copyfile(src, tmp))
    remove_others(root, unit.job_id, unit.model.id, unit.mode, keep=target)
    return SavedArtifact(relative(root, target), sha, "onnx",
                         note="artifact: the ONNX file ONNX Runtime ran")
