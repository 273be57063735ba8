"""Memory peaks during a block: process RSS (sidecar), torch CUDA allocator, NVML device.

torch is imported lazily: this file also runs as the RSS sidecar script, which must start fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryPeaks:
    """Peaks in bytes; None where not measured (CUDA fields on CPU, NVML unavailable)."""

    rss_peak_bytes: int | None = None
    cuda_max_allocated_bytes: int | None = None
    cuda_max_reserved_bytes: int | None = None
    nvml_used_peak_bytes: int | None = None


# --- RSS: sampled by a separate process, so sampling never holds this process's GIL ---


def _tree_rss(target: psutil.Process, children: list[psutil.Process]) -> int:
    total = target.memory_info().rss  # NoSuchProcess propagates: the target is gone
    for child in children:
        with contextlib.suppress(psutil.Error):  # a child may exit between listing and reading
            total += child.memory_info().rss
    return total


def _sidecar(pid: int, interval_s: float, include_children: bool) -> None:
    """Sample until stdin yields a line or EOF (EOF also covers a dead parent); print peak."""
    target, me = psutil.Process(pid), os.getpid()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    # Listing children scans /proc; refresh it every ~100 ms rather than on every sample.
    refresh_every = max(1, round(0.1 / interval_s))
    children: list[psutil.Process] = []
    peak, tick = 0, 0
    with contextlib.suppress(psutil.NoSuchProcess):
        while True:
            if include_children and tick % refresh_every == 0:
                children = [c for c in target.children(recursive=True) if c.pid != me]
            peak = max(peak, _tree_rss(target, children))
            if tick == 0:
                print("ready", flush=True)
            if stop.is_set():
                break
            stop.wait(interval_s)
            tick += 1
    print(peak, flush=True)


class RssSampler:
    """Peak RSS of process `pid` (default: this one), children included, during `track()`."""

    def __init__(
        self, pid: int | None = None, interval_s: float = 0.005, include_children: bool = True
    ) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.interval_s = interval_s
        self.include_children = include_children
        self.peak_bytes: int | None = None
        self.sidecar_pid: int | None = None

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        self.peak_bytes = None
        # Run this file by path: no package import (torch) in the sidecar, no re-import of
        # the caller's __main__ as multiprocessing's spawn would do.
        args = [str(self.pid), str(self.interval_s), str(int(self.include_children))]
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.sidecar_pid = proc.pid
        if proc.stdout.readline().strip() != "ready":  # first sample taken before the block
            _, err = proc.communicate()
            raise RuntimeError(f"RSS sidecar failed to start: {err.strip()}")
        try:
            yield
        finally:
            self.peak_bytes = self._stop(proc)

    @staticmethod
    def _stop(proc: subprocess.Popen[str]) -> int | None:
        # Never raise here: this runs while an OOM may be propagating from the block.
        try:
            out, err = proc.communicate("stop\n", timeout=10)
            return int(out.strip())
        except (subprocess.TimeoutExpired, ValueError, OSError) as exc:
            proc.kill()
            proc.communicate()
            log.warning("RSS sidecar gave no peak: %r", exc)
            return None


# --- CUDA: torch's caching allocator ---


class CudaMemoryTracker:
    """torch allocator peaks on one CUDA device, reset when `track()` starts."""

    def __init__(self, device: Any) -> None:
        import torch

        self.device = torch.device(device)
        self.max_allocated_bytes: int | None = None
        self.max_reserved_bytes: int | None = None

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        import torch

        # Drop cached blocks first, so the reserved peak is this block's, not a leftover.
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            yield
        finally:
            self.max_allocated_bytes = torch.cuda.max_memory_allocated(self.device)
            self.max_reserved_bytes = torch.cuda.max_memory_reserved(self.device)


# --- NVML: device memory used (all processes on the device, not only torch's allocator) ---


@contextlib.contextmanager
def nvml_session() -> Iterator[Any]:
    """Yield the initialised pynvml module, or None where NVML is absent or fails."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver errors
        log.debug("NVML unavailable: %r", exc)
        yield None
        return
    try:
        yield pynvml
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def nvml_driver_version() -> str | None:
    with nvml_session() as nvml:
        if nvml is None:
            return None
        try:
            version = nvml.nvmlSystemGetDriverVersion()
        except nvml.NVMLError:
            return None
        return version.decode() if isinstance(version, bytes) else version


def _nvml_handle(nvml: Any, cuda_index: int) -> Any:
    """NVML handle of a CUDA device: by UUID, since CUDA_VISIBLE_DEVICES renumbers CUDA only."""
    import torch

    if torch.cuda.is_available():
        uuid = str(torch.cuda.get_device_properties(cuda_index).uuid)
        uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
        with contextlib.suppress(nvml.NVMLError):
            return nvml.nvmlDeviceGetHandleByUUID(uuid)
    # Without a CUDA context (or an unknown UUID) the indices are the best guess.
    return nvml.nvmlDeviceGetHandleByIndex(cuda_index)


class NvmlSampler:
    """Peak NVML 'used' memory of one CUDA device, polled in a thread; None without NVML."""

    def __init__(self, cuda_index: int = 0, interval_s: float = 0.01) -> None:
        self.cuda_index = cuda_index
        self.interval_s = interval_s
        self.peak_bytes: int | None = None

    def _sample(self, nvml: Any, handle: Any) -> bool:
        try:
            used = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
        except nvml.NVMLError as exc:
            log.warning("NVML sampling stopped: %r", exc)
            return False
        self.peak_bytes = used if self.peak_bytes is None else max(self.peak_bytes, used)
        return True

    def _poll(self, nvml: Any, handle: Any, stop: threading.Event) -> None:
        while self._sample(nvml, handle) and not stop.wait(self.interval_s):
            pass

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        self.peak_bytes = None
        with nvml_session() as nvml:
            handle = None
            if nvml is not None:
                try:
                    handle = _nvml_handle(nvml, self.cuda_index)
                except Exception as exc:  # NVMLError, or torch failing to query the device
                    log.warning("no NVML handle for cuda:%d: %r", self.cuda_index, exc)
            if handle is None:
                yield
                return
            stop = threading.Event()
            poller = threading.Thread(target=self._poll, args=(nvml, handle, stop), daemon=True)
            poller.start()
            try:
                yield
            finally:
                stop.set()
                poller.join()
                self._sample(nvml, handle)  # at least one sample, however short the block


# --- composition ---


class MemoryTracker:
    """RSS always; torch allocator and NVML peaks too when `device` is CUDA."""

    def __init__(self, device: Any) -> None:
        import torch

        dev = torch.device(device)
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"unsupported device {str(dev)!r}: expected cpu or cuda")
        self.rss = RssSampler()
        self.cuda: CudaMemoryTracker | None = None
        self.nvml: NvmlSampler | None = None
        if dev.type == "cuda":
            index = torch.cuda.current_device() if dev.index is None else dev.index
            self.cuda = CudaMemoryTracker(torch.device("cuda", index))
            self.nvml = NvmlSampler(index)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for tracker in (self.cuda, self.nvml, self.rss):
                if tracker is not None:
                    stack.enter_context(tracker.track())
            yield

    def peaks(self) -> MemoryPeaks:
        return MemoryPeaks(
            rss_peak_bytes=self.rss.peak_bytes,
            cuda_max_allocated_bytes=self.cuda.max_allocated_bytes if self.cuda else None,
            cuda_max_reserved_bytes=self.cuda.max_reserved_bytes if self.cuda else None,
            nvml_used_peak_bytes=self.nvml.peak_bytes if self.nvml else None,
        )


if __name__ == "__main__":
    _sidecar(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1")
