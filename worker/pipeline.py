"""run_unit(unit) -> rows: load, quantize, measure each batch size, evaluate, write Parquet.

Plain functions, no broker: `qbench run` calls them in-process and the Celery task wraps them.
A unit never raises for bad input: the error lands in its `models` row (status "error") and the
caller moves on to the next unit.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qbench.artifacts.save import discard_artifact, save_artifact
from qbench.evaluate.synth import synth_images
from qbench.evaluate.targets import search_target
from qbench.manifest import Unit
from qbench.measure import environment_fingerprint
from qbench.measure.unit_latency import LatencyJob, choose_reference, measure_unit_latency
from qbench.model_row import (
    Backend,
    ExecutedPrecision,
    InputFacts,
    ModelFacts,
    ParamsResult,
    RowPart,
    SizeResult,
    assemble,
    join_notes,
)
from qbench.models import LoadedModel, load_model
from qbench.modes import MODES, get_mode
from qbench.orchestrate import times_side_by_side
from qbench.phases import PhaseClock
from qbench.preprocess.defaults import Resolved, for_model
from qbench.preprocess.transform import unit_to_input
from qbench.quantize.common import serialized_size_bytes
from qbench.quantize.registry import Quantized, QuantizeRequest, quantize
from qbench.results import unit_file, write_rows

if TYPE_CHECKING:
    from qbench.evaluate.datasets import UnitData

# torch.ao's eager/FX quantization warns about its own deprecation on every observer and
# quantized tensor; the mode is chosen knowingly (see docs/quantization.md), so the noise is dropped.
warnings.filterwarnings("ignore", module=r"torch\.ao(\..*)?$")
warnings.filterwarnings("ignore", message=r".*quantize_per_tensor, torch.quantize_per_channel.*")

# Progress callback: (step description, done, total).
Progress = Callable[[str, int, int], None]

CALIBRATION_SEED = 20_240_601  # synthetic calibration scenes when a job names no dataset
BENCH_SEED = 7
INSPECT_SEED = 13
# Progress steps of a unit: load, quantize, one per batch size, evaluate, inspect, write.
MEASURE_FIRST_STEP = 2


def unit_steps(unit: Unit) -> int:
    return len(unit.benchmark.batch_sizes) + 4


@dataclass
class UnitOutcome:
    unit_id: str
    status: str  # ok | error | timeout
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


@dataclass(frozen=True)
class UnitInputs:
    """What a unit feeds its model, resolved once per unit and passed down: its preprocessing
    (the manifest's, or the kind's default) and its dataset (None without one)."""

    pre: Resolved
    dataset: UnitData | None

    @classmethod
    def of(cls, unit: Unit, loaded: LoadedModel) -> UnitInputs:
        pre = for_model(unit.model.preprocess, loaded)
        if unit.dataset is None:
            return cls(pre, None)
        from qbench.evaluate.datasets import UnitData

        return cls(pre, UnitData(unit, loaded, pre.spec))


def calibration_source(unit: Unit, loaded: LoadedModel,
                       inputs: UnitInputs) -> Callable[[], list[torch.Tensor]]:
    """Batches for calibration: dataset calibration split, or seeded synthetic scenes."""
    count = unit.quantization.calibration.images
    if inputs.dataset is not None:
        return inputs.dataset.calibration_batches
    h, w = loaded.input_size
    pre = inputs.pre.spec

    def batches() -> list[torch.Tensor]:
        images = unit_to_input(synth_images(count, (h, w), CALIBRATION_SEED), pre)
        return list(images.split(4))

    return batches


def initial_model_row(unit: Unit, env: dict[str, Any],
                      timing: dict[str, Any] | None = None) -> dict[str, Any]:
    calibrated = get_mode(unit.mode).needs_calibration
    calib = unit.quantization.calibration
    corrected = (calib.bias_correction_method
                 if calibrated and MODES[unit.mode].bias_correction else None)
    return {
        **_identity(unit, None), **env, "source": unit.model.source,
        "input_h": unit.model.input_size[0], "input_w": unit.model.input_size[1],
        "calibration_method": calib.method if calibrated else None,
        "calibration_images": calib.images if calibrated else None,
        "calibration_per_channel": calib.per_channel if calibrated else None,
        "calibration_bias_correction": (corrected is not None if calibrated else None),
        "calibration_bias_correction_method": corrected,
        "keep_float": list(unit.quantization.keep_float), "started_at": _now(),
        "checkpoint_sha256": unit.checkpoint_sha256, "dataset_sha256": unit.dataset_sha256,
        **(timing or {}),
    }


def failed_row(unit: Unit, error: str) -> dict[str, Any]:
    """The models row of a unit that could not even report its own failure."""
    return assemble(initial_model_row(unit, environment_fingerprint()), [], status="error",
                    error=error, notes=None, ended_at=_now())


def bench_pool(unit: Unit, loaded: LoadedModel, pre: Resolved | None = None) -> torch.Tensor:
    """The distinct images every timed batch is tiled from: seeded synthetic scenes through
    the unit's preprocessing (the same pool for the unit's passes and the side-by-side one)."""
    pre = pre or for_model(unit.model.preprocess, loaded)
    return unit_to_input(synth_images(min(8, max(unit.benchmark.batch_sizes)), loaded.input_size,
                                      BENCH_SEED), pre.spec)


def measure_step(q: Quantized, loaded: LoadedModel, unit: Unit, base: dict[str, Any],
                 request: QuantizeRequest, say: Callable[[str, int], None], inputs: UnitInputs
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The timed part: `latency` rows (one per batch size) and raw `samples`, on one pool of
    images; the reference is built only for an interleaved paired pass
    (worker/measure/unit_latency.py). Side by side, the speedups come later (worker/time_model.py)."""
    pool = bench_pool(unit, loaded, inputs.pre)
    ref_mode = choose_reference(unit.benchmark.reference, loaded.source)
    benchmark = unit.benchmark
    if benchmark.pairing == "side_by_side" and not times_side_by_side(unit):
        # no saved programs to time side by side: the reference is timed beside this unit
        benchmark = benchmark.model_copy(update={"pairing": "interleaved"})
    job = LatencyJob(unit.mode, unit.device, benchmark, loaded.input_size, base, ref_mode,
                     progress=lambda step, done, total: say(step, done),
                     first_step=MEASURE_FIRST_STEP, total_steps=unit_steps(unit))
    measured = measure_unit_latency(
        q.predict, lambda: quantize(loaded, ref_mode, request).predict, pool, job)
    if all(r["status"] == "error" for r in measured.rows):
        raise RuntimeError(f"every batch size failed: {measured.rows[0]['error']}")
    return measured.rows, measured.samples


def run_unit(unit: Unit, results_root: Path, progress: Progress | None = None,
             timing: dict[str, Any] | None = None) -> UnitOutcome:
    """Run one unit end to end and write its rows; errors become a `models` row, never raise.

    `timing`: start columns the caller knows (queued_at, max_unit_seconds)."""
    total_steps = unit_steps(unit)
    report = progress or (lambda step, done, total: None)
    clock = PhaseClock()
    clock.enter("load")  # from the unit's start: the environment fingerprint, then the model
    began = time.monotonic()

    def say(step: str, done: int) -> None:
        clock.step(step)
        report(step, done, total_steps)

    if unit.benchmark.threads:
        torch.set_num_threads(unit.benchmark.threads)
    env = environment_fingerprint()
    calib = unit.quantization.calibration
    start = initial_model_row(unit, env, timing)
    parts: list[RowPart] = []  # each step's result, in order; the row is assembled at the end
    notes: list[str] | None = None  # None until quantized: an earlier failure keeps its trace
    status, error = "ok", None
    latency_rows: list[dict[str, Any]] = []
    sample_rows: list[dict[str, Any]] = []
    layer_rows: list[dict[str, Any]] = []
    class_rows: list[dict[str, Any]] = []
    try:
        check_device(unit.device)
        say("load model", 0)
        loaded = load_model(unit)
        inputs = UnitInputs.of(unit, loaded)  # preprocessing and dataset: resolved once
        parts += [ModelFacts.of(loaded), InputFacts.of(inputs.pre)]
        fp32_size = serialized_size_bytes(loaded.module)
        say(f"quantize {unit.mode}", 1)
        with tempfile.TemporaryDirectory(prefix=f"qbench-{unit.unit_id}-") as work_dir:
            batches = calibration_source(unit, loaded, inputs)
            request = QuantizeRequest(
                device=unit.device, calibration=calib, keep_float=list(unit.quantization.keep_float),
                calibration_batches=batches, work_dir=work_dir,
                search_target=lambda: search_target(unit, loaded, batches, inputs.dataset),
                progress=lambda text: say(f"quantize {unit.mode}: {text}", 1),
            )
            q = quantize(loaded, unit.mode, request)
            base = {**_identity(unit, q.backend), **env}
            config = q.runtime.runtime_config() if q.runtime is not None else None
            parts += [Backend(q.backend, config), SizeResult.of(q, fp32_size),
                      ParamsResult.of(q)]
            notes = [q.notes]
            if q.search is not None:  # a searching mode: its outcome and trade-off plot
                q.search.write_plot(inspect_folder(results_root, unit))
                parts.append(q.search)
            latency_rows, sample_rows = measure_step(q, loaded, unit, base, request, say,
                                                     inputs)
            # after timing: reading it may build another session (ONNX Runtime's optimized graph)
            executed, why_not = ExecutedPrecision.of(q.runtime)
            parts.append(executed)
            notes.append(why_not)
            if loaded.kind.name == "detection" or (unit.model.outputs is not None
                                                   and unit.model.outputs.decoder is not None):
                work, why_not = work_step(unit, loaded, q, request, inputs)
                parts += [work] if work is not None else []
                notes.append(why_not)
            if unit.dataset is not None:
                say("evaluate", total_steps - 2)
                from qbench.evaluate.run import evaluate_unit

                evaluation = evaluate_unit(unit, loaded, q, inputs.dataset, inputs.pre)
                parts.append(evaluation)
                who = {**_identity(unit, q.backend), "env_fingerprint": env.get("env_fingerprint"),
                       "host": env.get("host"), "eval_images": evaluation.eval_images}
                class_rows = [{**who, **row} for row in evaluation.class_rows]
            # A reference mode is the model itself: every layer would be identical.
            if unit.inspect.images and not get_mode(unit.mode).reference:
                say("inspect layers", total_steps - 1)
                layer_rows, note = inspect_step(unit, loaded, q, base, results_root, inputs)
                notes.append(note)
            # After measuring (scripting a copy must not inflate the RSS peaks) and before
            # work_dir (where an ORT mode's .onnx file lives) is deleted. Never raises.
            clock.enter("write")
            saved = save_artifact(unit, loaded, q, results_root)
        parts.append(saved)  # artifact columns; why there is none goes to notes or error
        notes.append(saved.note)
        error = saved.error
    except Exception as exc:  # a unit's failure is data: record it, keep the worker up
        discard_artifact(unit, results_root)  # no file of an earlier attempt outlives it
        status, error = "error", _one_line(exc)
        if notes is None:
            notes = [traceback.format_exc(limit=3)[-2000:]]
    model_row = assemble(start, parts, status=status, error=error,
                         notes=None if notes is None else join_notes(notes), ended_at=_now())
    say("write results", total_steps)

    def timed(row: dict[str, Any]) -> None:  # the last thing before the models row is written
        row.update(clock.columns(), run_seconds=round(time.monotonic() - began, 3))

    return write_outcome(unit, results_root, latency_rows, model_row, layer_rows, sample_rows,
                         class_rows, before_models=timed)


WORK_SEED = 17


def work_step(unit: Unit, loaded: LoadedModel, q: Quantized, request: QuantizeRequest,
              inputs: UnitInputs) -> tuple[RowPart | None, str | None]:
    """A detector's work beside its reference's (worker/evaluate/work.py; a model with
    outputs.decoder counted after decoding) on the first
    evaluation images, or seeded synthetic scenes; a failure is a note, not a failed unit."""
    from functools import partial

    from qbench.evaluate.work import WORK_IMAGES, compare_work

    if inputs.dataset is not None:
        images = inputs.dataset.evaluation_set.images[:WORK_IMAGES]
    else:
        images = unit_to_input(synth_images(WORK_IMAGES, loaded.input_size, WORK_SEED),
                               inputs.pre.spec)
    ref_mode = choose_reference(unit.benchmark.reference, loaded.source)
    detect = None
    if loaded.kind.name != "detection":  # raw outputs: counted after the manifest's decoder
        from qbench.evaluate.decoded import decoded_predictions

        detect = partial(decoded_predictions, loaded, unit.model.outputs)
    try:
        reference = q if ref_mode == unit.mode else quantize(loaded, ref_mode, request)
        return compare_work(q, reference, ref_mode, images.to(unit.device), detect), None
    except Exception as exc:
        return None, f"work not counted: {_one_line(exc)}"


def inspect_folder(root: Path, unit: Unit) -> Path:
    from qbench.report import report_folder

    return report_folder(root, unit.job_id) / "inspect" / f"{unit.model.id}-{unit.mode}-{unit.device}"


def inspect_step(unit: Unit, loaded: LoadedModel, q: Quantized, base: dict[str, Any],
                 root: Path, inputs: UnitInputs) -> tuple[list[dict[str, Any]], str | None]:
    """Layer-by-layer differences and pictures; a failure here is a note, not a failed unit."""
    from qbench.inspect import inspect_unit

    if inputs.dataset is not None:
        images = inputs.dataset.evaluation_set.images[: unit.inspect.images]
    else:
        images = unit_to_input(synth_images(unit.inspect.images, loaded.input_size, INSPECT_SEED),
                               inputs.pre.spec)
    try:
        rows, _ = inspect_unit(loaded, q, images, unit.inspect.layers, inspect_folder(root, unit),
                               label=unit.mode)
    except Exception as exc:
        return [], f"inspection failed: {_one_line(exc)}"
    return [{**base, **r} for r in rows], None


def write_outcome(unit: Unit, root: Path, latency_rows: list[dict[str, Any]],
                  model_row: dict[str, Any],
                  layer_rows: list[dict[str, Any]] | None = None,
                  sample_rows: list[dict[str, Any]] | None = None,
                  class_rows: list[dict[str, Any]] | None = None,
                  before_models: Callable[[dict[str, Any]], None] | None = None) -> UnitOutcome:
    """Models last: a models row means the unit's other files are complete.

    A table with no rows removes that unit's earlier file, so a retry that failed early leaves
    no rows of an earlier attempt behind.
    """
    files = []
    for table, rows in (("latency", latency_rows), ("layers", layer_rows or []),
                        ("samples", sample_rows or []), ("class_metrics", class_rows or [])):
        if rows:
            files.append(str(write_rows(root, table, unit.job_date, unit.job_id, unit.unit_id, rows)))
        else:
            unit_file(root, table, unit.job_date, unit.job_id, unit.unit_id).unlink(missing_ok=True)
    if before_models is not None:
        before_models(model_row)
    files.append(str(write_rows(root, "models", unit.job_date, unit.job_id, unit.unit_id,
                                [model_row])))
    return UnitOutcome(unit.unit_id, model_row["status"], model_row.get("error"), latency_rows,
                       model_row, files)
