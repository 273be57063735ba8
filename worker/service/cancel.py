"""Cancelling a job: a flag in Redis that every unit checks before it starts.

A Celery revoke alone lives in the memory of the workers that are up when it is sent; the flag
also stops units that a worker started later would take.
"""

from __future__ import annotations

import redis

from qbench.service.broker import broker_url

FLAG_TTL_S = 30 * 24 * 3600


def _client() -> redis.Redis:
    return redis.Redis.from_url(broker_url(), socket_connect_timeout=5, socket_timeout=5)


def _key(job_id: str) -> str:
    return f"qbench:cancelled:{job_id}"


def cancel_job(job_id: str) -> None:
    _client().set(_key(job_id), "1", ex=FLAG_TTL_S)


def is_cancelled(job_id: str) -> bool:
    return bool(_client().exists(_key(job_id)))
