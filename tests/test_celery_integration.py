"""qbench submit -> real redis-server -> real celery worker -> Parquet rows + report."""

import pytest

from qbench.results import read_table
from tests.helpers import CeleryWorker, RedisServer, qbench, small_manifest, worker_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One broker and one worker for the module: each test submits its own job (own job id),
    and the tests that break something check that the worker is still up afterwards."""
    root = tmp_path_factory.mktemp("stack")
    redis = RedisServer(root / "redis").start()
    results = root / "results"
    worker = CeleryWorker(redis.url, results, root / "worker.log").start()
    yield redis, worker, results
    worker.stop()
    redis.stop()


def _rows(results, job_id):
    latency = read_table(results, "latency", job_id).to_pylist()
    models = read_table(results, "models", job_id).to_pylist()
    return latency, models


def test_submit_wait_gives_same_rows_as_run(tmp_path, stack):
    redis, worker, results = stack
    manifest = small_manifest(tmp_path)
    env = worker_env(redis.url, results)
    proc = qbench("submit", str(manifest), "--wait", "--timeout", "300", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr + worker.log.read_text()[-3000:]
    job_id = proc.stdout.split("submitted job ")[1].split(":")[0]
    assert "Exception ignored" not in proc.stderr, proc.stderr  # nothing torn down at exit
    latency, models = _rows(results, job_id)
    assert sorted((r["mode"], r["batch_size"], r["status"]) for r in latency) == [
        ("fp32", 1, "ok"), ("fp32", 2, "ok"), ("int8_static", 1, "ok"), ("int8_static", 2, "ok")]
    assert sorted(m["status"] for m in models) == ["ok", "ok"]
    # The chord ran the report once the last unit ended.
    assert (results / "reports" / job_id / "report.md").exists()
    assert (results / "reports" / job_id / "summary.csv").exists()
    # Between the units and the report, the model's timing task timed both side by side and
    # filled the variant's paired columns; the report came after it.
    pairs = read_table(results, "pairs", job_id).to_pylist()
    assert sorted((p["mode"], p["over_mode"], p["batch_size"]) for p in pairs) == [
        ("fp32", "int8_static", 1), ("fp32", "int8_static", 2),
        ("int8_static", "fp32", 1), ("int8_static", "fp32", 2)]
    assert all(p["status"] == "ok" and p["speedup_ci_low"] <= p["speedup"] <= p["speedup_ci_high"]
               for p in pairs)
    int8 = [r for r in latency if r["mode"] == "int8_static"]
    assert {r["pairing"] for r in int8} == {"side_by_side"}
    by_batch = {p["batch_size"]: p for p in pairs if p["mode"] == "int8_static"}
    assert all(r["speedup"] == by_batch[r["batch_size"]]["speedup"] for r in int8)
    pairs_file = next((results / "pairs").rglob(f"job={job_id}/*.parquet"))
    report = results / "reports" / job_id / "report.md"
    assert report.stat().st_mtime >= pairs_file.stat().st_mtime

    # The same manifest in-process writes the same kinds of rows with the same columns.
    local = tmp_path / "local"
    ran = qbench("run", str(manifest), "--results", str(local))
    assert ran.returncode == 0, ran.stderr[-2000:]
    l_latency = read_table(local, "latency").to_pylist()
    assert sorted((r["mode"], r["batch_size"]) for r in l_latency) == sorted(
        (r["mode"], r["batch_size"]) for r in latency)
    assert read_table(local, "latency").schema == read_table(results, "latency").schema
    assert len(read_table(local, "pairs").to_pylist()) == len(pairs)  # qbench run times them too

    status = qbench("status", job_id, "--results", str(results), env=env)
    assert status.returncode == 0
    assert status.stdout.count("  ok  ") >= 2, status.stdout
    assert "side by side: r18 cpu: ok" in status.stdout, status.stdout


def test_bad_unit_does_not_take_the_worker_down(tmp_path, stack):
    redis, worker, results = stack
    env = worker_env(redis.url, results)
    # An unknown arch, or a file that is no torch archive, is refused at submit; what still
    # reaches a worker and fails there is a torch archive holding a pickled Python object
    # (staged with the job, then refused by the safe loader).
    import fractions

    import torch

    torch.save({"state_dict": {}, "ratio": fractions.Fraction(1, 3)}, tmp_path / "weights.pt")
    bad = small_manifest(tmp_path, name="bad", models=[
        {"id": "broken", "arch": "resnet18", "checkpoint": "weights.pt", "input_size": [64, 64]}])
    proc = qbench("submit", str(bad), "--wait", "--timeout", "120", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "weights.pt: cannot be loaded safely" in proc.stdout
    good = qbench("submit", str(small_manifest(tmp_path, name="good")), "--wait",
                  "--timeout", "300", env=env)
    assert good.returncode == 0, good.stdout + good.stderr
    assert worker.proc.poll() is None


def test_submit_without_broker_is_one_line_error(tmp_path):
    env = worker_env("redis://127.0.0.1:1/0", tmp_path / "results")
    proc = qbench("submit", str(small_manifest(tmp_path)), env=env)
    assert proc.returncode == 2
    assert "cannot reach the broker at redis://127.0.0.1:1/0" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_worker_refuses_pickled_messages(tmp_path, stack):
    from kombu import Connection

    redis, worker, results = stack
    marker = tmp_path / "pwned"
    with Connection(redis.url) as conn:
        conn.Producer(serializer="pickle").publish(
            {"args": [_Payload(marker)]}, routing_key="cpu", exchange="",
            headers={"task": "qbench.run_unit", "id": "evil-1", "lang": "py"}, declare=[])
    from tests.helpers import wait_for

    wait_for(lambda: b"Refusing to deserialize untrusted content of type pickle"
             in worker.log.read_bytes(), 30, "the worker to refuse the pickled message")
    assert not marker.exists()
    assert worker.proc.poll() is None
    env = worker_env(redis.url, results)
    ok = qbench("submit", str(small_manifest(tmp_path)), "--wait", "--timeout", "300", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
