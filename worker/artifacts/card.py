"""The JSON card `qbench export` writes beside each artifact: what it is and how it measured."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

CARD_VERSION = 1
FIGURES = (
    "size_bytes", "fp32_size_bytes", "size_reduction", "params_total", "params_int8_fraction",
    "int8_module_count", "float_module_count", "trained_weights", "eval_images",
    "map", "map50", "map_fp32", "map50_fp32", "top1", "top5", "count_error_mean",
    "count_error_std", "agreement_precision", "agreement_recall", "agreement_mean_iou",
    "agreement_score_diff", "agreement_top1", "agreement_top1_ci_low", "agreement_top1_ci_high",
    "agreement_top1_decided", "decided_images",
    "top1_ci_low", "top1_ci_high", "map_drop_pts_ci_low", "map_drop_pts_ci_high",
)
LATENCY = (
    "batch_size", "latency_ms_p50", "latency_ms_p90", "latency_ms_p95", "latency_ms_p99",
    "latency_ms_mean", "latency_ms_min", "throughput_ips", "rss_peak_bytes",
    "cuda_max_allocated_bytes", "status", "error",
)
MACHINE = ("cpu_model", "cpu_count", "threads", "gpu_name", "gpu_driver", "env_fingerprint")


def how_to_load(fmt: str | None, task: str | None, file: str,
                onnx_input: str | None) -> str | None:
    """A Python snippet that loads and runs the artifact without qbench (its backend's, with
    the task's own call); None for a row that saved no artifact."""
    from qbench.backends import for_format
    from qbench.models.kinds import KINDS, TaskKind

    if fmt is None:
        return None
    kind = KINDS.get(task or "", TaskKind())
    return for_format(fmt).load_snippet(kind, file, onnx_input)


def _plain(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def build_card(row: dict[str, Any], latency: list[dict[str, Any]], file: str, size: int,
               onnx_input: str | None = None) -> dict[str, Any]:
    """The card of one `models` row (and its unit's `latency` rows)."""
    fmt = row["artifact_format"]
    calibrated = row["calibration_method"] is not None
    return {
        "card_version": CARD_VERSION,
        "artifact": {"file": file, "format": fmt, "sha256": row["artifact_sha256"],
                     "bytes": size, "load": how_to_load(fmt, row["task"], file, onnx_input)},
        "model": {"model_id": row["model_id"], "arch": row["arch"], "source": row["source"],
                  "task": row["task"], "input_size": [row["input_h"], row["input_w"]],
                  "trained_weights": row["trained_weights"],
                  # how images are fed to it (resize, scale, mean/std, channel order) and why
                  "preprocess": json.loads(row["preprocess"]) if row.get("preprocess") else None},
        "inputs": {"checkpoint_sha256": row.get("checkpoint_sha256"),
                   "dataset_sha256": row.get("dataset_sha256")},
        "job": {"job_id": row["job_id"], "job_name": row["job_name"], "unit_id": row["unit_id"],
                "started_at": _plain(row["started_at"]), "ended_at": _plain(row["ended_at"])},
        "quantization": {
            "mode": row["mode"], "backend": row["backend"], "device": row["device"],
            "calibration": ({"method": row["calibration_method"],
                             "images": row["calibration_images"],
                             "per_channel": row["calibration_per_channel"],
                             "bias_correction": row.get("calibration_bias_correction"),
                             "bias_correction_method":
                                 row.get("calibration_bias_correction_method")}
                            if calibrated else None),
            "keep_float": list(row["keep_float"] or []), "notes": row["notes"],
        },
        "versions": {"qbench": row["qbench_version"], "torch": row["torch_version"],
                     "torchvision": row["torchvision_version"],
                     "onnxruntime": row["onnxruntime_version"],
                     "openvino": row.get("openvino_version"), "python": row["python_version"]},
        "machine": {k: row[k] for k in MACHINE},
        "figures": {k: _plain(row[k]) for k in FIGURES},
        "latency": [{k: _plain(r[k]) for k in LATENCY}
                    for r in sorted(latency, key=lambda r: r["batch_size"])],
    }


def card_json(card: dict[str, Any]) -> str:
    return json.dumps(card, indent=2, sort_keys=False) + "\n"
