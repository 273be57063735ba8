"""Crafted unit messages sent to a real celery worker on a real redis-server.

The worker trusts no sender: escaping ids and base_dir are refused, nothing is written outside
the results folder, the worker stays up, and an error row is recorded where the ids allow it.
One redis-server and one worker serve every test of the module.
"""

from __future__ import annotations

import datetime as dt

import pytest
from celery import Celery

from qbench.manifest import Manifest, unit_id_for
from qbench.orchestrate import plan_from
from qbench.results import read_table
from tests.helpers import CeleryWorker, RedisServer, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("messages")
    redis = RedisServer(tmp / "redis").start()
    results = tmp / "deep" / "results"
    worker = CeleryWorker(redis.url, results, tmp / "worker.log").start()
    client = Celery("sender", broker=redis.url, backend=redis.url)
    client.conf.update(task_serializer="json", result_serializer="json",
                       accept_content=["json"], result_accept_content=["json"])
    yield tmp, results, worker, client
    worker.stop()
    redis.stop()


def _unit(tmp, **model_fields) -> dict:
    manifest = Manifest.model_validate({
        "name": "msg", "models": [{"id": "r18", "arch": "resnet18", "num_classes": 10,
                                   "input_size": [64, 64], **model_fields}],
        "quantization": {"modes": ["fp32"]},
        "benchmark": {"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1},
        "inspect": {"images": 0}, "artifacts": True})
    plan = plan_from(manifest, tmp, "crafted", now=dt.datetime(2026, 1, 1, 0, 0, 0))
    return plan.units[0].model_dump(mode="json")


def _send(client, message, timeout=120):
    return client.send_task("qbench.run_unit", args=[message], queue="cpu").get(timeout=timeout)


def _everything_under(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_escaping_job_id_is_refused_and_nothing_lands_outside(stack):
    tmp, results, worker, client = stack
    unit = _unit(tmp)
    evil = "../../outside/evil-20260101T000000-abcdef"
    unit.update(job_id=evil, unit_id=unit_id_for(evil, "r18", "fp32", "cpu"))
    out = _send(client, unit)
    assert out["status"] == "refused" and out["error"].startswith("unit refused: job_id"), out
    assert not (tmp / "outside").exists() and not (tmp / "deep" / "outside").exists()
    assert not [p for p in _everything_under(tmp) if "evil" in str(p)]
    assert "job_id" in worker.log.read_text()
    assert worker.proc.poll() is None


@pytest.mark.parametrize("field, value", [
    ("unit_id", "../../../escape"),
    ("job_date", "../../2026-01-01"),
    ("unit_id", "0123456789abcdef"),  # a well-formed id that is not this unit's own
])
def test_escaping_or_forged_ids_are_refused(stack, field, value):
    tmp, results, worker, client = stack
    unit = _unit(tmp)
    unit[field] = value
    assert _send(client, unit)["status"] == "refused"
    assert not [p for p in _everything_under(tmp) if "escape" in str(p)]
    assert read_table(results, "models", unit["job_id"]).num_rows == 0
    assert worker.proc.poll() is None


def test_base_dir_of_root_does_not_open_system_files(stack):
    """The sender's base_dir is not a root: /etc/passwd is refused before any load is tried.
    The ids are sound, so the refusal is recorded as the unit's error row."""
    tmp, results, worker, client = stack
    unit = _unit(tmp, checkpoint="etc/passwd")
    unit["base_dir"] = "/"
    out = _send(client, unit)
    assert out["status"] == "refused"
    rows = read_table(results, "models", unit["job_id"]).to_pylist()
    assert [r["status"] for r in rows] == ["error"]
    assert "model.checkpoint" in rows[0]["error"] and "outside the allowed roots" in rows[0]["error"]
    assert "weights_only" not in rows[0]["error"], "never got as far as torch.load"
    assert worker.proc.poll() is None


@pytest.mark.parametrize("message", ["not a unit", 42, {"job_id": "x"}, None])
def test_malformed_messages_are_refused(stack, message):
    tmp, results, worker, client = stack
    assert _send(client, message)["status"] == "refused"
    assert worker.proc.poll() is None


def test_the_worker_still_runs_a_sound_unit_afterwards(stack):
    tmp, results, worker, client = stack
    unit = _unit(tmp)
    out = _send(client, unit, timeout=300)
    assert out["status"] == "ok", out
    wait_for(lambda: read_table(results, "models", unit["job_id"]).num_rows == 1, 30, "the row")
    row = read_table(results, "models", unit["job_id"]).to_pylist()[0]
    assert row["status"] == "ok"
    for path in _everything_under(tmp):
        if "redis" not in path.parts and path.name != "worker.log":
            assert results in path.parents, f"{path} written outside the results folder"


@pytest.mark.parametrize("job_id", ["../../outside/evil-20260101T000000-abcdef",
                                    "{tmp}/abs/evil-20260101T000000-abcdef",
                                    "never-planned-20260101T000000-abcdef", 42])
def test_a_crafted_report_message_writes_nothing(stack, job_id):
    """The chord's body is a task like any other: its job id is a name of a job this results
    store planned, never a path (it used to create that folder and write the report there)."""
    tmp, results, worker, client = stack
    if isinstance(job_id, str):
        job_id = job_id.replace("{tmp}", str(tmp))
    out = client.send_task("qbench.report_job", args=[[], job_id], queue="cpu").get(timeout=60)
    assert out["status"] == "refused", out
    assert not [p for p in _everything_under(tmp) if "evil" in str(p) or "never-planned" in str(p)]
    assert not (tmp / "outside").exists() and not (tmp / "abs").exists()
    assert worker.proc.poll() is None


@pytest.mark.parametrize("args", [
    ["../../outside/evil-20260101T000000-abcdef", "r18", "cpu"],
    ["never-planned-20260101T000000-abcdef", "r18", "cpu"],
    ["{planned}", "../../evil", "cpu"], ["{planned}", "r18", "../evil"], ["{planned}", 7, "cpu"]])
def test_a_crafted_timing_message_writes_nothing(stack, args):
    """The side-by-side timing task takes ids only: a job this results store planned, and a
    model and device of its units; anything else is refused before a file is opened."""
    tmp, results, worker, client = stack
    if args[0] == "{planned}":
        import datetime as dt

        from qbench.manifest import Manifest
        from qbench.orchestrate import plan_from, save_plan

        manifest = Manifest.model_validate({"name": "timed", "models": [
            {"id": "r18", "arch": "resnet18", "num_classes": 10, "input_size": [64, 64]}]})
        plan = plan_from(manifest, tmp, "timed", now=dt.datetime(2026, 1, 2))
        save_plan(plan, results)
        args = [plan.job_id, *args[1:]]
    before = set(_everything_under(tmp))
    out = client.send_task("qbench.time_model", args=[[], *args], queue="cpu").get(timeout=60)
    assert out["status"] == "refused", out
    written = [p for p in set(_everything_under(tmp)) - before
               if "redis" not in p.parts and p.name != "worker.log"]
    assert not written, written
    assert worker.proc.poll() is None


def test_a_unit_over_this_workers_limits_still_gets_its_error_row(stack, monkeypatch):
    """A submitter with higher limits than the worker: the unit is refused here, but its ids
    are sound, so the refusal is its error row (the chord and `status` count it) instead of a
    unit shown `running` forever."""
    tmp, results, worker, client = stack
    monkeypatch.setenv("QBENCH_MAX_BATCH_SIZE", "100000")
    unit = _unit(tmp)
    unit["benchmark"]["batch_sizes"] = [50000]
    unit["job_id"] = unit["job_id"].replace("msg-", "big-")
    unit["job_name"] = "big"
    unit["unit_id"] = unit_id_for(unit["job_id"], "r18", "fp32", "cpu")
    out = _send(client, unit)
    assert out["status"] == "refused" and out["unit_id"] == unit["unit_id"], out
    rows = read_table(results, "models", unit["job_id"]).to_pylist()
    assert [r["status"] for r in rows] == ["error"], rows
    assert "batch_sizes" in rows[0]["error"] and "above the limit" in rows[0]["error"]
    assert rows[0]["model_id"] == "r18" and rows[0]["mode"] == "fp32"
    assert worker.proc.poll() is None
