"""Nobody watches the workers: real redis-server, real celery workers, real faults."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from qbench.results import read_table
from tests.helpers import (
    REPO,
    CeleryWorker,
    RedisServer,
    free_port,
    qbench,
    small_manifest,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.integration


def _job_id(proc: subprocess.CompletedProcess) -> str:
    assert "submitted job " in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout.split("submitted job ")[1].split(":")[0]


def _unit_keys(results, job_id):
    latency = read_table(results, "latency", job_id).to_pylist()
    models = read_table(results, "models", job_id).to_pylist()
    return ([(r["unit_id"], r["batch_size"]) for r in latency], [m["unit_id"] for m in models])


def _long_unit(tmp_path, iterations: int, name: str = "tiny"):
    """One fp32 unit kept busy by many timed iterations of a small model (no sleep hook);
    no artifact (scripting it is most of a small unit's time, and artifacts have their own
    tests)."""
    return small_manifest(tmp_path, name=name, quantization={"modes": ["fp32"]}, artifacts=False,
                          benchmark={"batch_sizes": [1, 2], "warmup": 0,
                                     "iterations": iterations, "threads": 1})


def _runs(workers) -> int:
    return sum(w.log.read_text().count("measure batch 1") for w in workers)


def _reports(workers) -> int:
    return sum(len(re.findall(r"qbench\.report_job\[[^]]+\] succeeded", w.log.read_text()))
               for w in workers)


def test_worker_killed_mid_unit_runs_again_within_two_minutes_under_defaults(tmp_path):
    """Default lease, reaper and visibility timeout: nothing in the environment is tuned."""
    redis = RedisServer(tmp_path / "redis").start()
    results = tmp_path / "results"
    env = worker_env(redis.url, results)
    for knob in ("QBENCH_VISIBILITY_TIMEOUT", "QBENCH_LEASE_TTL", "QBENCH_REAP_INTERVAL",
                 "QBENCH_LEASE_GRACE", "QBENCH_RESTORE_INTERVAL"):
        env.pop(knob, None)
    workers = [CeleryWorker(redis.url, results, tmp_path / f"w{i}.log", name=f"w{i}")
               for i in range(2)]
    for w in workers:
        w.env = dict(env)
        w.start()
    try:
        job_id = _job_id(qbench("submit", str(_long_unit(tmp_path, 300)), env=env))
        busy = wait_for(lambda: next((w for w in workers
                                      if b"measure batch 1" in w.log.read_bytes()), None),
                        120, "the unit to start")
        busy.stop(signal.SIGKILL)  # the whole process group: main process and its child
        killed = time.monotonic()
        survivor = next(w for w in workers if w is not busy)
        assert not read_table(results, "models", job_id).num_rows, "killed before it finished"

        def shown_as_vanished():
            out = qbench("status", job_id, "--results", str(results), env=env).stdout
            return ("  lost  " in out or "  requeued  " in out
                    or read_table(results, "models", job_id).num_rows) and out
        seen = wait_for(shown_as_vanished, 120, "status to show the unit lost", interval=1)
        wait_for(lambda: b"measure batch 1" in survivor.log.read_bytes(), 120,
                 "the unit to run again on the other worker")
        again = time.monotonic() - killed
        assert again < 120, f"SIGKILL to running again: {again:.0f}s"
        wait_for(lambda: read_table(results, "models", job_id).num_rows == 1, 180,
                 "the requeued unit to finish")
        wait_for(lambda: (results / "reports" / job_id / "report.md").exists(), 60, "the report")
        latency, models = _unit_keys(results, job_id)
        assert sorted(b for _, b in latency) == [1, 2], "every batch size exactly once"
        assert len(models) == 1
        assert "requeued" in survivor.log.read_text()
        print(f"\nSIGKILL to running again on the other worker: {again:.1f}s (defaults); "
              f"status said: {'lost' if '  lost  ' in str(seen) else 'requeued'}")
        time.sleep(2)
        assert _reports([survivor]) == 1, "the chord's report ran once"
    finally:
        for w in workers:
            w.stop()
        redis.stop()


def test_live_unit_longer_than_its_lease_runs_once(tmp_path):
    """A 1 s lease, a unit of many seconds: renewals keep it; nothing reruns it."""
    redis = RedisServer(tmp_path / "redis").start()
    results = tmp_path / "results"
    env = {**worker_env(redis.url, results), "QBENCH_LEASE_TTL": "1", "QBENCH_LEASE_GRACE": "2",
           "QBENCH_REAP_INTERVAL": "0.5"}
    workers = [CeleryWorker(redis.url, results, tmp_path / f"w{i}.log", name=f"w{i}")
               for i in range(2)]
    for w in workers:
        w.env.update(env)
        w.start()
    try:
        started = time.monotonic()
        job_id = _job_id(qbench("submit", str(_long_unit(tmp_path, 300)), env=env))
        wait_for(lambda: read_table(results, "models", job_id).num_rows == 1, 180, "the unit")
        wait_for(lambda: (results / "reports" / job_id / "report.md").exists(), 60, "the report")
        took = time.monotonic() - started
        assert took > 3 * 1, f"the unit outlived its lease several times over ({took:.0f}s)"
        assert _runs(workers) == 1, "started once"
        assert not any("requeued" in w.log.read_text() for w in workers)
        time.sleep(1)
        assert _reports(workers) == 1
    finally:
        for w in workers:
            w.stop()
        redis.stop()


def test_two_workers_racing_on_a_redelivered_unit_write_one_set_of_rows(tmp_path):
    """Redis redelivers a live unit (visibility timeout 3 s): the second worker drops it."""
    redis = RedisServer(tmp_path / "redis").start()
    results = tmp_path / "results"
    env = {**worker_env(redis.url, results), "QBENCH_VISIBILITY_TIMEOUT": "3",
           "QBENCH_RESTORE_INTERVAL": "1"}
    workers = [CeleryWorker(redis.url, results, tmp_path / f"w{i}.log", name=f"w{i}")
               for i in range(2)]
    for w in workers:
        w.env.update(env)
        w.start()
    try:
        job_id = _job_id(qbench("submit", str(_long_unit(tmp_path, 300)), env=env))
        wait_for(lambda: any("already running on" in w.log.read_text() for w in workers), 90,
                 "the redelivered copy to reach the other worker")
        wait_for(lambda: read_table(results, "models", job_id).num_rows == 1, 180, "the unit")
        wait_for(lambda: (results / "reports" / job_id / "report.md").exists(), 60, "the report")
        latency, models = _unit_keys(results, job_id)
        assert sorted(b for _, b in latency) == [1, 2] and len(models) == 1
        assert _runs(workers) == 1, "only the first delivery ran"
        time.sleep(2)
        assert _reports(workers) == 1, "the chord counted the unit once"
    finally:
        for w in workers:
            w.stop()
        redis.stop()


def test_redis_restarted_with_a_job_queued_loses_nothing(tmp_path):
    redis = RedisServer(tmp_path / "redis", appendonly=True).start()
    results = tmp_path / "results"
    env = worker_env(redis.url, results)
    job_id = _job_id(qbench("submit", str(small_manifest(tmp_path)), env=env))
    redis.stop()  # no worker has seen the job yet; it lives only in the append-only file
    redis.start()
    worker = CeleryWorker(redis.url, results, tmp_path / "w.log").start()
    try:
        wait_for(lambda: read_table(results, "models", job_id).num_rows == 2, 240, "the job")
        wait_for(lambda: (results / "reports" / job_id / "report.md").exists(), 60, "the report")
        latency, models = _unit_keys(results, job_id)
        assert len(latency) == len(set(latency)) == 4
    finally:
        worker.stop()
        redis.stop()


SUBMIT_MANY = """
import sys, time
from pathlib import Path
from qbench.orchestrate import plan_job, save_plan
from qbench.service.submit import submit_plan
manifest, results, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    plan = plan_job(manifest, job_id=f"many{i:03d}-20261125T000000-abcdef")
    save_plan(plan, results)
    submit_plan(plan)
print(time.time())
"""


def test_fifty_jobs_two_workers_none_lost_or_duplicated(tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    results = tmp_path / "results"
    env = worker_env(redis.url, results)
    # No artifacts: scripting one is ~1 s of a ~2 s unit here, and not what this test is about.
    manifest = small_manifest(tmp_path, name="many", quantization={"modes": ["fp32"]},
                              artifacts=False,
                              models=[{"id": "m", "arch": "mobilenet_v3_small", "num_classes": 4,
                                       "input_size": [32, 32]}],
                              benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1,
                                         "threads": 1})
    workers = [CeleryWorker(redis.url, results, tmp_path / f"w{i}.log", name=f"w{i}").start()
               for i in range(2)]
    try:
        started = time.time()
        sub = subprocess.run([sys.executable, "-c", SUBMIT_MANY, str(manifest), str(results), "50"],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert sub.returncode == 0, sub.stderr
        # Polled once a second: reading every unit file more often takes CPU from the workers.
        wait_for(lambda: read_table(results, "models").num_rows >= 50, 600, "50 jobs", interval=1)
        elapsed = time.time() - started
        wait_for(lambda: len(list((results / "reports").glob("*/report.md"))) == 50, 300,
                 "50 reports")
        latency = read_table(results, "latency").to_pylist()
        models = read_table(results, "models").to_pylist()
        assert len(models) == 50 and len({m["job_id"] for m in models}) == 50
        assert len(latency) == 50 and len({(r["job_id"], r["unit_id"]) for r in latency}) == 50
        assert all(m["status"] == "ok" for m in models)
        ran_on = {w.log.name: w.log.read_text().count("succeeded in") for w in workers}
        assert all(n > 0 for n in ran_on.values()), f"both workers took units: {ran_on}"
        print(f"\n50 jobs, 2 workers: submit to last row {elapsed:.1f}s; tasks per worker {ran_on}")
    finally:
        for w in workers:
            w.stop()
        redis.stop()


def test_bad_units_become_errors_and_the_next_unit_runs(tmp_path, monkeypatch):
    # A worker reads inputs only inside its own data roots, and a 16M batch is above the
    # default batch limit: this test raises both, for the submitter and the worker alike.
    monkeypatch.setenv("QBENCH_DATA_ROOTS", str(tmp_path))
    monkeypatch.setenv("QBENCH_MAX_BATCH_SIZE", "16000000")
    redis = RedisServer(tmp_path / "redis").start()
    results = tmp_path / "results"
    env = worker_env(redis.url, results)
    # This worker also takes the gpu queue, on a host that may have no CUDA. It starts once the
    # job is queued and one staged input removed: started first, it could reach that unit before
    # the file is gone.
    worker = CeleryWorker(redis.url, results, tmp_path / "w.log", queues="cpu,gpu")
    weights = tmp_path / "weights"
    weights.mkdir()
    # Files that are no torch archive at all are refused at submit (tests/test_file_checks.py);
    # these are torch archives that only loading can find wrong: a corrupt pickle inside the
    # zip torch writes, and a pickled payload that weights_only=True must refuse.
    import zipfile

    with zipfile.ZipFile(weights / "corrupt.pt", "w") as archive:
        archive.writestr("corrupt/data.pkl", b"\x80\x04not really a checkpoint")
        archive.writestr("corrupt/version", "3\n")

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"state_dict": Payload()}, weights / "pickled.pt")
    gone = weights / "gone.pt"
    torch.save({}, gone)
    base = {"arch": "resnet18", "num_classes": 10, "input_size": [64, 64]}
    manifest = small_manifest(tmp_path, name="faults", models=[
        {"id": "corrupt", "checkpoint": "weights/corrupt.pt", **base},
        {"id": "pickled", "checkpoint": "weights/pickled.pt", **base},
        {"id": "gone", "checkpoint": "weights/gone.pt", **base},
        {"id": "huge", **{**base, "input_size": [1024, 1024]}},
    ], quantization={"modes": ["fp32"]}, artifacts=False,
        benchmark={"batch_sizes": [1, 16_000_000], "warmup": 0, "iterations": 1, "threads": 1})
    try:
        sub = qbench("submit", str(manifest), env=env)
        job_id = _job_id(sub)
        # Valid when submitted, missing when the worker gets to it: the unit reads the copy
        # submit staged into the results store, so that copy is the one that vanishes.
        staged = list(results.glob("inputs/*/gone.pt"))
        assert len(staged) == 1
        staged[0].unlink()
        gone.unlink()
        worker.start()
        proc = qbench("status", job_id, "--results", str(results), env=env)
        assert proc.returncode == 0
        wait_for(lambda: read_table(results, "models", job_id).num_rows == 4, 300, "4 units")
        rows = {m["model_id"]: m for m in read_table(results, "models", job_id).to_pylist()}
        assert rows["corrupt"]["status"] == "error"
        assert "corrupt.pt" in rows["corrupt"]["error"]
        assert rows["pickled"]["status"] == "error" and "pickled.pt" in rows["pickled"]["error"]
        assert not (tmp_path / "pwned").exists(), "weights_only=True refused the pickled payload"
        assert rows["gone"]["status"] == "error" and "not found" in rows["gone"]["error"]
        assert rows["huge"]["status"] == "ok"
        huge = {r["batch_size"]: r for r in read_table(results, "latency", job_id).to_pylist()
                if r["model_id"] == "huge"}
        assert huge[1]["status"] == "ok"
        assert huge[16_000_000]["status"] == "oom" and huge[16_000_000]["error"]

        if not torch.cuda.is_available():
            gpu = small_manifest(tmp_path, name="gpu", quantization={"modes": ["fp32"]},
                                 benchmark={"devices": ["cuda"], "batch_sizes": [1],
                                            "warmup": 0, "iterations": 1})
            gpu_job = _job_id(qbench("submit", str(gpu), env=env))
            wait_for(lambda: read_table(results, "models", gpu_job).num_rows == 1, 120, "gpu unit")
            row = read_table(results, "models", gpu_job).to_pylist()[0]
            assert row["status"] == "error" and "CUDA is not available" in row["error"]

        status = qbench("status", job_id, "--results", str(results), env=env)
        assert "corrupt.pt" in status.stdout and status.stdout.count("  error  ") >= 3
        after = qbench("submit", str(small_manifest(tmp_path, name="after")), "--wait",
                       "--timeout", "300", env=env)
        assert after.returncode == 0, after.stdout + after.stderr
        assert worker.proc.poll() is None, "the worker stayed up"
    finally:
        worker.stop()
        redis.stop()


def test_cancel_skips_units_that_have_not_started(tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    results = tmp_path / "results"
    env = worker_env(redis.url, results)
    manifest = small_manifest(tmp_path, name="cancelme")
    job_id = _job_id(qbench("submit", str(manifest), env=env))
    cancel = qbench("cancel", job_id, "--results", str(results), env=env)
    assert cancel.returncode == 0, cancel.stderr
    assert "2 unit(s) had not started" in cancel.stdout
    worker = CeleryWorker(redis.url, results, tmp_path / "w.log").start()
    try:
        status = None
        for _ in range(120):
            status = qbench("status", job_id, "--results", str(results), env=env)
            if status.stdout.count("cancelled") >= 2 and "report: done" in status.stdout:
                break
            time.sleep(1)
        assert status.stdout.count("cancelled") >= 2 and "report: done" in status.stdout, status.stdout
        assert read_table(results, "models", job_id).num_rows == 0
    finally:
        worker.stop()
        redis.stop()


def test_submit_with_redis_down_fails_in_one_line_and_leaves_no_job(tmp_path):
    results = tmp_path / "results"
    env = worker_env(f"redis://127.0.0.1:{free_port()}/0", results)  # nothing listens there
    proc = qbench("submit", str(small_manifest(tmp_path)), "--results", str(results), env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the broker" in lines[0], proc.stderr
    assert not list(results.glob("jobs/*.json")), "no plan claims a job that was never queued"
    assert not (results / "inputs").exists(), "nothing staged for it either"


def test_redis_restarted_mid_unit_the_unit_completes_once(tmp_path):
    redis = RedisServer(tmp_path / "redis", appendonly=True).start()
    results = tmp_path / "results"
    env = worker_env(redis.url, results)
    worker = CeleryWorker(redis.url, results, tmp_path / "w.log").start()
    try:
        job_id = _job_id(qbench("submit", str(_long_unit(tmp_path, 150)), env=env))
        wait_for(lambda: b"measure batch 1" in worker.log.read_bytes(), 120, "the unit to start")
        redis.stop()
        time.sleep(2)
        redis.start()  # same port, same append-only file
        wait_for(lambda: read_table(results, "models", job_id).num_rows == 1, 240, "the unit")
        wait_for(lambda: (results / "reports" / job_id / "report.md").exists(), 120, "the report")
        latency, models = _unit_keys(results, job_id)
        assert sorted(b for _, b in latency) == [1, 2] and len(models) == 1
        assert 1 <= _runs([worker]) <= 2, "completed, or rerun once"
        assert read_table(results, "models", job_id).to_pylist()[0]["status"] == "ok"
    finally:
        worker.stop()
        redis.stop()


def test_results_folder_unwritable_mid_job_is_a_clear_failure_never_a_half_file(tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    results = tmp_path / "results"
    env = worker_env(redis.url, results)
    worker = CeleryWorker(redis.url, results, tmp_path / "w.log").start()
    try:
        job_id = _job_id(qbench("submit", str(_long_unit(tmp_path, 150)), env=env))
        wait_for(lambda: b"measure batch 1" in worker.log.read_bytes(), 120, "the unit to start")
        # Tests run as root, which ignores file modes: a file where the folder should be makes
        # the latency table unwritable for anyone.
        shutil.rmtree(results / "latency", ignore_errors=True)
        (results / "latency").write_text("not a folder")
        status = wait_for(lambda: (lambda out: "  error  " in out and out)(
            qbench("status", job_id, "--results", str(results), env=env).stdout), 240,
            "the unit to fail", interval=1)
        assert "results store: cannot write" in status and "/latency" in status, status
        assert read_table(results, "models", job_id).num_rows == 0, "no models row claims it"
        leftovers = [p for p in results.rglob("*") if p.name.endswith(".tmp")]
        assert not leftovers, f"no half-written file: {leftovers}"
        assert worker.proc.poll() is None, "the worker stayed up"
        wait_for(lambda: "report: failed" in qbench("status", job_id, "--results", str(results),
                                                    env=env).stdout, 60, "the chord to give up")
    finally:
        worker.stop()
        redis.stop()


def test_reaper_moves_an_abandoned_message_once_and_leaves_a_leased_one(tmp_path, monkeypatch):
    """The sweep against a real redis-server, on messages laid out as Kombu lays them out."""
    import json

    import redis as redis_lib

    from qbench.service import lease

    server = RedisServer(tmp_path / "redis").start()
    monkeypatch.setenv("QBENCH_BROKER_URL", server.url)
    r = redis_lib.Redis.from_url(server.url)
    try:
        old = time.time() - lease.lease_grace() - 5
        for tag, task_id in (("t-dead", "unit-dead"), ("t-live", "unit-live"),
                             ("t-new", "unit-new")):
            message = {"headers": {"id": task_id}, "properties": {"delivery_tag": tag,
                                                                  "delivery_info": {}}}
            r.hset(lease.UNACKED, tag, json.dumps([message, "cpu", "cpu"]))
            r.zadd(lease.UNACKED_INDEX, {tag: time.time() if tag == "t-new" else old})
        r.set(lease.lease_key("unit-live"), json.dumps({"worker": "w1@x"}), px=30_000)

        assert lease.reap_once(r) == ["unit-dead"]
        assert lease.reap_once(r) == [], "a second sweep finds nothing left to move"
        queued = [json.loads(m) for m in r.lrange("cpu", 0, -1)]
        assert [m["headers"]["id"] for m in queued] == ["unit-dead"]
        assert queued[0]["headers"]["redelivered"] is True
        assert not r.hexists(lease.UNACKED, "t-dead") and r.hexists(lease.UNACKED, "t-live")
        assert r.hexists(lease.UNACKED, "t-new"), "inside the grace period: left alone"
        assert lease.requeue_count("unit-dead", r) == 1 and lease.requeue_count("unit-live", r) == 0
    finally:
        server.stop()
