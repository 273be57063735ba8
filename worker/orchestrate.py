"""Jobs: plan a manifest into units, record the plan, run units in-process.

The plan is written to <results>/jobs/<job_id>.json so that `status` and `report` know every
unit a job expects, including the ones that have not written a row yet.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from qbench.atomic import write_text_atomic
from qbench.manifest import (
    Manifest,
    ManifestError,
    Unit,
    check_job_id,
    expand,
    job_id_for,
    load_manifest,
    unit_id_for,
)


@dataclass
class JobPlan:
    job_id: str
    name: str
    manifest_path: str
    units: list[Unit]
    # When this run of the job was queued (ISO 8601, UTC, to the millisecond); a rerun of the
    # same job id (a forced night) gets a new one, so rows of the earlier run are told apart.
    submitted_at: str | None = None

    def to_json(self) -> str:
        return json.dumps({
            "job_id": self.job_id, "name": self.name, "manifest_path": self.manifest_path,
            "submitted_at": self.submitted_at,
            "units": [u.model_dump(mode="json") for u in self.units],
        }, indent=1)

    @classmethod
    def from_json(cls, text: str) -> JobPlan:
        data = json.loads(text)
        return cls(data["job_id"], data["name"], data["manifest_path"],
                   [Unit.model_validate(u) for u in data["units"]], data.get("submitted_at"))

    @property
    def submitted(self) -> dt.datetime | None:
        return dt.datetime.fromisoformat(self.submitted_at) if self.submitted_at else None


def now_stamp() -> str:
    """Now, UTC, to the millisecond (what a Parquet timestamp column keeps)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def plan_job(manifest_path: str | Path, *, nightly: bool = False, job_id: str | None = None,
             now: dt.datetime | None = None) -> JobPlan:
    manifest, base = load_manifest(manifest_path)
    from qbench.decode.layout import check_manifest_outputs

    check_manifest_outputs(manifest, base, str(manifest_path))  # decoder vs the ONNX file
    return plan_from(manifest, base, str(manifest_path), nightly=nightly, job_id=job_id, now=now)


def plan_from(manifest: Manifest, base: Path, source: str, *, nightly: bool = False,
              job_id: str | None = None, now: dt.datetime | None = None) -> JobPlan:
    jid = check_job_id(job_id) if job_id else job_id_for(manifest, now or dt.datetime.now(),
                                                         nightly=nightly)
    return JobPlan(jid, manifest.name, source, expand(manifest, jid, base))


def plan_file(results_root: Path, job_id: str) -> Path:
    return results_root / "jobs" / f"{check_job_id(job_id)}.json"


def save_plan(plan: JobPlan, results_root: Path) -> Path:
    target = plan_file(results_root, plan.job_id)
    write_text_atomic(target, plan.to_json())
    return target


def claim_plan(plan: JobPlan, results_root: Path, fresh: bool) -> JobPlan:
    """Write the plan of a job; a fresh job (its id made here, not given by the user) claims
    its id: two identical manifests run in the same second would get the same id and
    overwrite each other's rows, so the second one's id gets another digest instead."""
    if not fresh:
        save_plan(plan, results_root)
        return plan
    folder = plan_file(results_root, plan.job_id).parent
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(100):
        candidate = plan if n == 0 else _with_job_id(plan, _bumped(plan.job_id, n))
        tmp = folder / f".{candidate.job_id}.{uuid.uuid4().hex}.claim"
        tmp.write_text(candidate.to_json())
        try:
            os.link(tmp, plan_file(results_root, candidate.job_id))  # fails if it exists
        except FileExistsError:
            continue
        finally:
            tmp.unlink(missing_ok=True)
        return candidate
    raise ManifestError(f"job {plan.job_id}: 100 jobs of this manifest in the same second")


def _bumped(job_id: str, n: int) -> str:
    stem, _, _ = job_id.rpartition("-")
    return f"{stem}-{hashlib.sha256(f'{job_id}#{n}'.encode()).hexdigest()[:6]}"


def _with_job_id(plan: JobPlan, job_id: str) -> JobPlan:
    units = [u.model_copy(update={"job_id": job_id, "unit_id": unit_id_for(
        job_id, u.model.id, u.mode, u.device)}) for u in plan.units]
    return dataclasses.replace(plan, job_id=job_id, units=units)


def load_plan(results_root: Path, job_id: str) -> JobPlan:
    path = plan_file(results_root, job_id)
    if not path.is_file():
        known = sorted(p.stem for p in (results_root / "jobs").glob("*.json"))
        hint = f"; known jobs: {', '.join(known[-5:])}" if known else ""
        raise ManifestError(f"job {job_id!r}: no such job under {results_root}{hint}")
    try:
        return JobPlan.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"{path}: not a readable job plan ({str(exc).splitlines()[0][:200]})") from None


def times_side_by_side(unit: Unit) -> bool:
    """Whether this unit's speedups come from its model's side-by-side timing step: pairing
    side_by_side needs the saved programs (manifest `artifacts`), else the unit pairs itself."""
    return unit.benchmark.pairing == "side_by_side" and unit.artifacts


def timing_key(model_id: str, device: str) -> str:
    """The file name (in place of a unit id) of a model's side-by-side rows on one device."""
    return f"time-{model_id}-{device}"


def timing_groups(plan: JobPlan) -> list[tuple[str, str, list[Unit]]]:
    """(model id, device, units) of each model x device timed side by side, in plan order."""
    groups: dict[tuple[str, str], list[Unit]] = {}
    for u in plan.units:
        if times_side_by_side(u):
            groups.setdefault((u.model.id, u.device), []).append(u)
    return [(m, d, units) for (m, d), units in groups.items()]


def latest_job(results_root: Path) -> str | None:
    plans = sorted((results_root / "jobs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return plans[-1].stem if plans else None
