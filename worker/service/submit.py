"""Submitting a job to Celery and reading back where its units stand."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

from celery import chain, chord
from celery.result import AsyncResult

from qbench.orchestrate import JobPlan, load_plan, now_stamp, timing_groups, timing_key
from qbench.results import read_table
from qbench.service import lease
from qbench.service.app import app
from qbench.service.cancel import cancel_job, is_cancelled


def report_task_id(job_id: str) -> str:
    return f"report-{job_id}"


def stamped(plan: JobPlan) -> JobPlan:
    """The plan with the time this run of it is queued (save this one, then submit it)."""
    return dataclasses.replace(plan, submitted_at=now_stamp())


def forget_previous_run(plan: JobPlan) -> None:
    """A rerun of a job id: the broker forgets the earlier run's unit and report results, so
    states read 'queued' until this run's units start, not the earlier run's 'done'."""
    for task_id in task_ids(plan):
        AsyncResult(task_id, app=app).forget()


def time_task_id(job_id: str, model_id: str, device: str) -> str:
    return f"{timing_key(model_id, device)}-{job_id}"


def task_ids(plan: JobPlan) -> list[str]:
    """Every task id a run of the plan uses: units, side-by-side timings, the report."""
    return [*(u.unit_id for u in plan.units),
            *(time_task_id(plan.job_id, m, d) for m, d, _ in timing_groups(plan)),
            report_task_id(plan.job_id)]


def submit_plan(plan: JobPlan) -> None:
    """One task per unit on its device's queue; each model timed side by side gets its
    timing task (one per device) as the body of its units' group; the report job is the
    chord's body, once every unit and timing has ended.

    Tasks are sent by their registered names (worker/service/tasks.py), so submitting imports
    neither the pipeline nor torch.

    Task ids are the unit ids (and time-<model>-<device>-<job>), so a state can be looked up
    from the job plan alone.
    """
    queued_at = plan.submitted_at or now_stamp()

    def unit_task(u):
        return app.signature("qbench.run_unit", (u.model_dump(mode="json"),),
                             {"queued_at": queued_at}, queue=u.queue, task_id=u.unit_id)

    # A model's timing on any device waits for all its units: the programs it times are
    # saved by the units of the job's first device. Several devices: their timings in turn.
    by_model: dict[str, tuple[list, list]] = {}
    for model_id, device, units in timing_groups(plan):
        entry = by_model.setdefault(model_id, ([], []))
        entry[0].extend(units)
        entry[1].append(app.signature("qbench.time_model", (plan.job_id, model_id, device),
                                      queue=units[0].queue,
                                      task_id=time_task_id(plan.job_id, model_id, device)))
    grouped = {u.unit_id for units, _ in by_model.values() for u in units}
    header = [unit_task(u) for u in plan.units if u.unit_id not in grouped]
    for units, timings in by_model.values():
        header.append(chord([unit_task(u) for u in units],
                            timings[0] if len(timings) == 1 else chain(*timings)))
    body = app.signature("qbench.report_job", (plan.job_id,), queue="cpu",
                         task_id=report_task_id(plan.job_id))
    chord(header)(body)
    # Sending subscribed the Redis result backend to every task's result channel; nothing
    # here waits on them (status and --wait poll task states), so unsubscribe now, while the
    # connection can still be opened: left to AsyncResult.__del__ at interpreter exit, it
    # fails with "Exception ignored … Python is likely shutting down".
    consumer = getattr(app.backend, "result_consumer", None)
    if consumer is not None:
        for task_id in task_ids(plan):
            consumer.cancel_for(task_id)


def cancel_plan(plan: JobPlan, results_root: Path) -> list[str]:
    """Cancel the units that have not started; running ones finish, so their rows stay whole.

    The job's flag makes every unit that starts later return at once as "cancelled" (so the
    chord still completes and the report runs); the revoke drops them sooner on live workers.
    """
    cancel_job(plan.job_id)
    written = {r["unit_id"] for r in read_table(results_root, "models", plan.job_id).to_pylist()}
    pending = [u.unit_id for u in plan.units
               if u.unit_id not in written and AsyncResult(u.unit_id, app=app).state in _NOT_STARTED]
    return pending


@dataclass
class UnitState:
    unit_id: str
    model_id: str
    mode: str
    device: str
    state: str  # queued | running | lost | requeued | ok | error | timeout | cancelled
    error: str | None
    elapsed: float | None = None  # seconds it ran (its row), or has been running
    phase: str | None = None  # a running unit's current step


@dataclass
class JobStates:
    job_id: str
    units: list[UnitState]
    report_state: str
    # (model, device, state) of each side-by-side timing: waiting | running | ok | skipped |
    # error | timeout | refused | cancelled | failed
    timings: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    @property
    def finished(self) -> int:
        return sum(u.state in {"ok", "error", "timeout", "cancelled"} for u in self.units)

    @property
    def failed(self) -> list[UnitState]:
        return [u for u in self.units if u.state in {"error", "timeout"}]

    @property
    def done(self) -> bool:
        return self.finished == len(self.units) and self.report_state in {"done", "failed"}

    def describe(self) -> str:
        counts: dict[str, int] = {}
        for u in self.units:
            counts[u.state] = counts.get(u.state, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


_CELERY_STATE = {"PENDING": "queued", "RECEIVED": "queued", "STARTED": "running",
                 "PROGRESS": "running", "RETRY": "queued", "REVOKED": "cancelled"}
_NOT_STARTED = {"PENDING", "RECEIVED", "RETRY"}


def _broker_state(unit_id: str) -> tuple[str, str | None, float | None, str | None]:
    """(state, error, seconds running, current step) of a unit without a row."""
    result = AsyncResult(unit_id, app=app)
    if result.state == "SUCCESS" and isinstance(result.result, dict):
        return ("cancelled" if result.result.get("status") == "cancelled" else "running"), None, \
            None, None
    if result.state == "FAILURE":
        return "error", str(result.result)[:300], None, None
    state = _CELERY_STATE.get(result.state, "queued")
    if state == "running" and lease.holder(unit_id) is None:
        # Started, but nobody renews its lease: its worker vanished. The reaper puts it back
        # on the queue (then "requeued") until a worker takes it up again.
        if lease.requeue_count(unit_id):
            return "requeued", "its worker vanished; queued again", None, None
        return "lost", "its worker vanished; it is queued again within a minute", None, None
    meta = result.info if result.state == "PROGRESS" and isinstance(result.info, dict) else {}
    started = meta.get("started")
    elapsed = time.time() - started if isinstance(started, (int, float)) else None
    step = meta.get("step") if isinstance(meta.get("step"), str) else None
    return state, None, elapsed, step


def _of_this_run(row: dict, plan: JobPlan) -> bool:
    """A row written by the plan's current run, not by an earlier run of the same job id."""
    submitted = plan.submitted
    if submitted is None:
        return True
    if row.get("queued_at") is not None:
        return row["queued_at"] >= submitted
    # Rows without queued_at (a refused unit's, or written before it existed): by start time,
    # allowing for clocks of other hosts a little behind.
    return row["started_at"] is None or row["started_at"] >= submitted - dt.timedelta(seconds=5)


def _report_state(results_root: Path, plan: JobPlan) -> str:
    report = results_root / "reports" / plan.job_id / "report.md"
    submitted = plan.submitted
    if report.exists() and (submitted is None or report.stat().st_mtime >= submitted.timestamp()):
        return "done"
    result = AsyncResult(report_task_id(plan.job_id), app=app)
    if submitted is not None and result.date_done is not None:
        done = result.date_done if result.date_done.tzinfo else result.date_done.replace(tzinfo=dt.UTC)
        if done < submitted:
            return "pending"  # the earlier run's report task
    return {"SUCCESS": "done", "FAILURE": "failed"}.get(result.state, "pending")


def job_states(results_root: Path, job_id: str) -> JobStates:
    """Rows written win over broker states: a models row is the unit's final word."""
    plan = load_plan(results_root, job_id)
    rows = {r["unit_id"]: r for r in read_table(results_root, "models", job_id).to_pylist()
            if _of_this_run(r, plan)}
    cancelled = len(rows) < len(plan.units) and is_cancelled(job_id)
    units = []
    for u in plan.units:
        row = rows.get(u.unit_id)
        if row is not None:
            state, error, elapsed, phase = row["status"], row["error"], row.get("run_seconds"), None
        else:
            state, error, elapsed, phase = _broker_state(u.unit_id)
            if state == "queued" and cancelled:
                state = "cancelled"
        units.append(UnitState(u.unit_id, u.model.id, u.mode, u.device, state, error,
                               elapsed, phase))
    timings = [(m, d, _timing_state(time_task_id(job_id, m, d)))
               for m, d, _ in timing_groups(plan)]
    return JobStates(job_id, units, _report_state(results_root, plan), timings)


def _timing_state(task_id: str) -> str:
    result = AsyncResult(task_id, app=app)
    if result.state == "SUCCESS" and isinstance(result.result, dict):
        return str(result.result.get("status"))[:20]
    return {"STARTED": "running", "FAILURE": "failed"}.get(result.state, "waiting")
