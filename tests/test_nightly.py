"""A night runs once: real redis-server, real celery worker and beat, real triggers."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from zoneinfo import ZoneInfo

import pytest

from qbench.results import read_table
from tests.helpers import (
    REPO,
    VENV_BIN,
    CeleryWorker,
    RedisServer,
    qbench,
    small_manifest,
    wait_for,
)

pytestmark = pytest.mark.integration


def _zone_off_utc_date() -> str:
    """A time zone whose date differs from UTC's right now (one of the two always does)."""
    today = dt.datetime.now(dt.UTC).date()
    return next(z for z in ("Pacific/Kiritimati", "Pacific/Pago_Pago")
                if dt.datetime.now(ZoneInfo(z)).date() != today)


def _night_manifest(folder):
    models = [{"id": mid, "source": "torchvision", "arch": "resnet18", "num_classes": 10,
               "input_size": [64, 64]} for mid in ("a", "b")]
    return small_manifest(folder, name="night", models=models, artifacts=False,
                          quantization={"modes": ["fp32"]},
                          benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 2,
                                     "threads": 1, "pairing": "off"})


def _runs(log) -> int:
    return log.read_text().count("measure batch 1")


def _reports(log) -> int:
    return len(re.findall(r"qbench\.report_job\[[^]]+\] succeeded", log.read_text()))


@pytest.fixture
def night(tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    results = tmp_path / "results"
    folder = tmp_path / "nightly"
    folder.mkdir()
    manifest = _night_manifest(folder)
    (folder / "broken.yaml").write_text("name: broken\nmodels: [\n")
    zone = _zone_off_utc_date()
    worker = CeleryWorker(redis.url, results, tmp_path / "w.log")
    worker.env.update(QBENCH_NIGHTLY_DIR=str(folder), QBENCH_TIMEZONE=zone)
    worker.start()
    yield redis, worker, results, manifest, zone
    worker.stop()
    redis.stop()


def test_two_triggers_a_second_apart_run_each_unit_once(tmp_path, night):
    redis, worker, results, manifest, zone = night
    env = worker.env
    through_worker = ("from qbench.service.tasks import nightly_task; "
                      "print(nightly_task.apply_async(queue='cpu').get(timeout=120))")
    in_place = "from qbench.service.tasks import nightly_task; print(nightly_task())"
    first = subprocess.Popen([sys.executable, "-c", through_worker], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    second = subprocess.run([sys.executable, "-c", in_place], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=200)
    out, err = first.communicate(timeout=200)
    assert first.returncode == 0 and second.returncode == 0, err[-2000:] + second.stderr[-2000:]
    said = out + second.stdout
    assert said.count("submitted night-nightly-") == 1, said
    assert "this night is already" in said, said
    job_id = re.search(r"(night-nightly-\d{8}-[0-9a-f]{6})", said).group(1)
    night_date = dt.datetime.now(ZoneInfo(zone)).strftime("%Y%m%d")
    assert f"-nightly-{night_date}-" in job_id, f"the night is the date in {zone}"
    wait_for(lambda: (results / "reports" / job_id / "report.md").exists(), 300, "the night")
    time.sleep(2)
    assert _runs(worker.log) == 2 and _reports(worker.log) == 1, "each unit and the report once"
    assert "broken.yaml" in worker.log.read_text() or "broken.yaml" in second.stderr

    # A trigger by hand for that night does nothing and says so, unless forced.
    day = dt.datetime.strptime(night_date, "%Y%m%d").date().isoformat()
    again = qbench("submit", str(manifest), "--nightly", "--date", day, "--results", str(results),
                   env=env)
    assert again.returncode == 0 and "is already done; nothing queued" in again.stdout, again.stdout
    rerun_at = time.time()
    forced = qbench("submit", str(manifest), "--nightly", "--date", day, "--force", "--wait",
                    "--timeout", "300", "--results", str(results), env=env)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert f"submitted job {job_id}" in forced.stdout and "report: done" in forced.stdout
    rows = read_table(results, "models", job_id).to_pylist()
    assert len(rows) == 2 and all(r["started_at"].timestamp() >= rerun_at - 1 for r in rows), \
        "--wait returned once the forced run's own rows were written"
    assert (results / "reports" / job_id / "report.md").stat().st_mtime >= rerun_at - 1
    assert _runs(worker.log) == 4


def _next_minute(zone: str) -> tuple[str, float]:
    """HH:MM of the next whole minute in the zone (the one after if it is under 15 s away),
    and the seconds until it."""
    now = dt.datetime.now(ZoneInfo(zone))
    fire = (now + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)
    if (fire - now).total_seconds() < 15:
        fire += dt.timedelta(minutes=1)
    return f"{fire:%H:%M}", (fire - now).total_seconds()


def test_beat_killed_right_after_a_fire_does_not_run_the_night_again(tmp_path, night):
    redis, worker, results, manifest, zone = night
    at, wait_s = _next_minute(zone)
    env = {**worker.env, "QBENCH_NIGHTLY_AT": at}
    state = tmp_path / "beat-state" / "celerybeat-schedule"
    state.parent.mkdir()
    args = [str(VENV_BIN / "celery"), "-A", "qbench.service.app", "beat", "--loglevel", "INFO",
            "-s", str(state)]

    def start_beat(log):
        fh = open(log, "ab")  # noqa: SIM115 - closed below
        return subprocess.Popen(args, env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True), fh

    beat, fh = start_beat(tmp_path / "beat1.log")
    try:
        wait_for(lambda: b"Sending due task nightly-benchmarks" in
                 (tmp_path / "beat1.log").read_bytes(), wait_s + 90, "beat to fire the night",
                 interval=0.05)
        os.killpg(beat.pid, signal.SIGKILL)  # right after the fire: no time to save its state
        beat.wait(10)
        fh.close()
        beat, fh = start_beat(tmp_path / "beat2.log")
        wait_for(lambda: len(re.findall(r"qbench\.nightly\[[^]]+\] succeeded",
                                        worker.log.read_text())) >= 1, 200, "the nightly task")
        time.sleep(15)  # a restarted beat that fires the night again does so at once
        job_ids = sorted(p.stem for p in (results / "jobs").glob("*.json"))
        assert len(job_ids) == 1, job_ids
        wait_for(lambda: (results / "reports" / job_ids[0] / "report.md").exists(), 300,
                 "the night's report")
        time.sleep(2)
        # Beat logs "Sending due task" before it publishes, so the kill may land between the
        # two: count the triggers the worker received, not the ones the beats announced.
        delivered = len(re.findall(r"qbench\.nightly\[[^]]+\] received", worker.log.read_text()))
        assert delivered >= 1
        # A refired trigger may wait behind the night's report in the worker's queue.
        wait_for(lambda: len(re.findall(r"qbench\.nightly\[[^]]+\] succeeded",
                                        worker.log.read_text())) == delivered, 120,
                 "every delivered trigger to finish")
        refusals = re.findall(r"\] nightly [-0-9]+: \S+: this night is already", worker.log.read_text())
        assert len(refusals) == delivered - 1, refusals
        assert _runs(worker.log) == 2 and _reports(worker.log) == 1, "the night ran once"
        print(f"\nnight triggers delivered: {delivered}; the units ran once")
    finally:
        if beat.poll() is None:
            os.killpg(beat.pid, signal.SIGTERM)
            beat.wait(20)
        fh.close()
