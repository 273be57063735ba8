"""The report job: Parquet rows -> size/time/accuracy tables (Markdown, CSV) and a plot."""

from __future__ import annotations

import csv
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

from worker.results import read_table

matplotlib.use("Agg")  # headless; imported at module level so Celery's parent preloads it
import matplotlib.pyplot as plt  # noqa: E402

MB = 1024 * 1024


def _fmt(value: Any, spec: str, empty: str = "–") -> str:
    return empty if value is None else format(value, spec)


def summary_rows(models: list[dict], latency: list[dict]) -> list[dict[str, Any]]:
    """One row per model x mode x device x batch size; units with no latency get one row."""
    # fp32 eager of the same model and device is the reference for speedup.
    ref = {(r["model_id"], r["device"], r["batch_size"]): r["latency_ms_p50"]
           for r in latency if r["mode"] == "fp32" and r["status"] == "ok"}
    ref_map = {(m["model_id"], m["device"]): m["map"] for m in models if m["mode"] == "fp32"}
    by_unit = defaultdict(list)
    for r in latency:
        by_unit[r["unit_id"]].append(r)
    rows = []
    for m in sorted(models, key=lambda m: (m["model_id"], m["device"], m["mode"] != "fp32", m["mode"])):
        base = {
            "job_id": m["job_id"], "model_id": m["model_id"], "arch": m["arch"], "mode": m["mode"],
            "backend": m["backend"], "device": m["device"],
            "size_mb": m["size_bytes"] / MB if m["size_bytes"] is not None else None,
            "size_reduction_pct": 100 * m["size_reduction"] if m["size_reduction"] is not None else None,
            "int8_param_pct": 100 * m["params_int8_fraction"] if m["params_int8_fraction"] is not None else None,
            "map": m["map"], "map50": m["map50"],
            "map_drop_pts": (100 * (ref_map[(m["model_id"], m["device"])] - m["map"])
                             if m["map"] is not None and ref_map.get((m["model_id"], m["device"])) is not None
                             else None),
            "count_error_mean": m["count_error_mean"], "count_error_std": m["count_error_std"],
            "unit_status": m["status"], "unit_error": m["error"],
        }
        lat_rows = sorted(by_unit.get(m["unit_id"], []), key=lambda r: r["batch_size"])
        if not lat_rows:
            rows.append({**base, "batch_size": None})
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
                "error": r["error"],
            })
    return rows


def size_table(models: list[dict]) -> list[str]:
    lines = ["| model | mode | device | backend | size MB | reduction | int8 params | mAP | mAP@.5 | count error | status |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for m in sorted(models, key=lambda m: (m["model_id"], m["device"], m["mode"] != "fp32", m["mode"])):
        size = _fmt(m["size_bytes"] / MB if m["size_bytes"] is not None else None, ".1f")
        red = _fmt(100 * m["size_reduction"] if m["size_reduction"] is not None else None, ".1f")
        share = _fmt(100 * m["params_int8_fraction"] if m["params_int8_fraction"] is not None else None, ".1f")
        cnt = ("–" if m["count_error_mean"] is None else
               f"{100 * m['count_error_mean']:.1f}% ± {100 * (m['count_error_std'] or 0):.1f}%")
        status = m["status"] if m["status"] == "ok" else f"**{m['status']}**: {m['error']}"
        lines.append(f"| {m['model_id']} | {m['mode']} | {m['device']} | {m['backend'] or '–'} | {size} | "
                     f"{red}% | {share}% | {_fmt(m['map'], '.3f')} | {_fmt(m['map50'], '.3f')} | {cnt} | {status} |")
    return lines


def latency_table(rows: list[dict]) -> list[str]:
    lines = ["| model | mode | device | batch | p50 ms | p90 ms | speedup vs fp32 | images/s | RSS peak MB | CUDA peak MB | status |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.get("batch_size") is None:
            continue
        status = r["status"] if r["status"] == "ok" else f"**{r['status']}**"
        lines.append(
            f"| {r['model_id']} | {r['mode']} | {r['device']} | {r['batch_size']} | "
            f"{_fmt(r['latency_ms_p50'], '.1f')} | {_fmt(r['latency_ms_p90'], '.1f')} | "
            f"{_fmt(r['speedup_vs_fp32'], '.2f')}{'x' if r['speedup_vs_fp32'] else ''} | "
            f"{_fmt(r['throughput_ips'], '.1f')} | {_fmt(r['rss_peak_mb'], '.0f')} | "
            f"{_fmt(r['cuda_max_allocated_mb'], '.0f')} | {status} |")
    return lines


def how_measured(models: list[dict], latency: list[dict]) -> list[str]:
    """Generated from the rows themselves, so the text cannot drift from what was run."""
    if not latency and not models:
        return []
    any_row = (latency or models)[0]
    warm = sorted({(r["warmup"], r["iterations"]) for r in latency})
    calib = sorted({(m["calibration_method"], m["calibration_images"]) for m in models
                    if m["calibration_method"]})
    lines = ["## How this was measured", ""]
    if warm:
        lines.append("- Latency: " + "; ".join(f"{w} warm-up then {i} timed iterations" for w, i in warm)
                     + " per batch size; each iteration timed with `time.perf_counter` (CUDA "
                     "synchronised on GPU); p50/p90 are percentiles over iterations.")
    lines.append("- Size: bytes of the serialized state_dict (`torch.save`), or of the ONNX file.")
    lines.append("- RSS peak: the process's resident memory, sampled by a sidecar process during the "
                 "timed loop. CUDA peak: `torch.cuda.max_memory_allocated`, reset per batch size.")
    for method, images in calib:
        lines.append(f"- Calibration: {method}, {images} images.")
    lines.append(f"- Environment: torch {any_row['torch_version']}, torchvision "
                 f"{any_row['torchvision_version']}, CPU {any_row['cpu_model']} "
                 f"({any_row['threads']} threads), GPU {any_row['gpu_name'] or 'none'}, "
                 f"qbench {any_row['qbench_version']}, fingerprint `{any_row['env_fingerprint']}`.")
    return lines


def plot_latency(rows: list[dict], target: Path) -> Path | None:
    series = defaultdict(list)
    for r in rows:
        if r.get("batch_size") is not None and r.get("status") == "ok":
            series[(r["model_id"], r["mode"], r["device"])].append((r["batch_size"], r["latency_ms_p50"],
                                                                    r["throughput_ips"]))
    if not series:
        return None
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (model, mode, device), pts in sorted(series.items()):
        pts.sort()
        xs = [p[0] for p in pts]
        label = f"{model} {mode} ({device})"
        ax_lat.plot(xs, [p[1] for p in pts], marker="o", label=label)
        ax_tp.plot(xs, [p[2] for p in pts], marker="o", label=label)
    for ax, title, unit in ((ax_lat, "Latency p50 per batch", "ms"),
                            (ax_tp, "Throughput", "images / s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    ax_lat.set_yscale("log")
    ax_tp.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def build_report(root: Path, job_id: str) -> tuple[str, list[dict], Path]:
    models = read_table(root, "models", job_id).to_pylist()
    latency = read_table(root, "latency", job_id).to_pylist()
    out = root / "reports" / job_id
    out.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(models, latency)
    lines = [f"# qbench report: {job_id}", ""]
    if not models:
        lines.append("No unit of this job has written a row yet.")
    failed = [m for m in models if m["status"] != "ok"]
    if failed:
        lines += [f"**{len(failed)} unit(s) failed** — see the status column.", ""]
    lines += ["## Size and accuracy", "", *size_table(models), "",
              "## Latency, throughput and memory", "", *latency_table(rows), ""]
    if plot_latency(rows, out / "latency.png"):
        lines += ["![latency and throughput vs batch size](latency.png)", ""]
    notes = sorted({(m["model_id"], m["mode"], m["notes"]) for m in models
                    if m["notes"] and m["status"] == "ok"})
    if notes:
        lines += ["## What stayed float", ""] + [f"- {mid} {mode}: {n}" for mid, mode, n in notes] + [""]
    lines += how_measured(models, latency)
    return "\n".join(lines) + "\n", rows, out


def write_report(root: Path, job_id: str) -> dict[str, Path]:
    text, rows, out = build_report(root, job_id)
    _atomic_text(out / "report.md", text)
    columns = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k)
                     if rows and k in rows[0] else 999)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".summary.", suffix=".tmp")
    with os.fdopen(fd, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "summary.csv")
    paths = {"markdown": out / "report.md", "csv": out / "summary.csv"}
    if (out / "latency.png").exists():
        paths["plot"] = out / "latency.png"
    return paths
