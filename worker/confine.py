"""Re-validate a unit before anything runs: ids, the files it will write, the files it reads.

A Celery worker trusts no sender: a message's ids must match their patterns (and the unit id
its own hash), every path derived from them must stay inside the results root, and every
input path must lie inside this worker's own QBENCH_DATA_ROOTS. The sender's base_dir only
resolves relative paths; it is a root only where this process loaded the manifest itself
(`qbench run`). Plain functions: the Celery task and `qbench run` both call them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from qbench.errors import ManifestError
from qbench.manifest import Unit, first_error, job_date_of, unit_id_for
from qbench.modes import MODES, mode_device_problem

log = logging.getLogger(__name__)

TABLES = ("latency", "models", "layers", "samples", "class_metrics")


def _inside(path: Path, root: Path) -> bool:
    # Lexical: the ids are checked already, so this guards the derivation itself, and a
    # results folder that is a symlink (a mount) stays usable.
    p, r = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    return p == r or r in p.parents


def output_paths(unit: Unit, root: Path) -> list[Path]:
    """Every file and folder a unit writes under the results root."""
    from qbench.artifacts.store import artifacts_dir

    files = [root / t / f"date={unit.job_date}" / f"job={unit.job_id}" / f"{unit.unit_id}.parquet"
             for t in TABLES]
    return [*files, artifacts_dir(root, unit.job_id) / unit.model.id,
            root / "reports" / unit.job_id / "inspect" / f"{unit.model.id}-{unit.mode}-{unit.device}",
            root / "jobs" / f"{unit.job_id}.json"]


def input_paths(unit: Unit) -> list[tuple[str, str, str]]:
    """(field, manifest path, file | folder) of every input a unit reads."""
    named = [("model.checkpoint", unit.model.checkpoint, "file"),
             ("model.path", unit.model.path, "file")]
    if unit.dataset:
        named += unit.dataset.named_paths()
    return [(f, v, k) for f, v, k in named if v is not None]


def confine_unit(data: Unit | dict[str, Any], results_root: Path) -> Unit:
    """The unit, re-validated; ManifestError (one line, naming the field) when it is refused."""
    try:
        unit = data if isinstance(data, Unit) else Unit.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"unit refused: {first_error(exc)}") from None
    if job_date_of(unit.job_id).isoformat() != unit.job_date:
        raise ManifestError(f"unit refused: job_date {unit.job_date} is not the date of job "
                            f"{unit.job_id}")
    expected = unit_id_for(unit.job_id, unit.model.id, unit.mode, unit.device)
    if unit.unit_id != expected:
        raise ManifestError(f"unit refused: unit_id {unit.unit_id} is not the id of "
                            f"({unit.job_id}, {unit.model.id}, {unit.mode}, {unit.device})")
    problem = mode_device_problem(unit.mode, unit.device)
    if problem is None and unit.model.source not in MODES[unit.mode].sources:
        problem = f"mode {unit.mode} cannot run models of source {unit.model.source}"
    if problem:
        raise ManifestError(f"unit {unit.unit_id} refused: {problem}")
    for path in output_paths(unit, results_root):
        if not _inside(path, results_root):
            raise ManifestError(f"unit {unit.unit_id} refused: {path} is outside the results "
                                f"folder {results_root}")
    for field, value, kind in input_paths(unit):
        try:
            path = unit.resolve(value)
        except ManifestError as exc:
            raise ManifestError(f"unit {unit.unit_id} refused: {field}: {exc}") from None
        # a FIFO or a device would block the loader forever: only a regular file is opened
        if kind == "file" and path.exists() and not path.is_file():
            raise ManifestError(f"unit {unit.unit_id} refused: {field}: {path} is not a "
                                "regular file")
    return unit


def receive_unit(message: Any, results_root: Path) -> Unit | dict[str, Any]:
    """What a worker runs: the confined unit, or the refusal's task summary after logging it
    (and, when the unit's own ids are sound, writing its error row for `status` and the report)."""
    try:
        return confine_unit(message if isinstance(message, dict) else {}, results_root)
    except ManifestError as exc:
        log.error("%s", exc)
        unit = _sound_ids(message)
        if unit is not None:
            from qbench.pipeline import failed_row, write_outcome

            write_outcome(unit, results_root, [], failed_row(unit, str(exc)))
        return {"unit_id": unit.unit_id if unit else None, "status": "refused",
                "error": str(exc)[:500], "files": []}


def _sound_ids(message: Any) -> Unit | None:
    """The unit if its ids are its own, so that its row lands where it belongs, even when the
    rest of it is refused here (a sender with higher limits than this worker): then a skeleton
    of it carrying the ids alone, so the refusal still becomes the unit's error row."""
    try:
        unit = Unit.model_validate(message)
    except ValidationError:
        unit = _skeleton(message)
    if unit is None:
        return None
    try:
        if (job_date_of(unit.job_id).isoformat() == unit.job_date and unit.unit_id ==
                unit_id_for(unit.job_id, unit.model.id, unit.mode, unit.device)):
            return unit
    except ManifestError:
        pass
    return None


def _skeleton(message: Any) -> Unit | None:
    """A Unit with the message's checked ids and defaults for everything else."""
    if not isinstance(message, dict) or not isinstance(message.get("model"), dict):
        return None
    model = message["model"]
    source = model.get("source", "torchvision")
    try:
        unit = Unit.model_validate({
            **{k: message.get(k) for k in ("job_id", "job_name", "job_date", "unit_id", "mode",
                                           "device")},
            "model": {"id": model.get("id"), "source": "onnx", "path": "-"},
            "quantization": {}, "benchmark": {}, "dataset": None, "inspect": {},
            "base_dir": "", "artifacts": False})
    except ValidationError:
        return None
    # the row names what was sent, as far as it is a plain short string
    arch = model.get("arch") if isinstance(model.get("arch"), str) else None
    spec = unit.model.model_construct(
        **{**unit.model.model_dump(), "source": source if source in ("torchvision", "yolo", "onnx")
           else "torchvision", "arch": arch[:200] if arch else None, "path": None})
    return unit.model_copy(update={"model": spec})
