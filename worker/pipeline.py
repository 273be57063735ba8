"""run_unit(unit) -> rows: load, quantize, measure each batch size, evaluate, write Parquet.

Plain functions, no broker: `qbench run` calls them in-process and the Celery task wraps them.
A unit never raises for bad input: the error lands in its `models` row (status "error") and the
caller moves on to the next unit.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from worker.artifacts.save import discard_artifact, save_artifact
from worker.evaluate.synth import synth_images
from worker.manifest import Unit
from worker.measure import BatchResult, environment_fingerprint, is_oom, measure_batch
from worker.measure.unit_latency import choose_reference, measure_unit_latency
from worker.models import LoadedModel, load_model
from worker.models.base import run_task
from worker.quantize.common import serialized_size_bytes
from worker.quantize.registry import Quantized, QuantizeRequest, SearchTarget, get_mode, quantize
from worker.results import unit_file, write_rows

# torch.ao's eager/FX quantization warns about its own deprecation on every observer and
# quantized tensor; the mode is chosen knowingly (see README), so the noise is dropped.
warnings.filterwarnings("ignore", module=r"torch\.ao(\..*)?$")
warnings.filterwarnings("ignore", message=r".*quantize_per_tensor, torch.quantize_per_channel.*")

# Progress callback: (step description, done, total).
Progress = Callable[[str, int, int], None]

CALIBRATION_SEED = 20_240_601  # synthetic calibration scenes when a job names no dataset
BENCH_SEED = 7
INSPECT_SEED = 13
# fp32 baselines: every layer would be identical to the reference's
NO_INSPECT_MODES = {"fp32", "ort_fp32", "fp32_compiled"}
INT8_DTYPES = {"qint8", "quint8", "int8", "uint8"}


@dataclass
class UnitOutcome:
    unit_id: str
    status: str  # ok | error
    error: str | None
    latency_rows: list[dict[str, Any]] = field(default_factory=list)
    model_row: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The JSON-safe result a Celery task returns."""
        return {"unit_id": self.unit_id, "status": self.status, "error": self.error,
                "files": self.files}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _identity(unit: Unit, backend: str | None) -> dict[str, Any]:
    return {
        "job_id": unit.job_id, "job_name": unit.job_name, "unit_id": unit.unit_id,
        "model_id": unit.model.id, "arch": unit.model.arch or Path(unit.model.path or "").name,
        "mode": unit.mode, "backend": backend, "device": unit.device,
    }


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:500]


def check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda: CUDA is not available on this worker")


def calibration_source(unit: Unit, loaded: LoadedModel) -> Callable[[], list[torch.Tensor]]:
    """Batches for calibration: dataset calibration split, or seeded synthetic scenes."""
    count = unit.quantization.calibration.images
    if unit.dataset is not None:
        from worker.evaluate.datasets import calibration_batches

        return lambda: calibration_batches(unit, loaded, count)
    h, w = loaded.input_size

    def batches() -> list[torch.Tensor]:
        images = synth_images(count, (h, w), CALIBRATION_SEED)
        return list(images.split(4))

    return batches


def bench_batch(pool: torch.Tensor, batch_size: int, device: str) -> torch.Tensor:
    """A batch of the pool's distinct images, tiled to batch_size, on the device."""
    reps = -(-batch_size // pool.shape[0])
    return pool.repeat(reps, 1, 1, 1)[:batch_size].contiguous().to(device)


def measure_one(q: Quantized, pool: torch.Tensor, batch_size: int, unit: Unit) -> BatchResult:
    """One batch size; running out of memory (even building the batch) is a row, not a crash."""
    try:
        batch = bench_batch(pool, batch_size, unit.device)
    except Exception as exc:
        if is_oom(exc):
            return BatchResult("oom", None, error=_one_line(exc))
        raise
    try:
        return measure_batch(lambda: q.predict(batch), unit.device, unit.benchmark.warmup,
                             unit.benchmark.iterations)
    except Exception as exc:  # this batch size fails; the others are still measured
        return BatchResult("error", None, error=_one_line(exc))


def latency_row(base: dict[str, Any], unit: Unit, loaded: LoadedModel, batch_size: int,
                result: BatchResult) -> dict[str, Any]:
    lat, mem = result.latency, result.memory
    h, w = loaded.input_size
    return {
        **base, "batch_size": batch_size, "input_h": h, "input_w": w,
        "warmup": unit.benchmark.warmup, "iterations": unit.benchmark.iterations,
        "latency_ms_p50": lat.p50_ms if lat else None,
        "latency_ms_p90": lat.p90_ms if lat else None,
        "latency_ms_p95": lat.p95_ms if lat else None,
        "latency_ms_p99": lat.p99_ms if lat else None,
        "latency_ms_mean": lat.mean_ms if lat else None,
        "latency_ms_std": lat.std_ms if lat else None,
        "latency_ms_min": lat.min_ms if lat else None,
        "throughput_ips": lat.throughput(batch_size) if lat else None,
        "rss_peak_bytes": mem.rss_peak_bytes, "cuda_max_allocated_bytes": mem.cuda_max_allocated_bytes,
        "cuda_max_reserved_bytes": mem.cuda_max_reserved_bytes,
        "nvml_used_peak_bytes": mem.nvml_used_peak_bytes,
        "status": result.status, "error": result.error, "measured_at": _now(),
    }


def size_columns(q: Quantized, fp32_size: int) -> dict[str, Any]:
    counts = q.params_by_dtype
    total = sum(counts.values())
    int8 = sum(n for d, n in counts.items() if d in INT8_DTYPES)
    known = {"float32", "float16", "bfloat16", *INT8_DTYPES}
    return {
        "size_bytes": q.size_bytes, "fp32_size_bytes": fp32_size,
        "size_reduction": 1.0 - q.size_bytes / fp32_size if fp32_size else None,
        "params_total": total, "params_fp32": counts.get("float32", 0),
        "params_fp16": counts.get("float16", 0), "params_bf16": counts.get("bfloat16", 0),
        "params_int8": int8,
        "params_other": sum(n for d, n in counts.items() if d not in known),
        "params_int8_fraction": int8 / total if total else None,
        "params_by_dtype": json.dumps(counts, sort_keys=True),
        "int8_module_count": len(q.int8_modules), "float_module_count": len(q.float_modules),
        "int8_modules": q.int8_modules, "float_modules": q.float_modules, "notes": q.notes,
    }


def initial_model_row(unit: Unit, env: dict[str, Any]) -> dict[str, Any]:
    calibrated = get_mode(unit.mode).needs_calibration
    calib = unit.quantization.calibration
    return {
        **_identity(unit, None), **env, "source": unit.model.source,
        "input_h": unit.model.input_size[0], "input_w": unit.model.input_size[1],
        "calibration_method": calib.method if calibrated else None,
        "calibration_images": calib.images if calibrated else None,
        "calibration_per_channel": calib.per_channel if calibrated else None,
        "keep_float": list(unit.quantization.keep_float), "started_at": _now(),
    }


def failed_row(unit: Unit, error: str) -> dict[str, Any]:
    """The models row of a unit that could not even report its own failure."""
    return {**initial_model_row(unit, environment_fingerprint()), "status": "error",
            "error": error, "ended_at": _now()}


def run_unit(unit: Unit, results_root: Path, progress: Progress | None = None) -> UnitOutcome:
    """Run one unit end to end and write its rows; errors become a `models` row, never raise."""
    say = progress or (lambda step, done, total: None)
    if unit.benchmark.threads:
        torch.set_num_threads(unit.benchmark.threads)
    env = environment_fingerprint()
    calib = unit.quantization.calibration
    model_row = initial_model_row(unit, env)
    latency_rows: list[dict[str, Any]] = []
    sample_rows: list[dict[str, Any]] = []
    layer_rows: list[dict[str, Any]] = []
    total_steps = len(unit.benchmark.batch_sizes) + 4
    try:
        check_device(unit.device)
        say("load model", 0, total_steps)
        loaded = load_model(unit)
        model_row.update(task=loaded.task, trained_weights=loaded.trained,
                         input_h=loaded.input_size[0], input_w=loaded.input_size[1])
        fp32_size = serialized_size_bytes(loaded.module)
        say(f"quantize {unit.mode}", 1, total_steps)
        with tempfile.TemporaryDirectory(prefix=f"qbench-{unit.unit_id}-") as work_dir:
            request = QuantizeRequest(
                device=unit.device, calibration=calib, keep_float=list(unit.quantization.keep_float),
                calibration_batches=calibration_source(unit, loaded), work_dir=work_dir,
            )
            if unit.mode == "int8_mixed":
                request.search = search_target(unit, loaded, request)
            q = quantize(loaded, unit.mode, request)
            base = {**_identity(unit, q.backend), **env}
            model_row.update(backend=q.backend, **size_columns(q, fp32_size))
            if q.search is not None:
                model_row.update(mixed_search_columns(q, unit, results_root))
            pool = synth_images(min(8, max(unit.benchmark.batch_sizes)), loaded.input_size,
                                BENCH_SEED)
            ref_mode = choose_reference(unit.benchmark.reference, loaded.source)
            measured = measure_unit_latency(
                q.predict, lambda: quantize(loaded, ref_mode, request).predict, pool, unit.mode,
                unit.device, unit.benchmark, loaded.input_size, base, ref_mode, say, 2,
                total_steps)
            latency_rows, sample_rows = measured.rows, measured.samples
            if all(r["status"] == "error" for r in latency_rows):
                raise RuntimeError(f"every batch size failed: {latency_rows[0]['error']}")
            if unit.dataset is not None:
                say("evaluate", total_steps - 2, total_steps)
                from worker.evaluate.run import evaluate_unit

                model_row.update(evaluate_unit(unit, loaded, q))
            if unit.inspect.images and unit.mode not in NO_INSPECT_MODES:
                say("inspect layers", total_steps - 1, total_steps)
                layer_rows = inspect_step(unit, loaded, q, base, results_root, model_row)
            # After measuring (scripting a copy must not inflate the RSS peaks) and before
            # work_dir (where an ORT mode's .onnx file lives) is deleted. Never raises.
            saved = save_artifact(unit, loaded, q, results_root)
        model_row.update(status="ok", error=None)
        saved.apply(model_row)  # artifact columns; why there is none goes to notes or error
    except Exception as exc:  # a unit's failure is data: record it, keep the worker up
        discard_artifact(unit, results_root)  # no file of an earlier attempt outlives it
        model_row.update(status="error", error=_one_line(exc))
        model_row.setdefault("notes", traceback.format_exc(limit=3)[-2000:])
    model_row["ended_at"] = _now()
    say("write results", total_steps, total_steps)
    return write_outcome(unit, results_root, latency_rows, model_row, layer_rows, sample_rows)


def search_target(unit: Unit, loaded: LoadedModel, request: QuantizeRequest) -> SearchTarget:
    """int8_mixed's goal, scored on calibration images only (evaluation images stay unseen)."""
    target = unit.quantization.target
    if target.max_map_drop is not None and loaded.task == "detection":
        from worker.evaluate.datasets import calibration_map_scorer

        score = calibration_map_scorer(unit, loaded)
        fp32 = score(lambda b: run_task(loaded.task, loaded.module, b))
        return SearchTarget(lambda q: score(q.predict), fp32 - target.max_map_drop / 100,
                            "mAP on the calibration split", target.max_float)
    from worker.inspect.sensitivity import agreement_score

    images = torch.cat(list(request.calibration_batches()))
    return SearchTarget(agreement_score(loaded, images), target.min_agreement,
                        "agreement with fp32 on the calibration images", target.max_float)


def mixed_search_columns(q: Quantized, unit: Unit, root: Path) -> dict[str, Any]:
    """The search's outcome for the models row, and its trade-off plot for the report."""
    from worker.inspect.tradeoff_plot import plot_tradeoff
    from worker.report import report_folder

    sensitivity, search, target = q.search
    out = report_folder(root, unit.job_id) / "inspect" / f"{unit.model.id}-{unit.mode}-{unit.device}"
    out.mkdir(parents=True, exist_ok=True)
    plot_tradeoff(sensitivity, search, out / "mixed_precision_tradeoff.png", target.name)
    return {"mixed_target_metric": target.name, "mixed_target": target.value,
            "mixed_score": search.chosen.score, "mixed_target_met": search.met,
            "mixed_float_groups": list(search.float_groups)}


def inspect_step(unit: Unit, loaded: LoadedModel, q: Quantized, base: dict[str, Any],
                 root: Path, model_row: dict[str, Any]) -> list[dict[str, Any]]:
    """Layer-by-layer differences and pictures; a failure here is a note, not a failed unit."""
    from worker.inspect import inspect_unit
    from worker.report import report_folder

    if unit.dataset is not None:
        from worker.evaluate.datasets import evaluation_set

        images = evaluation_set(unit, loaded).images[: unit.inspect.images]
    else:
        images = synth_images(unit.inspect.images, loaded.input_size, INSPECT_SEED)
    out = report_folder(root, unit.job_id) / "inspect" / f"{unit.model.id}-{unit.mode}-{unit.device}"
    try:
        rows, _ = inspect_unit(loaded, q, images, unit.inspect.layers, out, label=unit.mode)
    except Exception as exc:
        note = f"inspection failed: {_one_line(exc)}"
        model_row["notes"] = f"{model_row.get('notes') or ''}; {note}".lstrip("; ")
        return []
    return [{**base, **r} for r in rows]


def write_outcome(unit: Unit, root: Path, latency_rows: list[dict[str, Any]],
                  model_row: dict[str, Any],
                  layer_rows: list[dict[str, Any]] | None = None,
                  sample_rows: list[dict[str, Any]] | None = None) -> UnitOutcome:
    """Models last: a models row means the unit's other files are complete.

    A table with no rows removes that unit's earlier file, so a retry that failed early leaves
    no rows of an earlier attempt behind.
    """
    files = []
    for table, rows in (("latency", latency_rows), ("layers", layer_rows or []),
                        ("samples", sample_rows or [])):
        if rows:
            files.append(str(write_rows(root, table, unit.job_date, unit.job_id, unit.unit_id, rows)))
        else:
            unit_file(root, table, unit.job_date, unit.job_id, unit.unit_id).unlink(missing_ok=True)
    files.append(str(write_rows(root, "models", unit.job_date, unit.job_id, unit.unit_id,
                                [model_row])))
    return UnitOutcome(unit.unit_id, model_row["status"], model_row.get("error"), latency_rows,
                       model_row, files)
