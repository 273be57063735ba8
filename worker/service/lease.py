"""Leases: a task that a worker holds says so in Redis, and a task whose worker died is put back.

Why not Redis' visibility timeout alone: it cannot tell a dead worker from a slow unit, so it is
either long (a hard-killed worker's unit waits an hour) or short (a live unit longer than it is
delivered twice). A lease tells them apart:

- A keeper thread in every worker's main process renews `qbench:lease:<task id>` (TTL
  QBENCH_LEASE_TTL, default 30 s, renewed every third of it) for each task the worker holds,
  reserved or running. The main process, not the child running the unit: a child busy loading
  native libraries or in a long C call can starve a thread of its own for seconds, while the
  main process only waits on its pool. A live unit is renewed for as long as it runs, hours
  included; a worker killed outright stops renewing and its leases expire.
- The same thread sweeps Kombu's unacknowledged messages every QBENCH_REAP_INTERVAL seconds
  (default 10). A message delivered over QBENCH_LEASE_GRACE seconds ago (default 30) whose
  task holds no lease is moved back to the front of its queue in one Redis transaction that
  watches the lease, so a lease taken meanwhile, or another reaper, makes it back off. The
  message itself moves (no copy remains), chord header included, so the chord counts each unit
  once.
- Each requeue bumps `qbench:requeued:<task id>`. A run remembers the count it started under;
  a run cut off from Redis long enough to be requeued, that finishes anyway, is superseded:
  its rows went to the same deterministic files (task id = unit id) and `settle()` makes the
  task end ignored, so its result does not count twice. Its worker does not take the lease
  back either.
- A delivery of a task whose lease a live run on another worker holds (Redis redelivered it
  after the visibility timeout) is dropped by `ensure_sole_run()`.

Worst case from a SIGKILL to the unit queued again: TTL + reap interval (40 s by default). The
visibility timeout stays long (7 days) so that it never redelivers a live unit.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import redis
from celery.exceptions import Ignore

from qbench.env import env_seconds
from qbench.service.broker import broker_url

log = logging.getLogger(__name__)

UNACKED = "unacked"  # Kombu's Redis transport: delivery tag -> [message, exchange, routing key]
UNACKED_INDEX = "unacked_index"  # delivery tag -> time it was delivered
QUEUES = {"cpu", "gpu"}  # direct queues: a message's routing key is its queue's name
REQUEUE_COUNT_TTL_S = 30 * 24 * 3600

# The keeper's renewal: extend this worker's lease, take a missing one unless the task was
# requeued since this worker got it, never touch another worker's.
_RENEW = """
local v = redis.call('get', KEYS[1])
if v then
  if cjson.decode(v)['worker'] ~= ARGV[1] then return 0 end
  return redis.call('pexpire', KEYS[1], ARGV[3])
end
if tonumber(redis.call('get', KEYS[2]) or '0') > tonumber(ARGV[4]) then return -1 end
redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


def lease_ttl() -> float:
    return env_seconds("QBENCH_LEASE_TTL", 30)


def reap_interval() -> float:
    return env_seconds("QBENCH_REAP_INTERVAL", 10)


def lease_grace() -> float:
    return env_seconds("QBENCH_LEASE_GRACE", 30)


def client() -> redis.Redis:
    return redis.Redis.from_url(broker_url(), socket_connect_timeout=5, socket_timeout=5)


def lease_key(task_id: str) -> str:
    return f"qbench:lease:{task_id}"


def requeued_key(task_id: str) -> str:
    return f"qbench:requeued:{task_id}"


def holder(task_id: str, r: redis.Redis | None = None) -> dict | None:
    """Who holds a task's lease now, or None."""
    value = (r or client()).get(lease_key(task_id))
    return json.loads(value) if value else None


def requeue_count(task_id: str, r: redis.Redis | None = None) -> int:
    return int((r or client()).get(requeued_key(task_id)) or 0)


def _task_id(message: dict) -> str | None:
    headers = message.get("headers") or {}
    return headers.get("id") or (message.get("properties") or {}).get("correlation_id")


def requeue_if_abandoned(r: redis.Redis, tag: str) -> str | None:
    """Put one unacknowledged message back on its queue if its task holds no lease.

    Returns the task id it requeued, or None. Atomic against the lease being taken and against
    other reapers (WATCH on the message and the lease).
    """
    raw = r.hget(UNACKED, tag)
    if raw is None:
        return None
    message, _exchange, routing_key = json.loads(raw)
    task_id = _task_id(message)
    if task_id is None or routing_key not in QUEUES:
        return None
    with r.pipeline() as pipe:
        try:
            pipe.watch(UNACKED, lease_key(task_id))
            if pipe.hget(UNACKED, tag) != raw or pipe.exists(lease_key(task_id)):
                pipe.unwatch()
                return None
            message.setdefault("headers", {})["redelivered"] = True
            message.setdefault("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
            pipe.multi()
            pipe.zrem(UNACKED_INDEX, tag)
            pipe.hdel(UNACKED, tag)
            pipe.rpush(routing_key, json.dumps(message))  # consumers pop this end: next up
            pipe.incr(requeued_key(task_id))
            pipe.expire(requeued_key(task_id), REQUEUE_COUNT_TTL_S)
            pipe.execute()
        except redis.WatchError:
            return None
    return task_id


def reap_once(r: redis.Redis | None = None, now: float | None = None) -> list[str]:
    """One sweep: requeue every message delivered over the grace period ago without a lease."""
    r = r or client()
    ceiling = (now or time.time()) - lease_grace()
    tags = r.zrangebyscore(UNACKED_INDEX, "-inf", ceiling)
    requeued = []
    for tag in tags:
        task_id = requeue_if_abandoned(r, tag.decode() if isinstance(tag, bytes) else tag)
        if task_id:
            log.warning("task %s: its worker stopped renewing the lease; requeued", task_id)
            requeued.append(task_id)
    return requeued


class Keeper(threading.Thread):
    """Renews the leases of the tasks this worker holds and reaps abandoned ones."""

    def __init__(self, worker_name: str, held: Callable[[], list[str]]) -> None:
        super().__init__(name="qbench-lease-keeper", daemon=True)
        self.worker_name = worker_name
        self.held = held
        self.stopped = threading.Event()
        self.generations: dict[str, int] = {}  # requeue count when this worker got the task

    def renew(self, r: redis.Redis, script) -> None:
        ids = self.held()
        ttl_ms = int(lease_ttl() * 1000)
        for task_id in ids:
            if task_id not in self.generations:
                self.generations[task_id] = requeue_count(task_id, r)
            value = json.dumps({"worker": self.worker_name, "since": time.time()})
            if script(keys=[lease_key(task_id), requeued_key(task_id)],
                      args=[self.worker_name, value, ttl_ms, self.generations[task_id]]) == -1:
                log.warning("task %s: requeued while this worker was cut off from Redis; "
                            "its lease stays with the newer run", task_id)
        for gone in set(self.generations) - set(ids):
            del self.generations[gone]

    def run(self) -> None:
        r = client()
        script = r.register_script(_RENEW)
        renew_every = lease_ttl() / 3
        next_renew = next_reap = 0.0
        while not self.stopped.is_set():
            now = time.monotonic()
            try:
                if now >= next_renew:
                    self.renew(r, script)
                    next_renew = now + renew_every
                if now >= next_reap:
                    reap_once(r)
                    next_reap = now + reap_interval()
            except redis.RedisError as exc:  # Redis down for a moment: again in a second
                log.warning("lease keeper: %s", exc)
                next_renew = next_reap = now + 1.0
            self.stopped.wait(max(0.05, min(next_renew, next_reap) - time.monotonic()))


def held_by_this_worker() -> list[str]:
    """Ids of the tasks this worker's main process holds (reserved or running)."""
    from celery.worker import state

    for _ in range(5):
        try:
            return [req.id for req in list(state.reserved_requests)]
        except RuntimeError:  # the event loop changed the set while we copied it
            continue
    return []


_started: dict[str, int] = {}  # in the child: task id -> requeue count when its run began


def ensure_sole_run(task_id: str, worker_name: str) -> None:
    """Call first in a task. A delivery of a task that a live run on another worker holds is
    dropped; otherwise this run takes the lease and remembers the requeue count."""
    r = client()
    current = holder(task_id, r)
    if current and current.get("worker") != worker_name and not current.get("finished"):
        log.warning("task %s: already running on %s; this delivery is dropped",
                    task_id, current.get("worker"))
        raise Ignore()
    r.set(lease_key(task_id), json.dumps({"worker": worker_name, "since": time.time()}),
          px=int(lease_ttl() * 1000))
    _started[task_id] = requeue_count(task_id, r)


def settle(task_id: str, worker_name: str) -> None:
    """Call last in a task. A run that a newer one superseded ends ignored (counted once);
    otherwise the lease is marked finished, so a rerun of the same id (a second nightly
    trigger) is not taken for a duplicate while the lease runs out."""
    r = client()
    if requeue_count(task_id, r) > _started.pop(task_id, 0):
        log.warning("task %s: requeued while this run was cut off; its result is ignored "
                    "(the newer run's result counts)", task_id)
        raise Ignore()
    r.set(lease_key(task_id),
          json.dumps({"worker": worker_name, "since": time.time(), "finished": True}),
          px=int(lease_ttl() * 1000))
