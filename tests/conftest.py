"""Fixtures shared by the hostile-input tests (tests/test_bad_input.py, test_hostile_input.py)."""

from __future__ import annotations

import pytest

from tests.helpers import RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def small_job(tmp_path_factory):
    """Two cheap units run in this process, with their artifacts: fp32 and int8_dynamic."""
    import datetime as dt

    from qbench.manifest import Manifest
    from qbench.orchestrate import plan_from, save_plan
    from qbench.pipeline import run_unit

    tmp = tmp_path_factory.mktemp("small_job")
    manifest = Manifest.model_validate({
        "name": "tiny", "models": [{"id": "r18", "arch": "resnet18", "num_classes": 10,
                                    "input_size": [64, 64]}],
        "quantization": {"modes": ["fp32", "int8_dynamic"]},
        "benchmark": {"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1},
        "inspect": {"images": 0}})
    plan = plan_from(manifest, tmp, "tiny", now=dt.datetime(2026, 1, 1))
    root = tmp / "results"
    save_plan(plan, root)
    for unit in plan.units:
        assert run_unit(unit, root).status == "ok"
    return root, plan.job_id
