"""Per-iteration wall-clock latency and its summary statistics."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

Device = str | torch.device


def device_sync(device: Device) -> Callable[[], None]:
    """The function that waits for queued work on `device`, chosen once per tracker.

    CUDA kernels run asynchronously: without a sync the timer would measure the launch only.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    if dev.type == "cpu":
        return lambda: None
    # A silent no-op on another accelerator would report launch times as latency.
    raise ValueError(f"unsupported device {str(dev)!r}: expected cpu or cuda")


@dataclass(frozen=True)
class Latency:
    """Summary of per-iteration latencies, in milliseconds.

    `std_ms` is the population standard deviation (ddof=0); percentiles use numpy's default
    linear interpolation. The raw values are kept so that several runs can be aggregated.
    """

    count: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    values_ms: tuple[float, ...] = field(repr=False, compare=False)

    @classmethod
    def from_seconds(cls, values: Iterable[float]) -> Latency:
        ms = np.asarray(list(values), dtype=np.float64) * 1000.0
        if ms.size == 0:
            raise ValueError("no latency values to summarise")
        p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
        return cls(
            count=int(ms.size),
            mean_ms=float(ms.mean()),
            std_ms=float(ms.std()),
            min_ms=float(ms.min()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p95_ms=float(p95),
            p99_ms=float(p99),
            values_ms=tuple(float(v) for v in ms),
        )

    @classmethod
    def aggregate(cls, latencies: Sequence[Latency]) -> Latency:
        """Statistics over the pooled raw values (not an average of percentiles)."""
        return cls.from_seconds(v / 1000.0 for lat in latencies for v in lat.values_ms)

    def throughput(self, batch_size: int) -> float:
        """Items per second from the median latency.

        The median, not the mean: one GC pause or page fault must not move the throughput.
        """
        if self.p50_ms <= 0.0:
            return math.inf
        return batch_size * 1000.0 / self.p50_ms


class LatencyTracker:
    """Times each `with tracker.track():` block; a block that raises is not recorded."""

    def __init__(self, device: Device) -> None:
        self._sync = device_sync(device)
        self._values_s: list[float] = []
        self._sum_s = 0.0

    @contextmanager
    def track(self) -> Iterator[None]:
        self._sync()  # work queued before the block is not this iteration's
        start = time.perf_counter()
        yield
        self._sync()
        took = time.perf_counter() - start
        self._values_s.append(took)
        self._sum_s += took

    @property
    def count(self) -> int:
        return len(self._values_s)

    @property
    def elapsed_s(self) -> float:
        """Measured time so far (the sum of the recorded iterations)."""
        return self._sum_s

    @property
    def values_s(self) -> tuple[float, ...]:
        return tuple(self._values_s)

    def latency(self) -> Latency:
        return Latency.from_seconds(self._values_s)
