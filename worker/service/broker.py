"""Where the broker is: QBENCH_BROKER_URL (the Celery app, leases, cancel and the CLI read it)."""

from __future__ import annotations

import os

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def broker_url() -> str:
    return os.environ.get("QBENCH_BROKER_URL", DEFAULT_BROKER)
