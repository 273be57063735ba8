"""A unit past its time limit is killed and recorded; where a unit's time goes, per phase."""

from __future__ import annotations

import signal
import subprocess
import time

import psutil
import pytest

from qbench.phases import COLUMNS
from qbench.results import read_table
from tests.helpers import CeleryWorker, RedisServer, qbench, small_manifest, wait_for, worker_env


def _two_models(tmp_path, name: str, limit: float, iterations: int = 50):
    models = [{"id": mid, "source": "torchvision", "arch": "resnet18", "num_classes": 10,
               "input_size": [64, 64]} for mid in ("first", "second")]
    return small_manifest(tmp_path, name=name, models=models, artifacts=False,
                          quantization={"modes": ["fp32"]},
                          benchmark={"batch_sizes": [1, 2], "warmup": 0, "iterations": iterations,
                                     "threads": 1, "pairing": "off", "max_unit_seconds": limit})


def _unit_process(worker: CeleryWorker) -> psutil.Process:
    """The process running the unit: a child of the worker's pool child."""
    def find():
        pool = psutil.Process(worker.proc.pid).children()
        return next((c for p in pool for c in p.children()), None)
    return wait_for(find, 60, "the unit's process")


@pytest.mark.integration
def test_a_stopped_unit_times_out_and_the_worker_runs_the_next(tmp_path):
    """A real worker on a real redis-server; the first unit's process is SIGSTOPped for real.
    The manifest allows 600 s, the worker's ceiling 30 s: the lower wins."""
    redis = RedisServer(tmp_path / "redis").start()
    results = tmp_path / "results"
    env = {**worker_env(redis.url, results), "QBENCH_MAX_UNIT_SECONDS": "30"}
    worker = CeleryWorker(redis.url, results, tmp_path / "w.log")
    worker.env.update(env)
    worker.start()
    try:
        submitted = qbench("submit", str(_two_models(tmp_path, "hang", 600)), "--results",
                           str(results), env=env)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.split("submitted job ")[1].split(":")[0]
        wait_for(lambda: b"measure batch 1" in worker.log.read_bytes(), 120, "the first unit")
        stuck = _unit_process(worker)
        stuck.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        status = qbench("status", job_id, "--results", str(results), env=env).stdout
        assert "running" in status and "measure batch" in status, status
        wait_for(lambda: any(r["status"] == "timeout"
                             for r in read_table(results, "models", job_id).to_pylist()),
                 120, "the timeout row")
        killed_after = time.monotonic() - stopped_at
        assert not stuck.is_running() or stuck.status() == psutil.STATUS_ZOMBIE
        wait_for(lambda: read_table(results, "models", job_id).num_rows == 2, 180,
                 "the second unit, on the same worker")
        wait_for(lambda: (results / "reports" / job_id / "report.md").exists(), 60, "the report")
        rows = {r["model_id"]: r for r in read_table(results, "models", job_id).to_pylist()}
        hung, ok = rows["first"], rows["second"]
        assert hung["status"] == "timeout" and ok["status"] == "ok"
        assert hung["max_unit_seconds"] == 30.0 and ok["max_unit_seconds"] == 30.0
        assert 30 <= hung["run_seconds"] < 60, hung["run_seconds"]
        assert "past its limit of 30 s" in hung["error"] and "unpaired timing" in hung["error"]
        assert not read_table(results, "latency", job_id).to_pylist() or all(
            r["model_id"] == "second" for r in read_table(results, "latency", job_id).to_pylist())
        assert worker.proc.poll() is None, "the worker stays up"
        log = worker.log.read_text()
        assert "requeued" not in log and log.count("measure batch 1") == 2, "each unit ran once"
        final = qbench("status", job_id, "--results", str(results), env=env)
        assert "1 ok, 1 timeout" in final.stdout and "report: done" in final.stdout, final.stdout
        print(f"\nunit stopped -> timeout row after {killed_after:.1f}s (limit 30 s; the unit "
              f"ran {hung['run_seconds']:.1f}s); the next unit: {ok['run_seconds']:.1f}s")
    finally:
        worker.stop()
        redis.stop()


def test_qbench_run_honours_the_limit_and_records_phases(tmp_path):
    results = tmp_path / "results"
    timed_out = qbench("run", str(_two_models(tmp_path, "slow", 0.5, iterations=400)),
                       "--results", str(results))
    assert timed_out.returncode == 1, timed_out.stderr
    rows = read_table(results, "models").to_pylist()
    assert [r["status"] for r in rows] == ["timeout", "timeout"]
    assert all(0.5 <= r["run_seconds"] < 30 and r["max_unit_seconds"] == 0.5 for r in rows)

    manifest = small_manifest(tmp_path, name="phases", artifacts=True)
    done = qbench("run", str(manifest), "--results", str(results / "p"))
    assert done.returncode == 0, done.stderr
    for row in read_table(results / "p", "models").to_pylist():
        assert row["status"] == "ok"
        assert row["queued_at"] <= row["started_at"] <= row["ended_at"]
        phases = {c: row[c] for c in COLUMNS}
        for c in ("load_seconds", "quantize_seconds", "unpaired_timing_seconds",
                  "write_seconds"):
            assert phases[c] is not None and phases[c] > 0, (c, phases)
        assert phases["evaluate_seconds"] is None, "no dataset: no evaluate phase"
        if row["mode"] != "fp32":
            # side by side (the default), the model's timing step times the pairs, not the unit
            assert phases["paired_timing_seconds"] is None and phases["inspect_seconds"] > 0
        total = sum(v for v in phases.values() if v)
        assert total <= row["run_seconds"] + 0.01
        assert total > 0.8 * row["run_seconds"], (total, row["run_seconds"])
    assert "Time by phase" in (results / "p" / "reports").rglob("report.md").__next__().read_text()


def test_a_bad_worker_ceiling_stops_the_worker_at_start(tmp_path):
    env = {**worker_env("redis://127.0.0.1:1/0", tmp_path), "QBENCH_MAX_UNIT_SECONDS": "soon"}
    proc = subprocess.run([str(CeleryWorker("x", tmp_path, tmp_path / "l").args[0]), "-A",
                           "qbench.service.app", "worker", "-Q", "cpu"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "QBENCH_MAX_UNIT_SECONDS='soon'" in proc.stdout + proc.stderr
