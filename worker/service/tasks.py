"""Thin Celery tasks over the plain pipeline functions. They pass ids and JSON, never models."""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from pathlib import Path
from typing import Any

from celery.signals import worker_process_init
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from qbench.confine import receive_unit
from qbench.errors import ManifestError
from qbench.isolate import (
    prepare_parent,
    run_unit_isolated,
    time_model_isolated,
    unit_limit,
    worker_ceiling,
)
from qbench.manifest import Unit
from qbench.pipeline import failed_row, write_outcome
from qbench.report import write_report
from qbench.results import results_root
from qbench.service.app import app
from qbench.service.cancel import is_cancelled
from qbench.service.lease import ensure_sole_run, settle

log = logging.getLogger(__name__)
worker_ceiling()  # a bad QBENCH_MAX_UNIT_SECONDS stops the worker at start


def queued_time(value: Any) -> dt.datetime | None:
    """The sender's queued_at (ISO 8601, UTC), or None when absent or not a sane time."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None or abs(time.time() - when.timestamp()) > 366 * 24 * 3600:
        return None
    return when.astimezone(dt.UTC)


@worker_process_init.connect
def _prepare_pool_process(**_) -> None:
    """A pool process pays for the imports every unit needs once, when it starts."""
    prepare_parent()


@app.task(name="qbench.run_unit", bind=True)
def run_unit_task(self, unit_json: dict, queued_at: str | None = None) -> dict:
    # A copy Redis redelivered while a live worker runs the unit is dropped here.
    ensure_sole_run(self.request.id, self.request.hostname)
    unit = receive_unit(unit_json, results_root())  # never trusts the sender (worker/confine.py)
    if not isinstance(unit, Unit):
        settle(self.request.id, self.request.hostname)
        return unit  # the refusal, as a summary
    if is_cancelled(unit.job_id):
        log.info("unit %s skipped: job %s was cancelled", unit.unit_id, unit.job_id)
        return {"unit_id": unit.unit_id, "status": "cancelled", "error": None, "files": []}

    started = time.time()

    def progress(step: str, done: int, total: int) -> None:
        log.info("unit %s [%d/%d] %s", unit.unit_id, done, total, step)
        try:
            self.update_state(state="PROGRESS", meta={"step": step, "done": done, "total": total,
                                                      "started": started})
        except (RedisError, OperationalError, OSError) as exc:
            # Progress is advisory: a broker restart mid-unit must not end the unit itself.
            log.warning("unit %s: progress not recorded (%s)", unit.unit_id, exc)

    root = results_root()
    try:
        # A fresh process per unit, under the unit's time limit (worker/isolate.py).
        summary = run_unit_isolated(unit, root, progress, queued_time(queued_at)).summary()
    except OSError as exc:  # the results store itself failed: say where, as one line
        summary = unwritable_results(unit, root, exc)
    # A run requeued while it was cut off from Redis ends ignored: the unit counts once.
    settle(self.request.id, self.request.hostname)
    return summary


def unwritable_results(unit: Unit, root: Path, exc: OSError) -> dict:
    """An error row if the models table still takes one; else a failure naming the path."""
    error = f"results store: cannot write {exc.filename or root}: {exc.strerror or exc}"
    try:
        return write_outcome(unit, root, [], failed_row(unit, error)).summary()
    except OSError:
        raise RuntimeError(error) from None


@app.task(name="qbench.time_model", bind=True, acks_late=True)
def time_model_task(self, unit_summaries: list | None, job_id: str, model_id: str,
                    device: str) -> dict:
    """A model's variants timed side by side on one device (worker/time_model.py): the body
    of the model's unit group, so it starts once they have all ended. Ids only: the units
    come from the job's plan in this results store, the programs from where they saved them.
    Rerunning it replaces its rows (its files are named by model and device)."""
    ensure_sole_run(self.request.id, self.request.hostname)
    root = results_root()
    refused = {"job_id": None, "model_id": None, "device": None, "status": "refused",
               "members": [], "left_out": {}, "files": []}
    try:
        plan_of_report(root, job_id)
        if not isinstance(model_id, str) or not isinstance(device, str):
            raise ManifestError("time_model: model id and device must be strings")
        from qbench.time_model import model_units

        units = model_units(root, job_id, model_id, device)
    except ManifestError as exc:
        log.error("timing refused: %s", exc)
        settle(self.request.id, self.request.hostname)
        return {**refused, "error": str(exc)[:500]}
    if is_cancelled(job_id):
        settle(self.request.id, self.request.hostname)
        return {**refused, "job_id": job_id, "status": "cancelled", "error": None}
    limit = max(unit_limit(u) for u in units)
    summary = time_model_isolated(root, job_id, model_id, device, limit,
                                  lambda step: log.info("time %s %s: %s", model_id, device, step))
    settle(self.request.id, self.request.hostname)
    return summary


@app.task(name="qbench.report_job")
def report_job_task(unit_summaries: list | None, job_id: str) -> dict:
    """The chord's body: runs once every unit of the job has ended, ok or not. Its job id is
    re-checked like a unit's: a name (never a path) of a job planned in this results store."""
    root = results_root()
    try:
        plan_of_report(root, job_id)
    except ManifestError as exc:
        log.error("report refused: %s", exc)
        return {"job_id": None, "status": "refused", "error": str(exc)[:500]}
    report = write_report(root, job_id)
    return {"job_id": job_id, "report": str(report.folder / "report.md"),
            "regressions": report.regressions}


def plan_of_report(root: Path, job_id: object) -> None:
    """ManifestError unless job_id names a job whose plan this results store holds."""
    from qbench.orchestrate import load_plan

    if not isinstance(job_id, str):
        raise ManifestError(f"job id {str(job_id)[:100]!r}: not a string")
    load_plan(root, job_id)  # checks the id's pattern first, then that the plan exists


@app.task(name="qbench.nightly")
def nightly_task(*args, **kwargs) -> list[str]:
    """Submit every manifest in QBENCH_NIGHTLY_DIR for tonight (the date in QBENCH_TIMEZONE),
    unless that night's job is already queued, running or done (worker/service/nightly.py). It takes
    nothing from the message: a sender cannot name another folder."""
    from qbench.service.nightly import submit_nightly

    if args or kwargs:
        log.error("nightly refused: it takes no arguments (got %d)", len(args) + len(kwargs))
        return []

    folder = Path(os.environ.get("QBENCH_NIGHTLY_DIR", "jobs/nightly"))
    return submit_nightly(folder, results_root())
