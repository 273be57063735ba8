"""Nightly runs: every manifest of a folder, submitted once per night with the date in its job id.

The night is the date in QBENCH_TIMEZONE when the trigger fires (not the worker's OS clock).
A night runs once: the first trigger claims `qbench:night:<job id>` in Redis (SET NX) and the
job's plan file records it too, so a second trigger (a beat restarted after a kill fires the
night again at once; two triggers in a row) finds the night queued, running or done, says so
and does nothing. `qbench submit --nightly --date D --force` runs a night again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from qbench.manifest import ManifestError
from qbench.orchestrate import JobPlan, plan_file, plan_job, save_plan
from qbench.service.staging import stage_plan
from qbench.service.submit import forget_previous_run, job_states, stamped, submit_plan

log = logging.getLogger(__name__)
CLAIM_TTL_S = 400 * 24 * 3600  # longer than anyone reruns a night by date


def timezone() -> ZoneInfo:
    name = os.environ.get("QBENCH_TIMEZONE", "UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ManifestError(f"QBENCH_TIMEZONE={name!r}: not a time zone name "
                            "(e.g. UTC, Europe/Paris)") from None


def tonight(now: dt.datetime | None = None) -> dt.date:
    """The night a trigger fired now belongs to: today's date in QBENCH_TIMEZONE."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(timezone()).date()


def parse_night(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ManifestError(f"--date {text!r}: expected YYYY-MM-DD") from None


def claim_key(job_id: str) -> str:
    return f"qbench:night:{job_id}"


@dataclass
class NightOutcome:
    job_id: str
    units: int
    submitted: bool
    state: str | None = None  # why it was not: queued | running | done

    def line(self) -> str:
        if self.submitted:
            return f"submitted {self.job_id} ({self.units} units)"
        return (f"{self.job_id}: this night is already {self.state}; not run again "
                "(qbench submit --nightly --date YYYY-MM-DD --force reruns it)")


def _state_of(results_root: Path, plan: JobPlan) -> str:
    if not plan_file(results_root, plan.job_id).is_file():
        return "queued"  # claimed by a trigger that is still staging it
    try:
        states = job_states(results_root, plan.job_id)
    except ManifestError:
        return "queued"
    if states.done:
        return "done"
    return "running" if states.finished or any(u.state == "running" for u in states.units) \
        else "queued"


def submit_night(path: Path, results_root: Path, night: dt.date, *,
                 force: bool = False) -> NightOutcome:
    """Submit one manifest as the given night's job, unless that night already ran or runs.

    Raises ManifestError for a bad manifest (nothing claimed)."""
    from qbench.service.lease import client

    when = dt.datetime.combine(night, dt.time())
    plan = plan_job(path, nightly=True, now=when)
    r = client()
    key = claim_key(plan.job_id)
    claim = json.dumps({"at": dt.datetime.now(dt.UTC).isoformat(), "force": force})
    rerun = force and plan_file(results_root, plan.job_id).is_file()
    if force:
        r.set(key, claim, ex=CLAIM_TTL_S)
    elif not r.set(key, claim, nx=True, ex=CLAIM_TTL_S) or \
            plan_file(results_root, plan.job_id).is_file():
        # Claimed before, or Redis lost its claims but the plan file says the night was queued.
        return NightOutcome(plan.job_id, len(plan.units), False, _state_of(results_root, plan))
    try:
        plan = stamped(stage_plan(plan, results_root))
        save_plan(plan, results_root)
        if rerun:
            forget_previous_run(plan)
        submit_plan(plan)
    except BaseException:
        r.delete(key)  # not queued: a later trigger may try again
        raise
    return NightOutcome(plan.job_id, len(plan.units), True)


def submit_nightly(folder: Path, results_root: Path, now: dt.datetime | None = None,
                   force: bool = False) -> list[str]:
    """Submit each manifest for tonight; a bad manifest is logged and skipped, the others
    still run. Returns one line per manifest: submitted, or why not."""
    night = tonight(now)
    lines = []
    for path in sorted(folder.glob("*.y*ml")):
        try:
            outcome = submit_night(path, results_root, night, force=force)
        except ManifestError as exc:
            log.error("nightly: %s: %s", path, exc)
            continue
        log.info("nightly %s: %s", night, outcome.line())
        lines.append(outcome.line())
    return lines
