"""The CLI as a user runs it: real subprocesses, real Parquet."""

import pyarrow.parquet as pq
import pytest

from qbench.results import read_table
from tests.helpers import qbench, small_manifest


@pytest.mark.parametrize("body, needle", [
    ("name: x\nmodels: [\n", "is not valid YAML"),
    ("name: x\nmodels: [{id: a, arch: resnet18}]\nbenchmark: {batch_sizes: [0]}",
     "benchmark.batch_sizes: batch size 0 must be at least 1"),
    ("name: x\nmodels: [{id: a, arch: resnet18, checkpoint: nope.pt}]",
     "models[0].checkpoint: file not found"),
    ("name: x\nmodels: [{id: a, arch: resnet18}]\nquantization: {modes: [fp16]}",
     "fp16 does not run on cpu"),
])
def test_validate_rejects_bad_input_in_one_line(tmp_path, body, needle):
    path = tmp_path / "m.yaml"
    path.write_text(body)
    proc = qbench("validate", str(path))
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert needle in err
    assert len(err.splitlines()) == 1, err


def test_unknown_arch_is_a_clear_error(tmp_path):
    """Refused before anything runs (the catalogue knows the arch names): exit 2, no rows."""
    path = small_manifest(tmp_path, models=[{"id": "a", "arch": "resnet9000",
                                             "input_size": [64, 64]}])
    proc = qbench("run", str(path), "--results", str(tmp_path / "results"))
    assert proc.returncode == 2
    assert "unknown arch 'resnet9000'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists(), "nothing is written for a refused manifest"


def test_missing_manifest_file(tmp_path):
    proc = qbench("run", str(tmp_path / "absent.yaml"))
    assert proc.returncode == 2
    assert "absent.yaml: manifest file not found" in proc.stderr


def test_help_for_every_command():
    for cmd in ("validate", "run", "submit", "status", "report", "cancel", "export"):
        proc = qbench(cmd, "--help")
        assert proc.returncode == 0, proc.stderr
        assert "Usage" in proc.stdout


def test_run_writes_tables_and_report(tmp_path):
    results = tmp_path / "results"
    proc = qbench("run", str(small_manifest(tmp_path)), "--results", str(results))
    assert proc.returncode == 0, proc.stderr[-3000:]
    latency = read_table(results, "latency").to_pylist()
    models = read_table(results, "models").to_pylist()
    assert sorted((r["mode"], r["batch_size"]) for r in latency) == [
        ("fp32", 1), ("fp32", 2), ("int8_static", 1), ("int8_static", 2)]
    assert all(r["status"] == "ok" and r["latency_ms_p50"] > 0 for r in latency)
    assert all(r["rss_peak_bytes"] > 50e6 for r in latency)
    by_mode = {m["mode"]: m for m in models}
    assert by_mode["int8_static"]["size_reduction"] > 0.6
    assert by_mode["fp32"]["size_reduction"] == pytest.approx(0.0)
    assert by_mode["int8_static"]["params_int8_fraction"] > 0.9
    assert by_mode["int8_static"]["torch_version"].startswith("2.")
    job_id = models[0]["job_id"]
    report = results / "reports" / job_id / "report.md"
    assert report.exists() and "int8_static" in report.read_text()
    assert (results / "reports" / job_id / "latency.png").stat().st_size > 1000
    assert "speedup vs fp32" in proc.stdout
    for path in results.rglob("*.parquet"):
        pq.read_metadata(path)  # every file is whole

    again = qbench("report", job_id, "--results", str(results))
    assert again.returncode == 0 and job_id in again.stdout
    status = qbench("status", job_id, "--results", str(results))
    assert status.returncode == 0 and status.stdout.count("  ok  ") >= 2, status.stdout


def test_report_of_unknown_job(tmp_path):
    proc = qbench("report", "nope-20260101T000000-abcdef", "--results", str(tmp_path))
    assert proc.returncode == 2
    assert "no rows" in proc.stderr
