"""Measure one batch size: latency percentiles and memory peaks; the run's environment."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import platform
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

import qbench
from qbench.backends import runtime_versions
from qbench.measure.latency import Latency, LatencyTracker, device_sync
from qbench.measure.machine import LoadSampler, isa_columns
from qbench.measure.memory import (
    CudaMemoryTracker,
    MemoryPeaks,
    MemoryTracker,
    NvmlSampler,
    RssSampler,
    nvml_driver_version,
)
from qbench.measure.sampling import SamplingPlan

__all__ = [
    "BatchResult",
    "CudaMemoryTracker",
    "Latency",
    "LatencyTracker",
    "LoadSampler",
    "MemoryPeaks",
    "MemoryTracker",
    "NvmlSampler",
    "RssSampler",
    "SamplingPlan",
    "device_sync",
    "environment_fingerprint",
    "is_oom",
    "measure_batch",
]

log = logging.getLogger(__name__)

Status = Literal["ok", "oom", "error"]

# Allocation failures that are not torch.OutOfMemoryError/MemoryError: torch's CPU allocator
# ("can't allocate memory"), ONNX Runtime (its exceptions are not RuntimeError), C++ bad_alloc.
_OOM_MARKERS = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "failed to allocate memory",
    "bad_alloc",
    "bad allocation",
)


@dataclass(frozen=True)
class BatchResult:
    status: Status
    latency: Latency | None  # None unless status is "ok"
    memory: MemoryPeaks = field(default_factory=MemoryPeaks)
    error: str | None = None


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, Exception) and any(m in str(exc).lower() for m in _OOM_MARKERS)


def measure_batch(
    step: Callable[[], Any],
    device: str | torch.device,
    warmup: int,
    iterations: int,
    progress: Callable[[int, int], None] | None = None,
    plan: SamplingPlan | None = None,
    load: LoadSampler | None = None,
) -> BatchResult:
    """Run `step` `warmup` times untimed, then timed and memory-tracked: `iterations` times, or
    as `plan` says (minimum time, caps). `load` takes machine-load samples between iterations.

    `progress(done, total)` follows every call of `step`, warm-up included (total is the
    planned count; a time-based plan may run more).
    Out of memory gives status "oom" (with the peaks reached so far); any other exception is
    re-raised: a bug, or a control-flow exception such as Celery's soft time limit, must
    reach the caller, which decides whether it becomes an "error" row.
    """
    if warmup < 0 or iterations < 1:
        raise ValueError(f"need warmup >= 0 and iterations >= 1, got {warmup}, {iterations}")
    plan = plan or SamplingPlan(iterations)
    timer = LatencyTracker(device)
    memory = MemoryTracker(device)
    total = warmup + (plan.upper_bound or plan.iterations)
    error: str | None = None
    try:
        for done in range(1, warmup + 1):
            step()
            if progress:
                progress(done, total)
        if load:
            load.sample()
        with memory.track():
            while plan.more(timer.count, timer.elapsed_s):
                with timer.track():
                    step()
                if load:
                    load.maybe_sample()
                if progress:
                    progress(warmup + timer.count, max(total, warmup + timer.count))
    except Exception as exc:
        if not is_oom(exc):
            raise
        error = f"{type(exc).__name__}: {exc}"
        log.warning("out of memory on %s: %s", device, error)
    if error is None:
        return BatchResult("ok", timer.latency(), memory.peaks())
    # Out of the except block, the traceback no longer pins the step's tensors: free them,
    # so the next (smaller) batch size starts from a clean allocator.
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return BatchResult("oom", None, memory.peaks(), error)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_fingerprint() -> dict[str, Any]:
    """What a result depends on, plus `env_fingerprint`: a hash of all of it except the host."""
    try:
        import torchvision

        torchvision_version: str | None = torchvision.__version__  # keeps the +cuXXX tag
    except ImportError:
        torchvision_version = None
    gpu = torch.cuda.is_available()
    env: dict[str, Any] = {
        "torch_version": torch.__version__,
        "torchvision_version": torchvision_version,
        "qbench_version": qbench.__version__,
        **runtime_versions(),  # onnxruntime_version: one `<backend>_version` per runtime
        "python_version": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        # int8 speed depends on these more than on the model name (VNNI, AMX): see machine.py
        **isa_columns(),
        "threads": torch.get_num_threads(),
        "gpu_name": torch.cuda.get_device_name() if gpu else None,
        "gpu_driver": nvml_driver_version() if gpu else None,
        "host": socket.gethostname(),
    }
    comparable = {k: v for k, v in env.items() if k != "host"}
    digest = hashlib.sha256(json.dumps(comparable, sort_keys=True).encode()).hexdigest()
    env["env_fingerprint"] = digest[:16]
    return env
