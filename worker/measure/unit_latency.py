"""A unit's latency rows and raw samples: every batch size alone, then paired with the reference.

Order, and why:
1. Unpaired pass, every batch size, the unit's model alone: latency percentiles, memory peaks
   (the sidecar RSS and CUDA peaks), load samples. The reference is not built yet, so a
   reference that is not the loader's own module (compiled fp32, an ORT session) cannot add
   to the unit's memory peaks.
2. The reference is built (once), then each batch size is timed again, interleaved with it
   (qbench.measure.paired), one batch size at a time, in `benchmark.rounds` rounds over the
   batch sizes (each round a share of the plan). The reference is freed at the end.
A unit whose mode is the reference gets pairing "reference"; with `benchmark.pairing: off`
the paired columns stay null; with `side_by_side` (the default) step 2 is left to the model's
side-by-side timing after its units (worker/time_model.py), which fills them.
"""

from __future__ import annotations

import datetime as dt
import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from qbench.measure import BatchResult, is_oom, measure_batch
from qbench.measure.machine import LoadSampler
from qbench.measure.paired import (
    REFERENCE,
    UNIT,
    PairedResult,
    combine_rounds,
    measure_paired,
    round_plan,
)
from qbench.measure.sampling import SamplingPlan
from qbench.measure.stats import coefficient_of_variation, is_stable
from qbench.modes import mode_source_problem

# (step description, done, total)
Progress = Callable[[str, int, int], None]


@dataclass
class LatencyOutcome:
    rows: list[dict[str, Any]] = field(default_factory=list)  # `latency` table
    samples: list[dict[str, Any]] = field(default_factory=list)  # `samples` table


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:500]


def bench_batch(pool: torch.Tensor, batch_size: int, device: str) -> torch.Tensor:
    """A batch of the pool's distinct images, tiled to batch_size, on the device."""
    reps = -(-batch_size // pool.shape[0])
    return pool.repeat(reps, 1, 1, 1)[:batch_size].contiguous().to(device)


def sampling_plan(benchmark: Any) -> SamplingPlan:
    return SamplingPlan(benchmark.iterations, benchmark.min_seconds, benchmark.max_iterations,
                        benchmark.max_seconds)


def latency_row_of(base: dict[str, Any], benchmark: Any, input_size: tuple[int, int], batch_size: int,
         result: BatchResult, load: LoadSampler, reference_mode: str) -> dict[str, Any]:
    lat, mem = result.latency, result.memory
    h, w = input_size
    cv = coefficient_of_variation(lat.values_ms) if lat else None
    return {
        **base, "batch_size": batch_size, "input_h": h, "input_w": w,
        "warmup": benchmark.warmup, "iterations": benchmark.iterations,
        "latency_ms_p50": lat.p50_ms if lat else None,
        "latency_ms_p90": lat.p90_ms if lat else None,
        "latency_ms_p95": lat.p95_ms if lat else None,
        "latency_ms_p99": lat.p99_ms if lat else None,
        "latency_ms_mean": lat.mean_ms if lat else None,
        "latency_ms_std": lat.std_ms if lat else None,
        "latency_ms_min": lat.min_ms if lat else None,
        "throughput_ips": lat.throughput(batch_size) if lat else None,
        "rss_peak_bytes": mem.rss_peak_bytes,
        "cuda_max_allocated_bytes": mem.cuda_max_allocated_bytes,
        "cuda_max_reserved_bytes": mem.cuda_max_reserved_bytes,
        "nvml_used_peak_bytes": mem.nvml_used_peak_bytes,
        "status": result.status, "error": result.error,
        "measured_at": dt.datetime.now(dt.UTC),
        "min_seconds": benchmark.min_seconds, "max_iterations": benchmark.max_iterations,
        "max_seconds": benchmark.max_seconds,
        "iterations_run": lat.count if lat else None,
        "measured_seconds": sum(lat.values_ms) / 1000.0 if lat else None,
        "latency_cv": cv, "stable": is_stable(cv), **load.columns(),
        "pairing": benchmark.pairing, "reference_mode": reference_mode,
    }


def _sample_rows(base: dict[str, Any], batch_size: int, kind: str, role: str,
                 values_ms: tuple[float, ...], reference_mode: str | None,
                 first: tuple[bool, ...] | None = None,
                 rounds: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    keep = {k: base.get(k) for k in ("job_id", "job_name", "unit_id", "model_id", "arch", "mode",
                                     "backend", "device", "threads", "env_fingerprint", "host")}
    return [{**keep, "batch_size": batch_size, "pass": kind, "role": role,
             "reference_mode": reference_mode, "iteration": i,
             "ran_first": first[i] if first else None,
             "round": (rounds[i] if rounds else 0) if kind == "paired" else None,
             "latency_ms": v}
            for i, v in enumerate(values_ms)]


def measure_unpaired(predict: Callable[[torch.Tensor], Any], pool: torch.Tensor, batch_size: int,
              device: str, benchmark: Any, load: LoadSampler) -> BatchResult:
    try:
        batch = bench_batch(pool, batch_size, device)
    except Exception as exc:
        if is_oom(exc):
            return BatchResult("oom", None, error=_one_line(exc))
        raise
    try:
        return measure_batch(lambda: predict(batch), device, benchmark.warmup,
                             benchmark.iterations, plan=sampling_plan(benchmark), load=load)
    except Exception as exc:  # this batch size fails; the others are still measured
        return BatchResult("error", None, error=_one_line(exc))


def apply_paired(row: dict[str, Any], paired: PairedResult) -> None:
    """The paired columns of one latency row, from one batch size's paired pass."""
    row["paired_iterations"] = paired.pairs
    if paired.status != "ok":
        row["pairing"] = f"failed: {paired.status} {paired.error or ''}".strip()[:500]
        return
    ci = paired.speedup()
    ref, own = paired.latency(REFERENCE), paired.latency(UNIT)
    row.update(reference_latency_ms_p50=ref.p50_ms if ref else None,
               paired_latency_ms_p50=own.p50_ms if own else None,
               speedup=ci.estimate if ci else None, speedup_ci_low=ci.low if ci else None,
               speedup_ci_high=ci.high if ci else None)


def choose_reference(requested: str, source: str) -> str:
    """The manifest's reference, or ort_fp32 for a model only ONNX Runtime can run."""
    if mode_source_problem(requested, source) and not mode_source_problem("ort_fp32", source):
        return "ort_fp32"
    return requested


@dataclass(frozen=True)
class LatencyJob:
    """What a unit's latency measurement needs besides its model and the reference."""

    mode: str
    device: str
    benchmark: Any  # the manifest's benchmark block (qbench.manifest.BenchmarkSpec)
    input_size: tuple[int, int]
    base: dict[str, Any]  # identity and environment columns of every row
    reference_mode: str | None = None  # None: benchmark.reference
    progress: Progress | None = None
    first_step: int = 0  # progress steps: where this part starts, and the unit's total
    total_steps: int = 0


def measure_unit_latency(predict: Callable[[torch.Tensor], Any],
                         build_reference: Callable[[], Callable[[torch.Tensor], Any]] | None,
                         pool: torch.Tensor, job: LatencyJob) -> LatencyOutcome:
    """Rows and samples for every batch size of one unit (see the module docstring).

    `build_reference()` returns the reference's predict; it is called only when pairing is on
    and this unit is not the reference itself. A reference that fails to build or run is a
    note in `pairing`, never a failed unit.
    """
    mode, device, benchmark, input_size, base = (job.mode, job.device, job.benchmark,
                                                 job.input_size, job.base)
    progress, step0, total_steps = job.progress, job.first_step, job.total_steps
    reference_mode = job.reference_mode
    say = progress or (lambda step, done, total: None)
    ref_mode = reference_mode or benchmark.reference
    out = LatencyOutcome()
    results: list[tuple[int, dict[str, Any], BatchResult, LoadSampler]] = []
    for i, bs in enumerate(benchmark.batch_sizes):
        say(f"measure batch {bs}", step0 + i, total_steps)
        load = LoadSampler()
        result = measure_unpaired(predict, pool, bs, device, benchmark, load)
        row = latency_row_of(base, benchmark, input_size, bs, result, load, ref_mode)
        results.append((bs, row, result, load))
        out.rows.append(row)
        if result.latency:
            out.samples += _sample_rows(base, bs, "unpaired", UNIT, result.latency.values_ms, None)
    is_reference = mode == ref_mode
    if is_reference:
        for row in out.rows:
            row["pairing"] = "reference"
    # side_by_side: the model's timing step fills the paired columns (worker/time_model.py)
    if benchmark.pairing in ("off", "side_by_side") or is_reference or build_reference is None:
        return out
    ok = [(bs, row, load) for bs, row, result, load in results if result.status == "ok"]
    if not ok:
        return out
    say(f"build reference {ref_mode}", step0 + len(results), total_steps)
    try:
        held = [build_reference()]  # a list, so that the finally below can drop it
    except Exception as exc:
        for _, row, _ in ok:
            row["pairing"] = f"failed: reference {ref_mode}: {_one_line(exc)}"
        return out
    rounds = max(1, getattr(benchmark, "rounds", 1))
    plan = round_plan(sampling_plan(benchmark), rounds)
    per_batch: dict[int, list[PairedResult]] = {bs: [] for bs, _, _ in ok}
    failed: set[int] = set()
    try:
        for r in range(rounds):
            for bs, row, load in ok:
                if bs in failed:
                    continue
                say(f"paired batch {bs}" + (f", round {r + 1}/{rounds}" if rounds > 1 else ""),
                    step0 + len(results), total_steps)
                batch = bench_batch(pool, bs, device)
                # later rounds warm up with one call per side: the blocks' settle calls do the rest
                warmup = benchmark.warmup if r == 0 else min(1, benchmark.warmup)
                try:
                    paired = measure_paired(lambda b=batch: predict(b), lambda b=batch: held[0](b),
                                            device, warmup, plan, load, is_oom)
                except Exception as exc:
                    row["pairing"] = f"failed: {_one_line(exc)}"
                    failed.add(bs)
                    continue
                finally:
                    del batch
                per_batch[bs].append(paired)
                if paired.status != "ok":
                    failed.add(bs)
        for bs, row, load in ok:
            if not per_batch[bs] or row.get("pairing", "").startswith("failed"):
                continue
            paired = combine_rounds(per_batch[bs])
            apply_paired(row, paired)
            row["paired_rounds"] = len(per_batch[bs]) if paired.status == "ok" else None
            row.update(load.columns())  # load over both passes of this batch size
            first = tuple(f == UNIT for f in paired.first)
            out.samples += _sample_rows(base, bs, "paired", UNIT, tuple(v * 1000 for v in paired.unit_s),
                                        ref_mode, first, paired.rounds)
            out.samples += _sample_rows(base, bs, "paired", REFERENCE,
                                        tuple(v * 1000 for v in paired.reference_s),
                                        ref_mode, tuple(not f for f in first), paired.rounds)
    finally:
        held.clear()
        gc.collect()
    return out
