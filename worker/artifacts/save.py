"""Save what a unit benchmarked, in its backend's format (TorchScript, the ONNX file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qbench.artifacts.store import artifact_file, relative, remove_others, write_atomic
from qbench.backends.base import ArtifactError

if TYPE_CHECKING:
    from qbench.manifest import Unit
    from qbench.models.base import LoadedModel
    from qbench.quantize.registry import Quantized

EXAMPLE_SEED = 11  # the synthetic image a saved program is checked on


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
        if q.runtime is None:
            raise ArtifactError(f"backend {q.backend}: no runtime to save")
        from qbench.evaluate.synth import synth_images

        example = synth_images(1, loaded.input_size, EXAMPLE_SEED).to(unit.device)
        artifact = q.runtime.artifact(loaded.kind, example, q.predict)
        target = artifact_file(root, unit.job_id, unit.model.id, unit.mode, artifact.format)
        sha = write_atomic(target, artifact.write)
        remove_others(root, unit.job_id, unit.model.id, unit.mode, keep=target)
        return SavedArtifact(relative(root, target), sha, artifact.format, note=artifact.note)
    except Exception as exc:  # the measurements stand; the row says why there is no file
        discard_artifact(unit, root)
        text = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")[:400]
        return SavedArtifact(error=f"artifact not saved: {reason}")
