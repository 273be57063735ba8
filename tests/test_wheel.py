"""qbench installs the way Python tools are installed: a wheel, into a fresh virtualenv.

The wheel is built from this checkout and installed without an index into a new venv that sees
the project venv's packages (the pinned torch and the rest) through a .pth line, so pip must
find every declared dependency there, offline. The installed `qbench` then validates and runs a
tiny job from outside the checkout, importing the wheel's package, never the folder worker/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

WORKER = REPO / "worker"


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    pytest.importorskip("setuptools")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", str(out), str(REPO)], cwd=out)
    (found,) = out.glob("qbench-*.whl")
    return found


def test_the_wheel_holds_every_module_under_the_name_qbench(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"qbench/" + p.relative_to(WORKER).as_posix()
                for p in WORKER.rglob("*.py") if "__pycache__" not in p.parts}
    assert expected <= names, sorted(expected - names)
    assert "qbench/models/fixture_frcnn.pt" in names  # the fixture detector's weights
    assert not any(n.startswith("worker/") for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Requires-Dist: torch" in text and "License-Expression: Apache-2.0" in text
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "qbench = qbench.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_a_fresh_venv_with_the_wheel_validates_and_runs_a_job(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     cwd=tmp_path).stdout.strip())
    # The project venv's packages (torch pinned by requirements.txt) beside the new venv's own;
    # its .pth files (the editable install of this checkout) are not processed from there.
    (site / "project-venv.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run([str(py), "-m", "pip", "install", "--no-index", "-q", str(wheel)], cwd=tmp_path)
    where = _run([str(py), "-c", "import qbench; print(qbench.__file__)"], cwd=tmp_path).stdout
    assert where.strip().startswith(str(site)), where

    doc = {"name": "wheel", "models": [{"id": "r18", "source": "torchvision", "arch": "resnet18",
                                        "num_classes": 10, "input_size": [32, 32]}],
           "quantization": {"modes": ["fp32"]},
           "benchmark": {"devices": ["cpu"], "batch_sizes": [1], "warmup": 1, "iterations": 2,
                         "threads": 1, "pairing": "off"},
           "inspect": {"images": 0}, "artifacts": False}
    manifest = tmp_path / "wheel.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    qbench = str(venv / "bin" / "qbench")
    _run([qbench, "validate", str(manifest)], cwd=tmp_path)
    results = tmp_path / "results"
    _run([qbench, "run", str(manifest), "--results", str(results)], cwd=tmp_path)
    rows = list((results / "models").rglob("*.parquet"))
    assert len(rows) == 1
    import pyarrow.parquet as pq

    row = pq.read_table(rows[0]).to_pylist()[0]
    assert row["status"] == "ok" and row["mode"] == "fp32", row
