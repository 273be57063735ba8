"""Nightly runs: every manifest of a folder, submitted with the date in its job id."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from worker.manifest import ManifestError
from worker.orchestrate import plan_job, save_plan
from worker.staging import stage_plan
from worker.submit import submit_plan

log = logging.getLogger(__name__)


def submit_nightly(folder: Path, results_root: Path, now: dt.datetime | None = None) -> list[str]:
    """Submit each manifest; a bad manifest is logged and skipped, the others still run.

    The job id carries only the date, so a second trigger the same night rewrites that
    night's rows (same unit ids) instead of adding a job.
    """
    submitted = []
    for path in sorted(folder.glob("*.y*ml")):
        try:
            plan = plan_job(path, nightly=True, now=now)
        except ManifestError as exc:
            log.error("nightly: %s", exc)
            continue
        try:
            plan = stage_plan(plan, results_root)
        except ManifestError as exc:
            log.error("nightly: %s: %s", path, exc)
            continue
        save_plan(plan, results_root)
        submit_plan(plan)
        submitted.append(plan.job_id)
        log.info("nightly: submitted %s (%d units)", plan.job_id, len(plan.units))
    return submitted
