"""Reports from real rows; regressions on constructed before/after datasets; HTML in Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qbench.orchestrate import plan_job
from qbench.pipeline import run_unit
from qbench.report import Thresholds, build_report, write_report
from qbench.report.compare import compare_jobs, previous_nightly
from qbench.results import write_rows
from tests.helpers import qbench, small_manifest


@pytest.fixture(scope="module")
def real_job(tmp_path_factory):
    """Rows written by a real run of a small classifier, fp32 and int8_static."""
    tmp = tmp_path_factory.mktemp("real")
    plan = plan_job(small_manifest(tmp))
    results = tmp / "results"
    for unit in plan.units:
        assert run_unit(unit, results).status == "ok"
    return results, plan.job_id


def test_report_files_from_real_rows(real_job):
    results, job_id = real_job
    report = write_report(results, job_id)
    folder = report.folder
    md = (folder / "report.md").read_text()
    for needle in ("## Size and accuracy", "int8_static", "speedup vs fp32", "## How this was measured",
                   "timed iterations", "Calibration: minmax observer, 4 images"):
        assert needle in md, needle
    csv = (folder / "summary.csv").read_text().splitlines()
    assert csv[0].startswith("job_id,model_id") and len(csv) == 1 + 4  # 2 units x 2 batch sizes
    html = (folder / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2
    assert 'src="http' not in html and "<script" not in html, "one self-contained file"
    for png in ("latency.png", "memory.png"):
        with Image.open(folder / png) as im:
            assert im.size[0] > 500 and len(set(im.convert("L").getdata())) > 10


def _env(fp: str) -> dict:
    return {"env_fingerprint": fp, "torch_version": "2.14.1", "torchvision_version": "0.29.1",
            "cpu_model": "cpu", "threads": 2, "gpu_name": None, "host": "h", "qbench_version": "0"}


def _job(root: Path, job_id: str, p50: dict[str, float], maps: dict[str, float], fp: str = "e1",
         status: dict[str, str] | None = None) -> None:
    for mode in p50:
        unit = f"{job_id}-{mode}"
        ok = (status or {}).get(mode, "ok")
        write_rows(root, "models", "2026-11-25", job_id, unit, [{
            "job_id": job_id, "unit_id": unit, "model_id": "m", "mode": mode, "device": "cpu",
            "task": "detection", "size_bytes": 1000 if mode == "fp32" else 260, "map": maps[mode],
            "status": ok, "error": None if ok == "ok" else "boom", **_env(fp)}])
        write_rows(root, "latency", "2026-11-25", job_id, unit, [{
            "job_id": job_id, "unit_id": unit, "model_id": "m", "mode": mode, "device": "cpu",
            "batch_size": 1, "latency_ms_p50": p50[mode], "rss_peak_bytes": 10**9,
            "warmup": 1, "iterations": 3, "status": "ok", **_env(fp)}])


def test_regressions_are_flagged_beyond_thresholds(tmp_path):
    _job(tmp_path, "a", {"fp32": 100.0, "int8_static": 40.0}, {"fp32": 0.80, "int8_static": 0.79})
    _job(tmp_path, "b", {"fp32": 105.0, "int8_static": 48.0}, {"fp32": 0.80, "int8_static": 0.775})
    cmp = compare_jobs(tmp_path, "a", "b")
    joined = "\n".join(cmp.regressions)
    assert "int8_static cpu batch 1: p50 40.0 → 48.0 ms (+20.0%" in joined
    assert "fp32 cpu batch 1" not in joined, "+5% is inside the 10% threshold"
    assert "m int8_static cpu: mAP 79.00 → 77.50 (-1.50 pts" in joined
    assert len(cmp.regressions) == 2
    assert not compare_jobs(tmp_path, "a", "b", Thresholds(latency_pct=25, map_pts=2)).regressions
    report = build_report(tmp_path, "b", compare_with="a")
    assert "2 regression(s) against a" in report.markdown


def test_failed_unit_is_a_regression_and_shows_in_report(tmp_path):
    _job(tmp_path, "a", {"fp32": 100.0, "int8_static": 40.0}, {"fp32": 0.8, "int8_static": 0.8})
    _job(tmp_path, "b", {"fp32": 100.0, "int8_static": 40.0}, {"fp32": 0.8, "int8_static": 0.8},
         status={"int8_static": "error"})
    cmp = compare_jobs(tmp_path, "a", "b")
    assert any("was ok, now error (boom)" in r for r in cmp.regressions)
    md = build_report(tmp_path, "b").markdown
    assert "1 unit(s) failed" in md and "**error**: boom" in md


def test_different_environments_are_said_and_latency_not_flagged(tmp_path):
    _job(tmp_path, "a", {"fp32": 100.0}, {"fp32": 0.8}, fp="e1")
    _job(tmp_path, "b", {"fp32": 300.0}, {"fp32": 0.8}, fp="e2")
    cmp = compare_jobs(tmp_path, "a", "b")
    assert not cmp.same_environment and not cmp.regressions
    assert "The environments differ (e1 vs e2)" in build_report(tmp_path, "b", "a").markdown


def test_nightly_compares_with_previous_night(tmp_path):
    _job(tmp_path, "n-nightly-20261123-abcdef", {"fp32": 100.0}, {"fp32": 0.8})
    _job(tmp_path, "n-nightly-20261124-abcdef", {"fp32": 100.0}, {"fp32": 0.8})
    _job(tmp_path, "other-nightly-20261124-abcdef", {"fp32": 100.0}, {"fp32": 0.8})
    _job(tmp_path, "n-nightly-20261125-123456", {"fp32": 150.0}, {"fp32": 0.8})
    assert previous_nightly(tmp_path, "n-nightly-20261125-123456") == "n-nightly-20261124-abcdef"
    assert previous_nightly(tmp_path, "n-nightly-20261123-abcdef") is None
    report = build_report(tmp_path, "n-nightly-20261125-123456")
    assert report.comparison.base == "n-nightly-20261124-abcdef" and report.regressions
    # the verdict and the trend open the report, before any table or picture
    md = report.markdown
    top = md.split("## Size and accuracy", 1)[0]
    assert "## Tonight against the previous night" in top
    assert f"**{len(report.regressions)} regression(s)** against the previous night " \
           "(n-nightly-20261124-abcdef)" in top
    assert "Trend over the last 3 nights: 0 of 1 rows steady" in top
    assert "m fp32 cpu batch 1 slower by 50% (100.0 → 150.0 ms)" in top
    assert md.index("Tonight against") < md.index("## Compared with")


def test_quiet_night_says_no_regression_first(tmp_path):
    _job(tmp_path, "n-nightly-20261124-abcdef", {"fp32": 100.0}, {"fp32": 0.8})
    _job(tmp_path, "n-nightly-20261125-abcdef", {"fp32": 101.0}, {"fp32": 0.8})
    top = build_report(tmp_path, "n-nightly-20261125-abcdef").markdown.split("## Size", 1)[0]
    assert "**No regression** against the previous night (n-nightly-20261124-abcdef)" in top
    assert "1 of 1 rows steady (median latency within ±5% of the first night)" in top


def test_inspection_pictures_over_the_budget_are_linked_not_embedded(tmp_path):
    from qbench.report import INSPECT_BUDGET_BYTES, inspection_images, within_budget

    folder = tmp_path / "inspect" / "m-int8-cpu"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("conv_grid_abs", "conv_grid_rel", "first_conv_diff", "sqnr_by_layer"):
        # noise does not compress: each file is about 1.2 MB
        Image.fromarray(rng.integers(0, 255, (640, 640, 3), dtype=np.uint8)).save(
            folder / f"{name}.png")
    shown, linked = within_budget(inspection_images(tmp_path), INSPECT_BUDGET_BYTES)
    assert [p.stem for p in shown] == ["sqnr_by_layer"]  # the summary picture first
    assert sorted(p.stem for p in linked) == ["conv_grid_abs", "conv_grid_rel", "first_conv_diff"]
    assert sum(p.stat().st_size for p in shown) <= INSPECT_BUDGET_BYTES


def test_cli_check_exit_code(tmp_path):
    _job(tmp_path, "a", {"fp32": 100.0}, {"fp32": 0.8})
    _job(tmp_path, "b", {"fp32": 130.0}, {"fp32": 0.8})
    bad = qbench("report", "--compare", "a", "b", "--check", "--results", str(tmp_path))
    assert bad.returncode == 1, bad.stderr
    assert "1 regression(s)" in bad.stderr
    ok = qbench("report", "--compare", "a", "b", "--check", "--latency-threshold", "50",
                "--results", str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    missing = qbench("report", "--compare", "zzz", "b", "--results", str(tmp_path))
    assert missing.returncode == 2 and "job 'zzz'" in missing.stderr


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (make test installs "
                    "Debian's chromium where apt-get can)")
def test_html_renders_in_headless_chromium(real_job, tmp_path):
    results, job_id = real_job
    report = write_report(results, job_id)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000",
         f"--screenshot={shot}", (report.folder / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    with Image.open(shot) as im:
        grey = im.convert("L")
        colours = len(set(grey.getdata()))
        dark = sum(1 for v in grey.getdata() if v < 128)
    assert colours > 20 and dark > 1000, "the screenshot shows text, not a blank page"
    # the first screen answers: the recommendation and the variants come before the tables
    html = (report.folder / "report.html").read_text()
    assert html.index("<h2>Recommendation</h2>") < html.index("<h2>Each variant</h2>") < \
        html.index("<h2>Size and accuracy</h2>")


def test_method_describes_the_tasks_this_job_measured():
    from qbench.report.method import accuracy_notes

    classifier = [{"eval_images": 50, "map": None, "task": "classification", "output_cosine": None}]
    text = " ".join(accuracy_notes(classifier))
    assert "top-1" in text and "Wilson" in text and "COCO" not in text and "IoU" not in text
    detector = [{"eval_images": 24, "map": 0.8, "task": "detection", "output_cosine": None}]
    text = " ".join(accuracy_notes(detector))
    assert "COCO mAP by pycocotools on 24 held-out images" in text and "Wilson" not in text
