"""The Parquet dataset: schemas (public API), an atomic writer, and a reader.

Layout: <root>/<table>/date=YYYY-MM-DD/job=<job_id>/<unit_id>.parquet. The date is the job's
date (fixed when the job is created), not the time a unit ran, so a unit redelivered after
midnight overwrites its file instead of adding a second one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from qbench.atomic import atomic_path
from qbench.phases import COLUMNS as PHASE_COLUMNS

log = logging.getLogger(__name__)
# Unit files read_table could not read in this process, with why: the CLI names them.
UNREADABLE: dict[str, str] = {}

ENVIRONMENT = [
    ("torch_version", pa.string()),
    ("torchvision_version", pa.string()),
    ("onnxruntime_version", pa.string()),
    ("openvino_version", pa.string()),
    ("qbench_version", pa.string()),
    ("python_version", pa.string()),
    ("cpu_model", pa.string()),
    ("cpu_count", pa.int32()),
    ("threads", pa.int32()),
    ("gpu_name", pa.string()),
    ("gpu_driver", pa.string()),
    ("host", pa.string()),
    ("env_fingerprint", pa.string()),
    # int8-relevant ISA flags present (space-separated, qbench.measure.machine.INT8_FLAGS
    # order) and /proc/cpuinfo's family/model numbers; part of env_fingerprint.
    ("cpu_isa", pa.string()),
    ("cpu_family", pa.int32()),
    ("cpu_model_number", pa.int32()),
]

IDENTITY = [
    ("job_id", pa.string()),
    ("job_name", pa.string()),
    ("unit_id", pa.string()),
    ("model_id", pa.string()),
    ("arch", pa.string()),
    ("mode", pa.string()),
    ("backend", pa.string()),
    ("device", pa.string()),
]

LATENCY = pa.schema(IDENTITY + [
    ("batch_size", pa.int32()),
    ("input_h", pa.int32()),
    ("input_w", pa.int32()),
    ("warmup", pa.int32()),
    ("iterations", pa.int32()),
    ("latency_ms_p50", pa.float64()),
    ("latency_ms_p90", pa.float64()),
    ("latency_ms_p95", pa.float64()),
    ("latency_ms_p99", pa.float64()),
    ("latency_ms_mean", pa.float64()),
    ("latency_ms_std", pa.float64()),
    ("latency_ms_min", pa.float64()),
    ("throughput_ips", pa.float64()),
    ("rss_peak_bytes", pa.int64()),
    ("cuda_max_allocated_bytes", pa.int64()),
    ("cuda_max_reserved_bytes", pa.int64()),
    ("nvml_used_peak_bytes", pa.int64()),
    ("status", pa.string()),  # ok | oom | error
    ("error", pa.string()),
    ("measured_at", pa.timestamp("ms", tz="UTC")),
    # How many samples (docs/measurement.md, "Samples"): the plan and what ran, and how noisy it was.
    ("min_seconds", pa.float64()),
    ("max_iterations", pa.int32()),
    ("max_seconds", pa.float64()),
    ("iterations_run", pa.int32()),  # timed iterations actually run (unpaired pass)
    ("measured_seconds", pa.float64()),  # their summed wall-clock time
    ("latency_cv", pa.float64()),  # sample std (ddof=1) / mean of the unpaired pass
    ("stable", pa.bool_()),  # latency_cv <= 0.10 (pyperf's rule)
    ("load_avg_1m", pa.float64()),  # highest 1-minute load average sampled during the row
    ("busy_processes_max", pa.int32()),  # most runnable tasks of other processes seen
    ("busy_processes_mean", pa.float64()),
    # Paired speedup (docs/measurement.md, "Paired speedup"): the reference timed interleaved with the unit.
    ("pairing", pa.string()),  # side_by_side | interleaved | off | reference | failed: <why>
    ("reference_mode", pa.string()),
    ("paired_iterations", pa.int32()),  # pairs timed
    ("paired_rounds", pa.int32()),  # rounds the pairs were timed in (benchmark.rounds)
    ("reference_latency_ms_p50", pa.float64()),  # the reference's p50 in the paired pass
    ("paired_latency_ms_p50", pa.float64()),  # the unit's own p50 in the paired pass
    ("speedup", pa.float64()),  # median over the pairs of reference / unit
    ("speedup_ci_low", pa.float64()),  # 95% percentile bootstrap over pairs, seeded
    ("speedup_ci_high", pa.float64()),
] + ENVIRONMENT)

# One row per timed iteration (docs/results.md, `samples`): long format, so DuckDB/pandas can group
# and aggregate without unnesting, and a row of `latency` stays small to read.
SAMPLES = pa.schema(IDENTITY + [
    ("batch_size", pa.int32()),
    # unpaired (memory-tracked, the unit alone) | paired | side_by_side (all of a model's
    # variants round-robin; iteration i of every member of a batch size is from one cycle)
    ("pass", pa.string()),
    ("role", pa.string()),  # unit | reference (paired pass only)
    ("reference_mode", pa.string()),  # paired pass: the reference's mode
    ("iteration", pa.int32()),  # 0-based, in timing order within (pass, role)
    ("ran_first", pa.bool_()),  # paired pass: this side's block ran first in its pair
    ("round", pa.int32()),  # paired pass: the round (0-based) this pair was timed in
    ("latency_ms", pa.float64()),
    ("threads", pa.int32()),
    ("env_fingerprint", pa.string()),
    ("host", pa.string()),
])

MODELS = pa.schema(IDENTITY + [
    ("source", pa.string()),
    ("task", pa.string()),
    ("input_h", pa.int32()),
    ("input_w", pa.int32()),
    ("size_bytes", pa.int64()),
    ("fp32_size_bytes", pa.int64()),
    ("size_reduction", pa.float64()),  # 1 - size / fp32 size
    ("params_total", pa.int64()),
    ("params_fp32", pa.int64()),
    ("params_fp16", pa.int64()),
    ("params_bf16", pa.int64()),
    ("params_int8", pa.int64()),
    ("params_other", pa.int64()),
    ("params_int8_fraction", pa.float64()),
    ("params_by_dtype", pa.string()),  # JSON {dtype: count}
    ("int8_module_count", pa.int32()),
    ("float_module_count", pa.int32()),
    ("int8_modules", pa.list_(pa.string())),
    ("float_modules", pa.list_(pa.string())),
    ("trained_weights", pa.bool_()),  # False: random weights, accuracy columns stay null
    ("map", pa.float64()),
    ("map50", pa.float64()),
    ("map_fp32", pa.float64()),
    ("map50_fp32", pa.float64()),
    ("top1", pa.float64()),
    ("top5", pa.float64()),
    ("count_error_mean", pa.float64()),
    ("count_error_std", pa.float64()),
    ("agreement_precision", pa.float64()),
    ("agreement_recall", pa.float64()),
    ("agreement_mean_iou", pa.float64()),
    ("agreement_score_diff", pa.float64()),
    ("agreement_top1", pa.float64()),
    # 95% Wilson intervals of the classifier fractions over eval_images
    ("agreement_top1_ci_low", pa.float64()),
    ("agreement_top1_ci_high", pa.float64()),
    # the same over the images fp32 decided (its top class ahead by >= 0.1 softmax probability)
    ("agreement_top1_decided", pa.float64()),
    ("agreement_top1_decided_ci_low", pa.float64()),
    ("agreement_top1_decided_ci_high", pa.float64()),
    ("decided_images", pa.int32()),
    ("top1_ci_low", pa.float64()),
    ("top1_ci_high", pa.float64()),
    # detectors: paired bootstrap interval of mAP(fp32) - mAP, in points, over eval_images
    ("map_drop_pts_ci_low", pa.float64()),
    ("map_drop_pts_ci_high", pa.float64()),
    # format kitti (docs/datasets.md): KITTI's 2-D AP (R40) at moderate difficulty, the mean
    # over the dataset's classes, fp32's, and the paired interval of its drop in points
    ("kitti_ap_moderate", pa.float64()),
    ("kitti_ap_moderate_fp32", pa.float64()),
    ("kitti_ap_moderate_drop_pts_ci_low", pa.float64()),
    ("kitti_ap_moderate_drop_pts_ci_high", pa.float64()),
    # Preprocessing and decoding (docs/manifest.md, "Preprocessing and outputs"): the resolved preprocess
    # block as JSON with its origin, what agreement was measured on, raw-output and logits
    # SQNR, and why accuracy columns are null where they are.
    ("preprocess", pa.string()),
    ("agreement_basis", pa.string()),
    ("logits_sqnr_db", pa.float64()),
    ("output_sqnr_db", pa.float64()),
    ("output_cosine", pa.float64()),
    ("accuracy_note", pa.string()),
    ("eval_images", pa.int32()),
    ("calibration_method", pa.string()),
    ("calibration_images", pa.int32()),
    ("calibration_per_channel", pa.bool_()),
    ("calibration_bias_correction", pa.bool_()),
    ("calibration_bias_correction_method", pa.string()),  # "fast" or "full"; null: none
    ("keep_float", pa.list_(pa.string())),
    # int8_mixed: the search's target, what it reached, and the layer groups it kept float.
    ("mixed_target_metric", pa.string()),
    ("mixed_target", pa.float64()),
    ("mixed_score", pa.float64()),
    ("mixed_target_met", pa.bool_()),
    ("mixed_float_groups", pa.list_(pa.string())),
    ("mixed_heldout_score", pa.float64()),  # the chosen model on held-out calibration images
    ("mixed_heldout_target", pa.float64()),
    ("mixed_heldout_met", pa.bool_()),
    ("mixed_refined_from", pa.list_(pa.string())),  # float groups before refinement
    ("notes", pa.string()),
    # The saved model (docs/quantization.md, "Artifacts"); null when nothing was saved, the reason in notes
    # (artifacts: false) or error (saving failed; status stays ok).
    # The exact bytes benchmarked (docs/reliability.md, "Workers"): sha256 of the checkpoint or ONNX file,
    # and of the dataset (each file's path and sha256); null when the unit names none.
    ("checkpoint_sha256", pa.string()),
    ("dataset_sha256", pa.string()),
    ("artifact_path", pa.string()),  # relative to the results folder
    ("artifact_sha256", pa.string()),
    ("artifact_format", pa.string()),  # torchscript | onnx | openvino-ir
    # JSON: the properties the runtime reports it compiled the model with (OpenVINO: precision
    # hint, threads, streams, performance hint, pinning); null for runtimes without any.
    ("runtime_config", pa.string()),
    # What the runtime really executed (docs/results.md): its conv/matmul-type operators per
    # precision as JSON {"int8": n, "float32": m, ...}, read from the runtime itself (OpenVINO's
    # runtime graph, ONNX Runtime's optimized graph, torch's modules), the precision most of
    # them ran in, and the int8 share.
    ("executed_ops_by_precision", pa.string()),
    ("executed_precision", pa.string()),
    ("executed_int8_fraction", pa.float64()),
    # Detectors (docs/results.md, the work guard): detections per image and proposals pooled
    # by the box head per image (two-stage detectors, where the runtime lets them be read),
    # beside the reference mode's on the same images.
    ("work_images", pa.int32()),
    ("work_reference_mode", pa.string()),
    ("detections_per_image", pa.float64()),
    ("reference_detections_per_image", pa.float64()),
    ("proposals_per_image", pa.float64()),
    ("reference_proposals_per_image", pa.float64()),
    ("status", pa.string()),  # ok | error | timeout (ran past max_unit_seconds)
    ("error", pa.string()),
    ("started_at", pa.timestamp("ms", tz="UTC")),
    ("ended_at", pa.timestamp("ms", tz="UTC")),
    # Where the unit's time went (docs/operations.md): when it was queued (submit, or the
    # start of `qbench run`), its wall-clock seconds from start to its row, the limit it ran
    # under, and seconds per phase (worker/phases.py; null for a phase it never entered).
    ("queued_at", pa.timestamp("ms", tz="UTC")),
    ("run_seconds", pa.float64()),
    ("max_unit_seconds", pa.float64()),
] + [(c, pa.float64()) for c in PHASE_COLUMNS] + ENVIRONMENT)

LAYERS = pa.schema(IDENTITY + [
    ("layer", pa.string()),
    ("layer_index", pa.int32()),
    ("kind", pa.string()),
    ("shape", pa.list_(pa.int64())),
    ("abs_diff_mean", pa.float64()),
    ("abs_diff_max", pa.float64()),
    ("rel_diff_mean", pa.float64()),
    ("cosine", pa.float64()),
    ("sqnr_db", pa.float64()),
] + ENVIRONMENT)

# One row per unit and dataset class of a detector scored on boxes (docs/datasets.md): its AP
# beside fp32's, with the paired bootstrap interval of the drop (the mAP drop's resamples).
CLASS_METRICS = pa.schema(IDENTITY + [
    ("category_id", pa.int32()),
    ("class", pa.string()),
    ("gt_count", pa.int64()),  # ground-truth boxes on the evaluation images (no crowd/ignore)
    ("ap", pa.float64()),  # COCO AP@[.5:.95] of this class (pycocotools)
    ("ap50", pa.float64()),
    ("ap_fp32", pa.float64()),
    ("ap50_fp32", pa.float64()),
    ("ap_drop_pts_ci_low", pa.float64()),
    ("ap_drop_pts_ci_high", pa.float64()),
    # format kitti: KITTI AP (R40) per difficulty at the class's IoU threshold
    ("kitti_iou_threshold", pa.float64()),
    ("ap_easy", pa.float64()),
    ("ap_moderate", pa.float64()),
    ("ap_hard", pa.float64()),
    ("ap_moderate_fp32", pa.float64()),
    ("ap_moderate_drop_pts_ci_low", pa.float64()),
    ("ap_moderate_drop_pts_ci_high", pa.float64()),
    ("eval_images", pa.int32()),
    ("env_fingerprint", pa.string()),
    ("host", pa.string()),
])

# One row per model x device x batch size of a job, written by the report (docs/report.md): the
# fastest variant meeting the job's accuracy target, its speedup over the fastest fp32 baseline,
# the runner-up and whether the two are told apart; when no quantized variant meets the target,
# the closest one.
RECOMMENDATIONS = pa.schema([
    ("job_id", pa.string()),
    ("job_name", pa.string()),
    ("model_id", pa.string()),
    ("device", pa.string()),
    ("batch_size", pa.int32()),
    ("target_metric", pa.string()),  # map_drop_pts | agreement_top1 | output_cosine
    ("target", pa.float64()),  # at most (map_drop_pts) or at least (the others)
    ("fastest_fp32_mode", pa.string()),
    ("candidates", pa.int32()),  # variants with an ok row at this batch size
    ("quantized_qualifying", pa.int32()),  # quantized variants meeting the target
    ("recommended_mode", pa.string()),
    ("recommended_backend", pa.string()),
    ("recommended_unit_id", pa.string()),
    ("speedup_vs_fastest_fp32", pa.float64()),
    ("speedup_ci_low", pa.float64()),
    ("speedup_ci_high", pa.float64()),
    ("speedup_paired", pa.bool_()),  # False: a ratio of unpaired p50s, no interval
    ("accuracy_metric", pa.string()),  # the target's metric, or "baseline" for an fp32 baseline
    ("accuracy_value", pa.float64()),
    ("accuracy_ci_low", pa.float64()),
    ("accuracy_ci_high", pa.float64()),
    ("meets_target", pa.bool_()),
    ("interval_clears_target", pa.bool_()),  # null: no interval
    ("runner_up_mode", pa.string()),
    ("runner_up_speedup_vs_fastest_fp32", pa.float64()),
    ("over_runner_up", pa.float64()),  # recommended speed / runner-up speed
    ("over_runner_up_ci_low", pa.float64()),
    ("over_runner_up_ci_high", pa.float64()),
    ("told_apart", pa.bool_()),  # the interval of over_runner_up lies wholly above 1
    # measured pair (timed side by side) | paired | two paired runs | unpaired p50
    ("runner_up_basis", pa.string()),
    ("closest_mode", pa.string()),  # set when no quantized variant meets the target
    ("closest_accuracy_value", pa.float64()),
    ("verdict", pa.string()),
    ("env_fingerprint", pa.string()),
    ("host", pa.string()),
])

# Variant over variant, timed side by side (docs/results.md, `pairs`): one row per ordered pair of
# a model's members (its variants on one device and the reference) per batch size, all timed
# round-robin in one process (docs/measurement.md, "Side-by-side timing").
PAIRS = pa.schema(IDENTITY + [
    ("batch_size", pa.int32()),
    ("over_mode", pa.string()),  # the member this row's mode is compared with
    ("over_backend", pa.string()),
    ("over_unit_id", pa.string()),  # null: a reference built for the timing, not a unit
    ("reference_mode", pa.string()),  # the job's reference for this model
    ("members", pa.int32()),  # members timed together at this batch size
    ("pairs", pa.int32()),  # pairs timed (one per cycle and timed call)
    ("rounds", pa.int32()),
    ("latency_ms_p50", pa.float64()),  # this mode's p50 in the side-by-side pass
    ("over_latency_ms_p50", pa.float64()),  # over_mode's p50 in the same pass
    ("speedup", pa.float64()),  # median over the pairs of over_mode / mode latency
    ("speedup_ci_low", pa.float64()),  # 95% two-stage bootstrap (rounds, then pairs), seeded
    ("speedup_ci_high", pa.float64()),
    ("status", pa.string()),  # ok | oom | error (of either member)
    ("error", pa.string()),
    ("measured_at", pa.timestamp("ms", tz="UTC")),
    ("load_avg_1m", pa.float64()),
    ("busy_processes_max", pa.int32()),
    ("busy_processes_mean", pa.float64()),
] + ENVIRONMENT)

SCHEMAS = {"latency": LATENCY, "models": MODELS, "layers": LAYERS, "samples": SAMPLES,
           "class_metrics": CLASS_METRICS, "recommendations": RECOMMENDATIONS,
           "pairs": PAIRS}


def results_root() -> Path:
    return Path(os.environ.get("QBENCH_RESULTS_DIR", "results"))


def unit_file(root: Path, table: str, job_date: str, job_id: str, unit_id: str) -> Path:
    return root / table / f"date={job_date}" / f"job={job_id}" / f"{unit_id}.parquet"


def to_table(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows to an Arrow table of the public schema; unknown or missing columns are errors."""
    schema = SCHEMAS[table]
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise KeyError(f"{table}: unknown columns {sorted(extra)}")
    return pa.Table.from_pylist([{n: row.get(n) for n in schema.names} for row in rows],
                                schema=schema)


def write_rows(root: Path, table: str, job_date: str, job_id: str, unit_id: str,
               rows: list[dict[str, Any]]) -> Path:
    """Write one unit's rows atomically: a temporary file in the same folder, then rename."""
    data = to_table(table, rows)
    target = unit_file(root, table, job_date, job_id, unit_id)
    with atomic_path(target) as tmp:
        pq.write_table(data, tmp)
    return target


def read_table(root: Path, table: str, job_id: str | None = None) -> pa.Table:
    """All rows of a table (optionally one job's), with the public schema; empty if none."""
    schema = SCHEMAS[table]
    base = root / table
    files = sorted(str(p) for p in base.glob("date=*/job=*/*.parquet")) if base.exists() else []
    if job_id is not None:
        files = [f for f in files if f"/job={job_id}/" in f]
    if not files:
        return schema.empty_table()
    # File by file with the public schema: hidden temp files are skipped, the date/job folder
    # names do not become columns, and one corrupt unit file is named and skipped instead of
    # hiding every other unit's rows.
    tables = []
    for f in files:
        if os.path.islink(f) or not os.path.isfile(f):  # a FIFO would block the reader
            UNREADABLE.setdefault(f, "not a regular file (left unread)")
            continue
        try:
            tables.append(pq.read_table(f, schema=schema))
        except (pa.ArrowException, OSError) as exc:
            reason = " ".join(str(exc).split())[:200]
            log.warning("skipped unreadable %s file %s: %s", table, f, reason)
            UNREADABLE.setdefault(f, reason)
    return pa.concat_tables(tables) if tables else schema.empty_table()


def job_ids(root: Path) -> list[str]:
    base = root / "models"
    return sorted({p.name.removeprefix("job=") for p in base.glob("date=*/job=*")}) if base.exists() else []
