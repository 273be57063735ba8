"""`qbench gc`: staged inputs nothing references are removed; nothing else, even mid-submit."""

from __future__ import annotations

import os
import time

import pytest
import redis as redis_py
import torch

from qbench.orchestrate import plan_job
from qbench.pipeline import failed_row, write_outcome
from qbench.service import gc
from qbench.service.staging import sha256_file, stage_plan
from tests.helpers import RedisServer, qbench, small_manifest, worker_env


def _manifest(tmp_path, name: str):
    torch.save({"w": torch.zeros(100 + len(name) * 10)}, tmp_path / f"{name}.pt")
    return small_manifest(tmp_path, name=name, models=[
        {"id": "m", "arch": "resnet18", "num_classes": 10, "input_size": [64, 64],
         "checkpoint": f"{name}.pt"}], quantization={"modes": ["fp32"]})


def _age(inputs, seconds: float) -> None:
    then = time.time() - seconds
    for p in inputs.rglob("*"):
        os.utime(p, (then, then), follow_symlinks=False)
    for p in inputs.iterdir():
        os.utime(p, (then, then), follow_symlinks=False)


@pytest.fixture
def store(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    results = tmp_path / "results"
    env = worker_env(server.url, results)
    yield server, results, env
    server.stop()


def _submit(manifest, results, env):
    proc = qbench("submit", str(manifest), "--results", str(results), env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("submitted job ")[1].split(":")[0]


def test_gc_removes_only_what_no_row_and_no_queued_unit_references(tmp_path, store, monkeypatch):
    server, results, env = store
    r = redis_py.Redis.from_url(server.url)
    # done: a job whose unit wrote its row (then its message is gone from the queue)
    done_job = _submit(_manifest(tmp_path, "done"), results, env)
    r.delete("cpu")
    monkeypatch.setenv("QBENCH_RESULTS_DIR", str(results))
    from qbench.orchestrate import load_plan

    unit = load_plan(results, done_job).units[0]
    write_outcome(unit, results, [], failed_row(unit, "ran and failed: a row all the same"))
    # queued: units on the queue, no worker yet
    _submit(_manifest(tmp_path, "queued"), results, env)
    # orphan: staged by a submit that never queued (the broker went away in between)
    stage_plan(plan_job(_manifest(tmp_path, "orphan")), results)
    orphan = sha256_file(tmp_path / "orphan.pt")
    inputs = results / "inputs"
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not the store's")
    (inputs / "link-out").symlink_to(outside)
    assert len(list(inputs.iterdir())) == 4
    _age(inputs, 7200)

    dry = qbench("gc", "--dry-run", "--results", str(results), env=env)
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {inputs / orphan}" in dry.stdout, dry.stdout
    size = (tmp_path / "orphan.pt").stat().st_size
    assert f"would remove 1 input(s), {size} bytes" in dry.stdout + dry.stderr, dry.stdout + dry.stderr
    assert (inputs / orphan).exists(), "a dry run removes nothing"

    real = qbench("gc", "--results", str(results), env=env)
    assert real.returncode == 0, real.stderr
    assert f"removed 1 input(s), {size} bytes" in real.stdout + real.stderr
    left = sorted(p.name for p in inputs.iterdir())
    assert left == sorted(["link-out", sha256_file(tmp_path / "done.pt"),
                           sha256_file(tmp_path / "queued.pt")])
    assert outside.read_bytes() == b"not the store's"


def test_a_unit_queued_while_gc_runs_keeps_its_inputs(tmp_path, store, monkeypatch):
    """Real interleavings: a submit reuses the entry after gc read the queues, and a submit
    stages it again right after gc moved it aside."""
    server, results, env = store
    r = redis_py.Redis.from_url(server.url)
    late = _manifest(tmp_path, "late")
    stage_plan(plan_job(late), results)  # staged long ago by a submit that never queued
    digest = sha256_file(tmp_path / "late.pt")
    _age(results / "inputs", 7200)
    real_queued = gc.queued_or_running
    calls = []

    def submit_right_after_gc_read_the_queues(client):
        seen = real_queued(client)
        if not calls:
            _submit(late, results, env)  # reuses the staged copy and queues its unit
        calls.append(seen)
        return seen

    monkeypatch.setattr(gc, "queued_or_running", submit_right_after_gc_read_the_queues)
    done = gc.collect(results, r, grace=600)
    assert not done.removed and (results / "inputs" / digest / "late.pt").is_file()

    r.delete("cpu")  # that job is gone again; its input is old again
    _age(results / "inputs", 7200)
    monkeypatch.setattr(gc, "queued_or_running", real_queued)
    real_rename = os.rename
    renamed = []

    def submit_right_after_the_move(src, dst):
        real_rename(src, dst)
        if not renamed:
            renamed.append(dst)
            _submit(late, results, env)  # finds it gone: copies it again, then queues

    monkeypatch.setattr(gc.os, "rename", submit_right_after_the_move)
    done = gc.collect(results, r, grace=600)
    assert renamed, "gc moved the entry aside"
    assert (results / "inputs" / digest / "late.pt").is_file(), "the queued unit's input is there"
    assert sha256_file(results / "inputs" / digest / "late.pt") == digest
    assert not any(p.name.startswith(gc.TRASH_PREFIX) for p in (results / "inputs").iterdir())
    assert r.llen("cpu") == 1


def test_gc_needs_the_broker_and_says_so(tmp_path):
    env = worker_env("redis://127.0.0.1:1/0", tmp_path / "results")
    proc = qbench("gc", "--results", str(tmp_path / "results"), env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "cannot reach the broker" in proc.stderr
