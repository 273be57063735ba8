"""Raw samples in Parquet and DuckDB, old files without the new columns, noise-aware compare,
step changes over a nightly history, and the report's paired-speedup columns."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qbench.report import build_report
from qbench.report.compare import compare_jobs
from qbench.report.history import load_history, step_regressions
from qbench.results import LATENCY, MODELS, read_table, unit_file, write_rows

ENV = {"env_fingerprint": "e1", "torch_version": "2.14.1", "torchvision_version": "0.29.1",
       "cpu_model": "cpu", "threads": 1, "gpu_name": None, "host": "h", "qbench_version": "0",
       "cpu_isa": "avx2 avx512f avx512_vnni", "cpu_family": 6, "cpu_model_number": 207}


def _samples(seed: int, center: float, n: int = 30) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(center * np.exp(rng.normal(0, 0.04, n)))


def _write_job(root, job_id: str, centers: dict[str, float], seed: int, paired: bool = True,
               load: float = 1.0, stable: bool = True, own_drift: dict[str, float] | None = None):
    """models + latency + samples rows of one job, every mode but fp32 paired with fp32;
    `load` slows everything of the job alike (a busier machine)."""
    from qbench.measure.stats import paired_ratio_ci

    for k, (mode, center) in enumerate(centers.items()):
        unit = f"{job_id}-{mode}"
        ident = {"job_id": job_id, "unit_id": unit, "model_id": "m", "mode": mode,
                 "device": "cpu", **ENV}
        keep = {k: ident[k] for k in ("job_id", "unit_id", "model_id", "mode", "device",
                                      "threads", "env_fingerprint", "host")}
        own = [load * (own_drift or {}).get(mode, 1.0) * v for v in _samples(seed * 10 + k, center)]
        rows = [{**keep, "batch_size": 1, "pass": "unpaired", "role": "unit", "iteration": i,
                 "latency_ms": v} for i, v in enumerate(own)]
        lat = {**ident, "batch_size": 1, "latency_ms_p50": float(np.median(own)), "warmup": 1,
               "iterations": len(own), "iterations_run": len(own), "status": "ok",
               "rss_peak_bytes": 10**8, "stable": stable, "latency_cv": 0.04 if stable else 0.3,
               "reference_mode": "fp32", "pairing": "reference" if mode == "fp32" else "off",
               "load_avg_1m": 0.5, "busy_processes_max": 1}
        if paired and mode != "fp32":
            ref = [load * v for v in _samples(seed * 10 + 7, centers["fp32"])]
            mine = [load * v for v in _samples(seed * 10 + 8, center)]
            ci = paired_ratio_ci(ref, mine)
            lat.update(pairing="interleaved", speedup=ci.estimate, speedup_ci_low=ci.low,
                       speedup_ci_high=ci.high, reference_latency_ms_p50=float(np.median(ref)))
            for role, values in (("unit", mine), ("reference", ref)):
                rows += [{**keep, "batch_size": 1, "pass": "paired", "role": role,
                          "reference_mode": "fp32", "iteration": i, "latency_ms": v}
                         for i, v in enumerate(values)]
        write_rows(root, "samples", "2026-11-25", job_id, unit, rows)
        write_rows(root, "latency", "2026-11-25", job_id, unit, [lat])
        write_rows(root, "models", "2026-11-25", job_id, unit, [{
            **ident, "task": "classification", "size_bytes": 1000, "status": "ok"}])


def test_samples_round_trip_parquet_and_duckdb(tmp_path):
    _write_job(tmp_path, "a", {"fp32": 30.0, "int8_static": 12.0}, seed=1)
    table = read_table(tmp_path, "samples", "a")
    assert table.num_rows == 30 + 30 + 2 * 30
    assert table.schema.field("latency_ms").type == pa.float64()
    expected = np.median(_samples(11, 12.0))
    files = str(tmp_path / "samples" / "**" / "*.parquet")
    with duckdb.connect() as con:
        got = con.execute(f"SELECT median(latency_ms), count(*) FROM read_parquet('{files}') "
                          "WHERE mode = 'int8_static' AND pass = 'unpaired'").fetchall()[0]
    assert got == (pytest.approx(expected), 30)
    assert read_table(tmp_path, "samples", "a").column("iteration").to_pylist()[:3] == [0, 1, 2]


def test_old_parquet_without_new_columns_reads_and_reports(tmp_path):
    old_latency = pa.schema([f for f in LATENCY if f.name in {
        "job_id", "unit_id", "model_id", "mode", "device", "batch_size", "latency_ms_p50",
        "latency_ms_p90", "throughput_ips", "rss_peak_bytes", "status", "env_fingerprint",
        "threads", "warmup", "iterations"}])
    old_models = pa.schema([f for f in MODELS if f.name in {
        "job_id", "unit_id", "model_id", "mode", "device", "task", "size_bytes", "status",
        "env_fingerprint", "notes"}])
    for mode, p50 in (("fp32", 30.0), ("int8_static", 12.0)):
        ident = {"job_id": "old", "unit_id": mode, "model_id": "m", "mode": mode, "device": "cpu",
                 "env_fingerprint": "e0"}
        for table, schema, row in (
                ("latency", old_latency, {**ident, "batch_size": 1, "latency_ms_p50": p50,
                                          "status": "ok", "warmup": 1, "iterations": 3}),
                ("models", old_models, {**ident, "task": "classification", "size_bytes": 10,
                                        "status": "ok"})):
            path = unit_file(tmp_path, table, "2026-11-01", "old", mode)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist([row], schema=schema), path)
    rows = read_table(tmp_path, "latency", "old").to_pylist()
    assert rows[0]["speedup"] is None and rows[0]["cpu_isa"] is None
    md = build_report(tmp_path, "old").markdown
    assert "2.50x (unpaired)" in md
    _write_job(tmp_path, "new", {"fp32": 30.0, "int8_static": 12.0}, seed=2)
    cmp = compare_jobs(tmp_path, "old", "new")  # samples on one side only: p50 rule, no crash
    assert not cmp.same_environment and cmp.rows


def test_report_shows_paired_speedup_with_ci_and_fastest_baseline(tmp_path):
    _write_job(tmp_path, "a", {"fp32": 30.0, "fp32_compiled": 24.0, "int8_static": 12.0}, seed=3)
    report = build_report(tmp_path, "a")
    row = next(r for r in report.rows if r["mode"] == "int8_static")
    assert row["fastest_fp32_mode"] == "fp32_compiled"
    low, high = row["speedup_vs_fp32_ci_low"], row["speedup_vs_fp32_ci_high"]
    assert low < 2.5 < high
    assert row["speedup_vs_fastest_fp32_paired"] == pytest.approx(
        row["speedup_vs_fp32_paired"] / next(r for r in report.rows if r["mode"] == "fp32_compiled"
                                             )["speedup_vs_fp32_paired"])
    text = row["speedup_vs_fp32_text"]
    assert text == f"{row['speedup_vs_fp32_paired']:.2f}x [{low:.2f}–{high:.2f}]"
    assert text in report.markdown and "(fp32_compiled)" in report.markdown
    assert "avx512_vnni" in report.markdown and "family 6 model 207" in report.markdown


def test_unstable_rows_are_marked_with_their_load(tmp_path):
    _write_job(tmp_path, "a", {"fp32": 30.0}, seed=4)
    path = next((tmp_path / "latency").glob("**/*.parquet"))
    row = pq.read_table(path).to_pylist()[0]
    row.update(stable=False, latency_cv=0.31, load_avg_1m=3.2, busy_processes_max=4)
    write_rows(tmp_path, "latency", "2026-11-25", "a", "a-fp32", [row])
    md = build_report(tmp_path, "a").markdown
    assert "**✗**\u00a0cv\u00a031%" in md  # the table's short mark, one line; the load is a flag
    flags = md.split("## Flags", 1)[1].split("\n## ", 1)[0]
    assert "fp32 batch 1 **no** (cv 31%, load 3.2, 4 busy)" in flags


def test_compare_flags_a_real_slowdown_not_noise(tmp_path):
    _write_job(tmp_path, "a", {"fp32": 30.0, "int8_static": 12.0}, seed=5)
    _write_job(tmp_path, "b", {"fp32": 30.0, "int8_static": 12.0}, seed=6)
    _write_job(tmp_path, "c", {"fp32": 30.0, "int8_static": 14.0}, seed=7)  # int8 +17%
    assert compare_jobs(tmp_path, "a", "b").regressions == []
    flagged = compare_jobs(tmp_path, "a", "c").regressions
    assert len(flagged) == 1 and flagged[0].startswith("m int8_static cpu batch 1: p50 ")
    assert "Mann–Whitney p=" in flagged[0] and "relative to its reference" in flagged[0]


def test_compare_survives_a_busier_machine_and_sees_a_relative_slowdown(tmp_path):
    _write_job(tmp_path, "a", {"fp32": 30.0, "int8_static": 12.0}, seed=5)
    # Everything 1.8x slower (a busy night), rows unstable: not a regression of the code.
    _write_job(tmp_path, "busy", {"fp32": 30.0, "int8_static": 12.0}, seed=6, load=1.8,
               stable=False)
    cmp = compare_jobs(tmp_path, "a", "busy")
    assert cmp.regressions == []
    verdicts = {r[1]: r[6] for r in cmp.rows}
    # fp32 is the reference: judged relative to int8_static timed beside it
    assert verdicts["fp32"].endswith("(paired)") and verdicts["int8_static"].endswith("(paired)")
    # Busy again, and int8_static itself 20% slower relative to fp32 timed beside it: flagged.
    _write_job(tmp_path, "slow", {"fp32": 30.0, "int8_static": 14.4}, seed=7, load=1.8,
               stable=False)
    flagged = compare_jobs(tmp_path, "a", "slow").regressions
    assert len(flagged) == 1 and flagged[0].startswith("m int8_static cpu batch 1")


def test_the_reference_unit_is_judged_relative_to_the_unit_timed_beside_it(tmp_path):
    _write_job(tmp_path, "a", {"fp32": 30.0, "int8_static": 12.0}, seed=5)
    # fp32's own pass 25% slower, stable, but beside int8_static nothing moved: the machine
    # drifted between the runs (seen on a shared VM: 48 -> 62 ms a minute apart)
    _write_job(tmp_path, "drift", {"fp32": 30.0, "int8_static": 12.0}, seed=6,
               own_drift={"fp32": 1.25})
    cmp = compare_jobs(tmp_path, "a", "drift")
    assert cmp.regressions == []
    assert {r[1]: r[6] for r in cmp.rows}["fp32"] == "same or faster (paired)"
    # fp32 itself 25% slower, beside int8_static too: flagged, relative to int8_static
    _write_job(tmp_path, "slow", {"fp32": 37.5, "int8_static": 12.0}, seed=7)
    flagged = compare_jobs(tmp_path, "a", "slow").regressions
    assert len(flagged) == 1 and flagged[0].startswith("m fp32 cpu batch 1")
    assert "relative to int8_static timed beside it" in flagged[0]


def test_step_change_over_nightly_history(tmp_path):
    nights = [f"n-nightly-202611{d:02d}-abcdef" for d in range(1, 11)]
    for i, job in enumerate(nights):
        _write_job(tmp_path, job, {"fp32": 30.0, "int8_static": 12.0}, seed=20 + i)
    history = load_history(tmp_path, nights[-1])
    assert len(history.jobs) == 10 and step_regressions(history, 10) == []
    report = build_report(tmp_path, nights[-1])
    assert not report.regressions and "Latency over the last 10 nights" in report.markdown
    assert (report.folder / "trend-m-int8_static-cpu.png").exists()
    # A copy of the history where int8_static got 15% slower from night 8 on.
    slow = tmp_path / "slow"
    for i, job in enumerate(nights):
        _write_job(slow, job, {"fp32": 30.0, "int8_static": 12.0 * (1.15 if i >= 7 else 1)},
                   seed=20 + i)
    steps = step_regressions(load_history(slow, nights[-1]), 10)
    assert len(steps) == 1 and steps[0].startswith("m int8_static cpu batch 1: step change")
    assert "since night 20261108" in steps[0] and "relative to fp32 timed beside it" in steps[0]
    # Busy nights (everything slower alike) are no step for a paired unit.
    busy = tmp_path / "busy"
    for i, job in enumerate(nights):
        _write_job(busy, job, {"fp32": 30.0, "int8_static": 12.0}, seed=20 + i,
                   load=1.5 if i >= 7 else 1.0, stable=i < 7)
    assert step_regressions(load_history(busy, nights[-1]), 10) == []
    # The reference's own pass 25% slower from night 8 on (stable nights), nothing beside
    # int8_static: judged relative to int8_static, no step.
    drift = tmp_path / "drift"
    for i, job in enumerate(nights):
        _write_job(drift, job, {"fp32": 30.0, "int8_static": 12.0}, seed=20 + i,
                   own_drift={"fp32": 1.25 if i >= 7 else 1.0})
    assert step_regressions(load_history(drift, nights[-1]), 10) == []


def test_nightly_change_must_beat_the_spread_of_earlier_nights(tmp_path):
    # int8_static is +20% on night 7 against night 6, well beyond both nights' samples.
    nights = [f"n-nightly-202611{d:02d}-abcdef" for d in range(1, 8)]
    jumpy = [14.4, 12.0, 14.4, 12.0, 14.4, 12.0, 14.4]  # earlier nights already differ by 20%
    quiet = [12.0] * 6 + [14.4]
    for folder, centers in (("jumpy", jumpy), ("quiet", quiet)):
        for i, (job, center) in enumerate(zip(nights, centers, strict=True)):
            _write_job(tmp_path / folder, job, {"fp32": 30.0, "int8_static": center}, seed=40 + i)
    flagged = build_report(tmp_path / "quiet", nights[-1]).regressions
    assert any(r.startswith("m int8_static cpu batch 1: p50 ") for r in flagged)
    report = build_report(tmp_path / "jumpy", nights[-1])
    assert not any(r.startswith("m int8_static cpu batch 1: p50 ") for r in report.regressions)
    verdict = {r[1]: r[6] for r in report.comparison.rows}["int8_static"]
    assert verdict.startswith("slower, within 3× the nights' spread (±") and "(paired)" in verdict
    # The same two nights compared on their own (no history): the samples decide, flagged.
    from qbench.report.compare import compare_jobs as pairwise

    assert pairwise(tmp_path / "jumpy", nights[-2], nights[-1]).regressions
