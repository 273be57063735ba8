"""The Celery app: Redis broker, queues cpu/gpu, JSON only, late acks, a fresh process per unit."""

from __future__ import annotations

import os

from celery import Celery
from celery.schedules import crontab
from celery.signals import worker_ready
from kombu import Queue

from qbench.env import env_int
from qbench.errors import ConfigError
from qbench.service.broker import broker_url


def nightly_schedule() -> crontab:
    """QBENCH_NIGHTLY_AT as HH:MM in QBENCH_TIMEZONE (default 02:00 UTC)."""
    at = os.environ.get("QBENCH_NIGHTLY_AT", "02:00")
    try:
        hour, minute = (int(x) for x in at.split(":"))
        if not (0 <= hour < 24 and 0 <= minute < 60):
            raise ValueError
    except ValueError:
        raise ConfigError(f"QBENCH_NIGHTLY_AT={at!r}: expected HH:MM, e.g. 02:00") from None
    return crontab(hour=hour, minute=minute)


app = Celery("qbench", include=["qbench.service.tasks"])
app.conf.update(
    broker_url=broker_url(),
    result_backend=os.environ.get("QBENCH_RESULT_BACKEND", broker_url()),
    # Manifests and results are data: JSON only, never pickle.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_queues=[Queue("cpu"), Queue("gpu")],
    task_default_queue="cpu",
    # A unit is acknowledged only when it has finished; a worker killed mid-unit gives it back.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # The pool child lives on; each unit runs in a process forked from it for that unit alone
    # (worker/isolate.py), so memory peaks of one unit never leak into the next and the next
    # unit starts without waiting for Celery to replace a child.
    task_track_started=True,
    result_extended=True,
    result_expires=env_int("QBENCH_RESULT_EXPIRES", 7 * 24 * 3600),
    # A worker killed outright leaves its unit unacknowledged in Redis. Leases bring it back
    # within a minute or so (worker/service/lease.py); Redis' own redelivery after the visibility
    # timeout cannot tell a dead worker from a long unit, so it is kept longer than any unit.
    broker_transport_options={
        "visibility_timeout": env_int("QBENCH_VISIBILITY_TIMEOUT", 7 * 24 * 3600),
        "unacked_restore_interval": env_int("QBENCH_RESTORE_INTERVAL", 30),
        "unacked_restore_throttle": 1,
    },
    broker_connection_retry_on_startup=True,
    timezone=os.environ.get("QBENCH_TIMEZONE", "UTC"),
    beat_schedule={
        "nightly-benchmarks": {"task": "qbench.nightly", "schedule": nightly_schedule(),
                               "options": {"queue": "cpu"}},
    },
)


@worker_ready.connect
def _start_lease_keeper(sender, **_) -> None:
    from qbench.service.lease import Keeper, held_by_this_worker

    Keeper(sender.hostname, held_by_this_worker).start()
