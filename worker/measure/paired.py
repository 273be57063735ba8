"""Paired timing: the reference and the unit's model interleaved in one process.

Pair i times both models back to back on the same batch, reference first on even pairs and the
unit's model first on odd ones (ABBA), so load from the rest of the machine, CPU frequency and
cache state hit both alike, and neither always runs second. The speedup is the ratio of the
medians of the paired samples, median(reference) / median(unit), with a seeded bootstrap CI
that resamples pairs (worker.measure.stats.paired_ratio_ci).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from worker.measure.latency import Latency, LatencyTracker
from worker.measure.machine import LoadSampler
from worker.measure.sampling import SamplingPlan
from worker.measure.stats import RatioCI, paired_ratio_ci

REFERENCE, UNIT = "reference", "unit"


@dataclass
class PairedResult:
    status: str  # ok | oom | error
    reference_s: tuple[float, ...] = ()
    unit_s: tuple[float, ...] = ()
    first: tuple[str, ...] = ()  # which side ran first in each pair
    calls: list[str] = field(default_factory=list, repr=False)  # every call, warm-up included
    error: str | None = None

    @property
    def pairs(self) -> int:
        return len(self.unit_s)

    def speedup(self) -> RatioCI | None:
        """median(reference) / median(unit) over the pairs, with its 95% bootstrap CI."""
        if self.status != "ok" or not self.unit_s:
            return None
        return paired_ratio_ci(self.reference_s, self.unit_s)

    def latency(self, side: str) -> Latency | None:
        values = self.reference_s if side == REFERENCE else self.unit_s
        return Latency.from_seconds(values) if values else None


def measure_paired(unit_step: Callable[[], Any], reference_step: Callable[[], Any],
                   device: str | torch.device, warmup: int, plan: SamplingPlan,
                   load: LoadSampler | None = None,
                   is_oom: Callable[[BaseException], bool] | None = None) -> PairedResult:
    """Warm both up (alternating), then time pairs until `plan` is met by both sides.

    The plan's minimum and cap apply to each side's own measured time, so a paired batch size
    costs about twice its unpaired run. Out of memory gives status "oom"; other exceptions
    propagate (the caller turns them into the row's pairing note).
    """
    steps = {REFERENCE: reference_step, UNIT: unit_step}
    timers = {REFERENCE: LatencyTracker(device), UNIT: LatencyTracker(device)}
    calls: list[str] = []
    first: list[str] = []
    try:
        for i in range(warmup):
            for side in (REFERENCE, UNIT) if i % 2 == 0 else (UNIT, REFERENCE):
                calls.append(f"warmup:{side}")
                steps[side]()
        if load:
            load.sample()
        i = 0
        while plan.more(timers[UNIT].count,
                        max(timers[UNIT].elapsed_s, timers[REFERENCE].elapsed_s)):
            order = (REFERENCE, UNIT) if i % 2 == 0 else (UNIT, REFERENCE)
            first.append(order[0])
            for side in order:
                calls.append(side)
                with timers[side].track():
                    steps[side]()
            if load:
                load.maybe_sample()
            i += 1
    except Exception as exc:
        if is_oom is None or not is_oom(exc):
            raise
        gc.collect()
        return PairedResult("oom", calls=calls, error=f"{type(exc).__name__}: {exc}")
    return PairedResult("ok", timers[REFERENCE].values_s, timers[UNIT].values_s, tuple(first),
                        calls)
