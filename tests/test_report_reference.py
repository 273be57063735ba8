"""The report's reference is the job's (benchmark.reference), never the mode named fp32."""

from __future__ import annotations

from qbench.report.tables import latency_table, size_accuracy_table, summary_rows

MODEL = {"job_id": "j", "model_id": "m", "arch": "a", "device": "cpu", "task": "detection",
         "size_reduction": None, "params_int8_fraction": None, "map50": None, "top1": None,
         "count_error_mean": None, "count_error_std": None, "status": "ok", "error": None,
         "agreement_recall": None, "map_fp32": None}


def _unit(mode: str, mapv: float, p50: float, reference: str):
    model = {**MODEL, "unit_id": mode, "mode": mode, "backend": "b", "size_bytes": 1 << 20,
             "map": mapv}
    latency = {"unit_id": mode, "model_id": "m", "device": "cpu", "mode": mode, "batch_size": 1,
               "status": "ok", "latency_ms_p50": p50, "latency_ms_p90": p50,
               "throughput_ips": 1000 / p50, "rss_peak_bytes": None,
               "cuda_max_allocated_bytes": None, "cuda_max_reserved_bytes": None, "error": None,
               "reference_mode": reference}
    return model, latency


def test_speedup_and_accuracy_drop_are_against_the_jobs_reference():
    units = [_unit("fp32", 0.50, 40.0, "fp32_compiled"), _unit("fp32_compiled", 0.50, 20.0,
                                                              "fp32_compiled"),
             _unit("int8_static", 0.45, 10.0, "fp32_compiled")]
    models, latency = [u[0] for u in units], [u[1] for u in units]
    rows = {r["mode"]: r for r in summary_rows(models, latency, "fp32_compiled")}
    assert rows["int8_static"]["speedup_vs_fp32"] == 2.0  # 20 ms / 10 ms, not 40 / 10
    assert abs(rows["int8_static"]["map_drop_pts"] - 5.0) < 1e-9
    table = latency_table(list(rows.values()), "fp32_compiled")
    marks = {row[1]: row[6] for row in table.rows}
    assert marks["fp32_compiled"] == "ref" and marks["fp32"] != "ref"
    # rows that do not name their reference fall back to the job's
    for row in latency:
        row["reference_mode"] = None
    rows = {r["mode"]: r for r in summary_rows(models, latency, "fp32_compiled")}
    assert rows["int8_static"]["speedup_vs_fp32"] == 2.0
    assert size_accuracy_table(models, latency, "fp32_compiled").rows
    # and the default is still fp32
    rows = {r["mode"]: r for r in summary_rows(models, latency)}
    assert rows["int8_static"]["speedup_vs_fp32"] == 4.0


def test_a_mode_is_int8_by_the_mode_table_not_by_its_name():
    from qbench.modes import MODES
    from qbench.report.verdict import flag_lines

    unit = {"model_id": "m", "device": "cpu", "status": "ok", "error": None,
            "params_int8_fraction": 0}
    flagged = {mode for mode in MODES
               if any("no int8 weights" in line
                      for line in flag_lines([{**unit, "mode": mode}], [], [], None))}
    assert flagged == {m for m, e in MODES.items() if e.precision in ("int8", "mixed")}
    assert flagged == {"int8_dynamic", "int8_static", "int8_mixed", "ort_int8", "ort_int8_mixed",
                       "ov_int8", "ov_int8_mixed"}
