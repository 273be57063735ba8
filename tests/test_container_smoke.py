"""docker/smoke.sh's own failure paths, without a container engine (fake `docker`/`dockerd`).

The passing path needs a real engine and runs from .ci/run after the test suite.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "docker" / "smoke.sh"


def run_smoke(tmp_path: Path, *args: str, fake: dict[str, str] | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QBENCH_")}
    env["QBENCH_SMOKE_DIR"] = str(tmp_path / "smoke")
    if fake:
        bin_dir = tmp_path / "fakebin"
        bin_dir.mkdir(exist_ok=True)
        for name, body in fake.items():
            script = bin_dir / name
            script.write_text(f"#!/bin/sh\n{body}\n")
            script.chmod(0o755)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    out = subprocess.run(["bash", str(SMOKE), *args], capture_output=True, text=True, env=env,
                         timeout=60)
    lines = out.stdout.strip().splitlines()
    return out.returncode, lines


def test_engine_that_cannot_start_is_a_one_line_reason_and_status_3(tmp_path):
    code, lines = run_smoke(tmp_path, fake={
        "docker": "exit 1",  # no engine answers
        "dockerd": "echo 'failed to start daemon: test' >&2; exit 1",
    })
    assert code == 3, lines
    assert lines[-1].startswith("container smoke: FAILED at engine: "), lines
    assert any(line.startswith("[smoke") and "total" in line for line in lines)


def test_bad_arguments(tmp_path):
    code, lines = run_smoke(tmp_path, "--frobnicate")
    assert code == 2
    assert lines[-1] == "container smoke: FAILED at arguments: unknown argument --frobnicate"
    code, lines = run_smoke(tmp_path, "--redis-port")
    assert code == 2 and lines[-1].endswith("--redis-port needs a port number")


def test_refuses_to_empty_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "smoke").mkdir()
    keep = tmp_path / "smoke" / "precious.txt"
    keep.write_text("mine")
    code, lines = run_smoke(tmp_path, fake={"docker": "exit 1"})
    assert code == 1
    assert lines[-1].startswith("container smoke: FAILED at settings: refusing to empty")
    assert keep.read_text() == "mine"
