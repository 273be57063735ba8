"""qbench.measure: latency statistics, memory samplers, OOM handling, environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import torch

from qbench.measure import (
    BatchResult,
    CudaMemoryTracker,
    Latency,
    LatencyTracker,
    MemoryTracker,
    NvmlSampler,
    RssSampler,
    environment_fingerprint,
    is_oom,
    measure_batch,
)

MB = 1 << 20
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --- latency ---


def test_latency_statistics_match_numpy():
    seconds = [0.010, 0.012, 0.011, 0.030, 0.009, 0.015, 0.010, 0.050, 0.011, 0.013]
    lat = Latency.from_seconds(seconds)
    ms = np.array(seconds) * 1000
    assert lat.count == 10
    for q, got in [(50, lat.p50_ms), (90, lat.p90_ms), (95, lat.p95_ms), (99, lat.p99_ms)]:
        assert got == pytest.approx(np.percentile(ms, q))
    assert lat.mean_ms == pytest.approx(ms.mean())
    assert lat.std_ms == pytest.approx(ms.std())
    assert lat.min_ms == pytest.approx(9.0)


def test_latency_rejects_empty():
    with pytest.raises(ValueError):
        Latency.from_seconds([])


def test_throughput_uses_median():
    lat = Latency.from_seconds([0.010, 0.020, 0.100])  # median 20 ms, mean 43.3 ms
    assert lat.throughput(4) == pytest.approx(4 / 0.020)


def test_aggregate_pools_raw_values():
    a, b = Latency.from_seconds([0.001, 0.002]), Latency.from_seconds([0.003, 0.010])
    assert Latency.aggregate([a, b]) == Latency.from_seconds([0.001, 0.002, 0.003, 0.010])


def test_tracker_collects_one_value_per_block_and_skips_failures():
    tracker = LatencyTracker("cpu")
    for _ in range(7):
        with tracker.track():
            sum(range(1000))
    with pytest.raises(ZeroDivisionError), tracker.track():
        1 / 0  # noqa: B018
    lat = tracker.latency()
    assert lat.count == tracker.count == 7
    assert all(v > 0 for v in lat.values_ms)


def test_unsupported_device_is_refused():
    with pytest.raises(ValueError):
        LatencyTracker("meta")


# --- RSS sidecar ---


def test_rss_sampler_sees_a_transient_peak():
    baseline = psutil.Process().memory_info().rss
    sampler = RssSampler(interval_s=0.002)
    with sampler.track():
        block = np.ones(200 * MB // 8)  # np.ones writes every page, so they are resident
        time.sleep(0.2)
        del block  # freed before the block ends: only a sample taken during it sees the peak
    assert sampler.peak_bytes is not None
    assert sampler.peak_bytes - baseline > 150 * MB


def test_rss_sampler_counts_children():
    baseline = psutil.Process().memory_info().rss
    code = "import sys; b = bytearray(b'x') * (200 << 20); print('up', flush=True); sys.stdin.read()"
    sampler = RssSampler(interval_s=0.002)
    with sampler.track():
        child = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "up"
        time.sleep(0.3)  # past the sidecar's ~100 ms refresh of the child list
        child.communicate("")
    assert sampler.peak_bytes - baseline > 150 * MB


def test_rss_sidecar_is_a_separate_process_and_exits():
    sampler = RssSampler()
    with sampler.track():
        pid = sampler.sidecar_pid
        assert pid is not None and pid != os.getpid()
        assert psutil.Process(pid).ppid() == os.getpid()
    assert not psutil.pid_exists(pid)
    assert sampler.peak_bytes > 0


def test_rss_sampler_reports_peak_when_block_raises():
    sampler = RssSampler()
    with pytest.raises(MemoryError), sampler.track():
        raise MemoryError
    assert sampler.peak_bytes > 0
    assert not psutil.pid_exists(sampler.sidecar_pid)


# --- NVML / CUDA ---


def test_nvml_sampler_returns_none_when_nvml_fails(monkeypatch):
    import pynvml

    def broken_init():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", broken_init)
    sampler = NvmlSampler(0)
    with sampler.track():
        pass
    assert sampler.peak_bytes is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_nvml_sampler_without_gpu_is_none():
    sampler = NvmlSampler(0)
    with sampler.track():
        pass
    assert sampler.peak_bytes is None


def test_memory_tracker_on_cpu_has_no_cuda_fields():
    tracker = MemoryTracker("cpu")
    with tracker.track():
        pass
    peaks = tracker.peaks()
    assert peaks.rss_peak_bytes > 0
    assert peaks.cuda_max_allocated_bytes is None
    assert peaks.cuda_max_reserved_bytes is None
    assert peaks.nvml_used_peak_bytes is None


@needs_gpu
@pytest.mark.gpu
def test_cuda_tracker_sees_allocation_and_resets():
    tracker = CudaMemoryTracker("cuda")
    with tracker.track():
        x = torch.empty(64 * MB, dtype=torch.uint8, device="cuda")
        del x
    assert tracker.max_allocated_bytes >= 64 * MB
    assert tracker.max_reserved_bytes >= tracker.max_allocated_bytes
    with tracker.track():
        pass
    assert tracker.max_allocated_bytes < 64 * MB  # the previous peak was reset


@needs_gpu
@pytest.mark.gpu
def test_nvml_sampler_sees_device_memory():
    sampler = NvmlSampler(torch.cuda.current_device())
    with sampler.track():
        x = torch.ones(64 * MB, dtype=torch.uint8, device="cuda")
        torch.cuda.synchronize()
    del x
    assert sampler.peak_bytes > 64 * MB


@needs_gpu
@pytest.mark.gpu
def test_measure_batch_on_cuda_fills_every_peak():
    a = torch.randn(512, 512, device="cuda")
    result = measure_batch(lambda: a @ a, "cuda", warmup=2, iterations=5)
    assert result.status == "ok" and result.latency.count == 5
    mem = result.memory
    assert mem.rss_peak_bytes > 0 and mem.nvml_used_peak_bytes > 0
    assert mem.cuda_max_allocated_bytes > 0 and mem.cuda_max_reserved_bytes > 0


@needs_gpu
@pytest.mark.gpu
def test_measure_batch_real_cuda_oom():
    def step():
        torch.empty(1 << 50, dtype=torch.uint8, device="cuda")  # 1 PiB

    result = measure_batch(step, "cuda", warmup=0, iterations=3)
    assert result.status == "oom" and "out of memory" in result.error.lower()


# --- measure_batch ---


def test_measure_batch_ok_counts_calls_and_progress():
    calls, seen = [], []
    result = measure_batch(
        lambda: calls.append(1), "cpu", warmup=3, iterations=10,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert isinstance(result, BatchResult)
    assert result.status == "ok" and result.error is None
    assert len(calls) == 13
    assert result.latency.count == 10
    assert seen == [(i, 13) for i in range(1, 14)]
    assert result.memory.rss_peak_bytes > 0
    assert result.memory.cuda_max_allocated_bytes is None


@pytest.mark.parametrize(
    "exc",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        MemoryError("Unable to allocate 1.00 EiB"),
        RuntimeError("CUDA error: out of memory"),
    ],
)
def test_measure_batch_turns_oom_into_status(exc):
    def step():
        raise exc

    result = measure_batch(step, "cpu", warmup=0, iterations=5)
    assert result.status == "oom"
    assert result.latency is None
    assert type(exc).__name__ in result.error
    assert result.memory.rss_peak_bytes > 0  # the failing timed loop was still tracked


def test_measure_batch_real_cpu_allocation_failure():
    # 1 EiB exceeds any address space, whatever the kernel's overcommit policy.
    result = measure_batch(lambda: torch.empty(1 << 60, dtype=torch.uint8), "cpu", 0, 2)
    assert result.status == "oom"
    assert "allocate" in result.error


def test_measure_batch_oom_in_warmup():
    def step():
        raise MemoryError("warm-up blew up")

    result = measure_batch(step, "cpu", warmup=2, iterations=5)
    assert result.status == "oom" and result.memory.rss_peak_bytes is None


def test_measure_batch_reraises_other_errors():
    def step():
        raise ValueError("expected 4 dims")

    with pytest.raises(ValueError, match="expected 4 dims"):
        measure_batch(step, "cpu", warmup=0, iterations=5)


def test_is_oom_ignores_unrelated_errors():
    assert not is_oom(ValueError("shape mismatch"))
    assert is_oom(Exception("[ONNXRuntimeError] Failed to allocate memory for buffer"))


# --- environment ---

ENV_KEYS = {
    "torch_version", "torchvision_version", "qbench_version", "onnxruntime_version",
    "openvino_version",
    "python_version", "cpu_model", "cpu_count", "threads", "gpu_name", "gpu_driver", "host",
    "env_fingerprint", "cpu_isa", "cpu_family", "cpu_model_number",
}


def test_environment_fingerprint_keys_and_stable_hash():
    env = environment_fingerprint()
    assert set(env) == ENV_KEYS
    assert env["torch_version"] == torch.__version__
    assert env["threads"] == torch.get_num_threads()
    if not torch.cuda.is_available():
        assert env["gpu_name"] is None and env["gpu_driver"] is None
    assert env["env_fingerprint"] == environment_fingerprint()["env_fingerprint"]


def test_fingerprint_ignores_host_but_not_threads(monkeypatch):
    import qbench.measure as measure

    before = environment_fingerprint()["env_fingerprint"]
    monkeypatch.setattr(measure.socket, "gethostname", lambda: "elsewhere")
    assert environment_fingerprint()["env_fingerprint"] == before
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert environment_fingerprint()["env_fingerprint"] != before
    finally:
        torch.set_num_threads(threads)


def test_fingerprint_tells_apart_cpus_with_and_without_vnni(monkeypatch):
    """Same model name, different int8 ISA: different fingerprints (no like-for-like compare)."""
    import qbench.measure as measure
    from qbench.measure.machine import CpuIsa

    vnni = CpuIsa(("avx2", "avx512f", "avx512_vnni"), 25, 17)
    avx2 = CpuIsa(("avx2",), 25, 17)
    monkeypatch.setattr(measure, "isa_columns", lambda: {
        "cpu_isa": " ".join(vnni.flags), "cpu_family": 25, "cpu_model_number": 17})
    with_vnni = environment_fingerprint()
    monkeypatch.setattr(measure, "isa_columns", lambda: {
        "cpu_isa": " ".join(avx2.flags), "cpu_family": 25, "cpu_model_number": 17})
    without = environment_fingerprint()
    assert with_vnni["cpu_model"] == without["cpu_model"]
    assert with_vnni["env_fingerprint"] != without["env_fingerprint"]
    assert "avx512_vnni" in with_vnni["cpu_isa"] and without["cpu_isa"] == "avx2"
