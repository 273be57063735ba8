"""The study's tables from the rows: size and accuracy per unit, latency and memory per batch."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from qbench.report.blocks import Table
from qbench.report.speedup import fastest_baseline, speedup_over

MIB = 1024 * 1024  # every size in the report is in MiB (the *_mb columns are MiB too)
MB = MIB  # the summary columns' historical name


def fmt(value: Any, spec: str, empty: str = "–") -> str:
    return empty if value is None else format(value, spec)


def with_interval(m: dict, name: str) -> str:
    """A fraction with its 95% interval where the row has one: "0.839 [0.73–0.91]"."""
    value, lo, hi = m.get(name), m.get(f"{name}_ci_low"), m.get(f"{name}_ci_high")
    if value is None or lo is None or hi is None:
        return fmt(value, ".3f")
    return f"{value:.3f} [{lo:.2f}–{hi:.2f}]"


def drop_with_interval(m: dict, drop: float | None) -> str:
    """An mAP drop in points with its paired 95% interval where the row has one:
    "+0.88 [-0.31 to +2.05]"."""
    lo, hi = m.get("map_drop_pts_ci_low"), m.get("map_drop_pts_ci_high")
    if drop is None or lo is None or hi is None:
        return fmt(drop, "+.2f")
    return f"{drop:+.2f} [{lo:+.2f} to {hi:+.2f}]"


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def unit_order(m: dict) -> tuple:
    return (m["model_id"], m["device"], m["mode"] != "fp32", m["mode"])


def references(latency: list[dict], default: str = "fp32") -> dict[tuple[str, str], str]:
    """The reference mode of each (model, device): what its units were timed beside (the
    job's benchmark.reference, or ort_fp32 for a model only ONNX Runtime runs), else default."""
    refs: dict[tuple[str, str], str] = {}
    for r in latency:
        if r.get("reference_mode"):
            refs.setdefault((r["model_id"], r["device"]), r["reference_mode"])
    return defaultdict(lambda: default, refs)


def summary_rows(models: list[dict], latency: list[dict],
                 reference: str = "fp32") -> list[dict[str, Any]]:
    """One row per unit x batch size (summary.csv); a unit with no latency rows gets one row.
    `reference`: the job's benchmark.reference, for rows that do not name theirs."""
    # The reference unit of the same model and device is the base of the speedup and the
    # accuracy drop (the `*_vs_fp32` columns keep their names: fp32 unless the job says).
    refs = references(latency, reference)
    ref = {(r["model_id"], r["device"], r["batch_size"]): r["latency_ms_p50"]
           for r in latency if r["mode"] == refs[(r["model_id"], r["device"])]
           and r["status"] == "ok"}
    ref_map = {(m["model_id"], m["device"]): m["map"] for m in models
               if m["mode"] == refs[(m["model_id"], m["device"])]}
    by_unit = defaultdict(list)
    by_batch = defaultdict(list)
    for r in latency:
        by_unit[r["unit_id"]].append(r)
        by_batch[(r["model_id"], r["device"], r["batch_size"])].append(r)
    rows = []
    for m in sorted(models, key=unit_order):
        fp32_map = ref_map.get((m["model_id"], m["device"]))
        base = {
            "job_id": m["job_id"], "model_id": m["model_id"], "arch": m["arch"], "mode": m["mode"],
            "backend": m["backend"], "device": m["device"],
            "size_mb": m["size_bytes"] / MB if m["size_bytes"] is not None else None,
            "size_reduction_pct": _pct(m["size_reduction"]),
            "int8_param_pct": _pct(m["params_int8_fraction"]),
            "map": m["map"], "map50": m["map50"],
            "map_drop_pts": (100 * (fp32_map - m["map"])
                             if m["map"] is not None and fp32_map is not None else None),
            "top1": m["top1"], "top1_ci_low": m.get("top1_ci_low"),
            "top1_ci_high": m.get("top1_ci_high"), "agreement_top1": m.get("agreement_top1"),
            "agreement_top1_ci_low": m.get("agreement_top1_ci_low"),
            "agreement_top1_ci_high": m.get("agreement_top1_ci_high"),
            "count_error_mean": m["count_error_mean"],
            "count_error_std": m["count_error_std"], "unit_status": m["status"],
            "unit_error": m["error"],
        }
        added = {"map_drop_pts_ci_low": m.get("map_drop_pts_ci_low"),
                 "map_drop_pts_ci_high": m.get("map_drop_pts_ci_high")}
        lat_rows = sorted(by_unit.get(m["unit_id"], []), key=lambda r: r["batch_size"])
        if not lat_rows:
            rows.append({**base, "batch_size": None, "status": m["status"], **added})
            continue
        for r in lat_rows:
            fp32 = ref.get((m["model_id"], m["device"], r["batch_size"]))
            p50 = r["latency_ms_p50"]
            rows.append({
                **base, "batch_size": r["batch_size"], "status": r["status"],
                "latency_ms_p50": p50, "latency_ms_p90": r["latency_ms_p90"],
                "speedup_vs_fp32": fp32 / p50 if fp32 and p50 else None,
                "throughput_ips": r["throughput_ips"],
                "rss_peak_mb": r["rss_peak_bytes"] / MB if r["rss_peak_bytes"] else None,
                "cuda_max_allocated_mb": (r["cuda_max_allocated_bytes"] / MB
                                          if r["cuda_max_allocated_bytes"] else None),
                "cuda_max_reserved_mb": (r["cuda_max_reserved_bytes"] / MB
                                         if r["cuda_max_reserved_bytes"] else None),
                "error": r["error"],
                # added columns stay after the original ones (summary.csv column order)
                **speedup_columns(r, by_batch[(m["model_id"], m["device"], r["batch_size"])],
                                  refs[(m["model_id"], m["device"])]),
                **added,
            })
    return rows


def speedup_columns(r: dict, same_batch: list[dict], reference: str = "fp32") -> dict[str, Any]:
    """Paired speedup over the reference (fp32 eager unless the job names another) and over
    the job's fastest fp32 baseline, with CIs, and the row's sample quality
    (qbench.report.speedup says how they are combined)."""
    eager = next((b for b in same_batch if b["mode"] == reference), None)
    fastest = fastest_baseline(same_batch)
    out: dict[str, Any] = {
        "reference_mode": r.get("reference_mode"), "pairing": r.get("pairing"),
        "iterations_run": r.get("iterations_run"), "latency_cv": r.get("latency_cv"),
        "stable": r.get("stable"), "load_avg_1m": r.get("load_avg_1m"),
        "busy_processes_max": r.get("busy_processes_max"), "cpu_isa": r.get("cpu_isa"),
        "fastest_fp32_mode": fastest["mode"] if fastest else None,
    }
    for name, base in (("fp32", eager), ("fastest_fp32", fastest)):
        sp = speedup_over(r, base)
        out[f"speedup_vs_{name}_paired"] = sp.value if sp and sp.paired else None
        out[f"speedup_vs_{name}_ci_low"] = sp.low if sp else None
        out[f"speedup_vs_{name}_ci_high"] = sp.high if sp else None
        out[f"speedup_vs_{name}_text"] = sp.text() if sp else None
    return out


STABLE_LEGEND = ("stable: ✓ the row's latency CV is within the limit; ✗ it is not (its CV shown; "
                 "the machine's load beside it is under Flags and in summary.csv).")


def stability_mark(r: dict) -> str:
    """A short mark for the table: ✓, or ✗ with the row's CV."""
    stable = r.get("stable")
    if stable is None:
        return "–"
    if stable:
        return "✓"
    cv = r.get("latency_cv")
    # non-breaking spaces: the mark stays on one line in a narrow HTML cell
    return f"**✗**\u00a0cv\u00a0{100 * cv:.0f}%" if cv is not None else "**✗**"


def stability_text(r: dict) -> str:
    """'yes', or why not: the row's CV and the machine's load beside it."""
    stable = r.get("stable")
    if stable is None:
        return "–"
    load = r.get("load_avg_1m")
    busy = r.get("busy_processes_max")
    where = ", ".join(x for x in (
        f"cv {100 * r['latency_cv']:.0f}%" if r.get("latency_cv") is not None else "",
        f"load {load:.1f}" if load is not None else "",
        f"{busy} busy" if busy is not None else "") if x)
    return f"yes ({where})" if stable else f"**no** ({where})"


def _status(status: str, error: str | None) -> str:
    return status if status == "ok" else f"**{status}**: {error or ''}".rstrip(": ")


def backend_text(m: dict) -> str:
    """The backend and, where the row has the read-out, the precision its conv/matmul
    operators really ran in: "openvino: int8 37/37"."""
    backend = m["backend"] or "–"
    ran = m.get("executed_precision")
    if not ran:
        return backend
    counts = json.loads(m.get("executed_ops_by_precision") or "{}")
    return f"{backend}: {ran} {counts.get(ran, 0)}/{sum(counts.values())}"


def size_accuracy_table(models: list[dict], latency: list[dict] | None = None,
                        reference: str = "fp32") -> Table:
    refs = references(latency or [], reference)
    ref_map = {(m["model_id"], m["device"]): m for m in models
               if m["mode"] == refs[(m["model_id"], m["device"])]}
    rows = []
    for m in sorted(models, key=unit_order):
        ref = ref_map.get((m["model_id"], m["device"]))
        # against the fp32 run inside the unit where there is one (an ONNX file has no fp32
        # unit, and the interval is of that difference), else against the fp32 unit
        base_map = m.get("map_fp32") if m.get("map_fp32") is not None else ref and ref["map"]
        drop = (100 * (base_map - m["map"]) if base_map is not None and m["map"] is not None
                else None)
        count = ("–" if m["count_error_mean"] is None else
                 f"{100 * m['count_error_mean']:.1f}% ± {100 * (m['count_error_std'] or 0):.1f}%")
        classifier = m["task"] == "classification"
        accuracy = fmt(m["map"], ".3f") if not classifier else with_interval(m, "top1")
        if accuracy == "–" and (m.get("accuracy_note") or "").startswith("no labels"):
            accuracy = "no labels"
        # agreement with fp32: top-1 for classifiers, detection recall, else the raw outputs' cosine
        agreement = with_interval(m, "agreement_top1") if classifier else fmt(
            m["agreement_recall"] if m["agreement_recall"] is not None else m.get("output_cosine"),
            ".3f")
        sqnr = m.get("logits_sqnr_db") if m.get("logits_sqnr_db") is not None else m.get("output_sqnr_db")
        rows.append([
            m["model_id"], m["mode"], m["device"], backend_text(m),
            fmt(m["size_bytes"] / MB if m["size_bytes"] is not None else None, ".1f"),
            fmt(_pct(m["size_reduction"]), ".1f"), fmt(_pct(m["params_int8_fraction"]), ".1f"),
            accuracy, fmt(m["map50"], ".3f"), drop_with_interval(m, drop), count,
            agreement, decided_text(m), fmt(sqnr, ".1f"), _status(m["status"], m["error"]),
        ])
    return Table(["model", "mode", "device", "backend (ran in)", "size MiB", "reduction %", "int8 params %",
                  "mAP / top-1", "mAP@.5", "mAP drop pts", "count error",
                  "fp32 agreement (top-1 / recall)", "top-1 agr. where fp32 decided", "SQNR dB",
                  "status"],
                 rows, align_right={4, 5, 6, 7, 8, 9, 10, 11, 12, 13})


def decided_text(m: dict) -> str:
    """Top-1 agreement over the images fp32 decided, and how many those were."""
    if m.get("agreement_top1_decided") is None:
        return "–"
    return f"{m['agreement_top1_decided']:.3f} of {m['decided_images']}"


def without_empty_columns(table: Table) -> Table:
    """The table less the columns that are empty ("–" or blank) on every row."""
    if not table.rows:
        return table
    keep = [i for i in range(len(table.headers))
            if any(row[i] not in ("–", "") for row in table.rows)]
    return Table([table.headers[i] for i in keep], [[row[i] for i in keep] for row in table.rows],
                 {keep.index(i) for i in table.align_right if i in keep})


def latency_table(rows: list[dict], reference: str = "fp32") -> Table:
    out = []
    for r in rows:
        if r.get("batch_size") is None:
            continue
        speed = r["speedup_vs_fp32"]
        fastest = r.get("fastest_fp32_mode")
        # the reference against itself: "ref", not three 1.00x
        eager = r["mode"] == (r.get("reference_mode") or reference)
        out.append([
            r["model_id"], r["mode"], r["device"], str(r["batch_size"]),
            fmt(r["latency_ms_p50"], ".1f"), fmt(r["latency_ms_p90"], ".1f"),
            "ref" if eager else r.get("speedup_vs_fp32_text") or "–",
            "–" if eager else f"{speed:.2f}x" if speed else "–",
            ("ref" if r["mode"] == fastest else
             f"{r['speedup_vs_fastest_fp32_text']} ({fastest})"
             if r.get("speedup_vs_fastest_fp32_text") else "–"),
            fmt(r["throughput_ips"], ".1f"),
            fmt(r["rss_peak_mb"], ".0f"), fmt(r["cuda_max_allocated_mb"], ".0f"),
            fmt(r.get("iterations_run"), "d"), stability_mark(r),
            _status(r["status"], r["error"]),
        ])
    return Table(["model", "mode", "device", "batch", "p50 ms", "p90 ms", "speedup vs fp32",
                  "p50 ratio (unpaired)", "vs fastest fp32", "images/s", "RSS peak MiB",
                  "CUDA peak MiB", "samples", "stable", "status"],
                 out, align_right={3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
