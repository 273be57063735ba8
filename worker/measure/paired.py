"""Paired timing: the reference and the unit's model interleaved in one process.

The two models run in alternating blocks, one block of each per pair, the reference's block
first in even pairs and the unit's first in odd ones (ABBA), so load from the rest of the
machine and CPU frequency hit both alike and neither always runs second. A block is one
untimed settle call, then the timed calls: the first call after the other model finds the
caches full of that model's weights, so timing it would charge the smaller model for the
larger one's footprint (a 2 ms int8 call ran 15-25% slower right after a 17 ms fp32 call than
right after itself, and alternating that made its samples bimodal and its median jumpy).
Timed call j of the unit's block pairs with timed call j of the reference's block. The speedup
is the median over the pairs of reference / unit, with a seeded bootstrap CI that resamples
pairs (qbench.measure.stats.paired_ratio_ci).

A unit's paired pass runs in rounds (`benchmark.rounds`): each round times every batch size
once, with its share of the sampling plan (`round_plan`), so each batch size's pairs come from
moments spread over the whole pass. The CI then resamples rounds before pairs: the machine's
drift between rounds, which no single stretch of pairs shows, is in the interval.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qbench.measure.latency import Latency, LatencyTracker
from qbench.measure.machine import LoadSampler
from qbench.measure.sampling import SamplingPlan
from qbench.measure.stats import RatioCI, paired_ratio_ci

REFERENCE, UNIT = "reference", "unit"
BLOCK_TIMED = 2  # timed calls per block after its settle call: a paired pass costs 1.5x its timed calls


@dataclass
class PairedResult:
    status: str  # ok | oom | error
    reference_s: tuple[float, ...] = ()
    unit_s: tuple[float, ...] = ()
    first: tuple[str, ...] = ()  # which side's block ran first, per pair
    calls: list[str] = field(default_factory=list, repr=False)  # every call, warm-up included
    error: str | None = None
    rounds: tuple[int, ...] = ()  # the round each pair was timed in (empty: one round)

    @property
    def pairs(self) -> int:
        return len(self.unit_s)

    def speedup(self) -> RatioCI | None:
        """Median over the pairs of reference / unit, with its 95% bootstrap CI."""
        if self.status != "ok" or not self.unit_s:
            return None
        return paired_ratio_ci(self.reference_s, self.unit_s, rounds=self.rounds or None)

    def latency(self, side: str) -> Latency | None:
        values = self.reference_s if side == REFERENCE else self.unit_s
        return Latency.from_seconds(values) if values else None


def round_plan(plan: SamplingPlan, rounds: int) -> SamplingPlan:
    """One round's share of a batch size's plan: the counts rounded up, the times divided."""
    if rounds <= 1:
        return plan
    return SamplingPlan(
        iterations=math.ceil(plan.iterations / rounds), min_seconds=plan.min_seconds / rounds,
        max_iterations=None if plan.max_iterations is None else math.ceil(plan.max_iterations / rounds),
        max_seconds=None if plan.max_seconds is None else plan.max_seconds / rounds)


def combine_rounds(results: Sequence[PairedResult]) -> PairedResult:
    """One batch size's rounds as one result, each pair labelled with its round. A round that
    did not finish (oom) makes the whole result that status: a speedup from the rounds before
    it would describe a different run."""
    for r in results:
        if r.status != "ok":
            return r
    ref: list[float] = []
    unit: list[float] = []
    first: list[str] = []
    calls: list[str] = []
    labels: list[int] = []
    for k, r in enumerate(results):
        ref += r.reference_s
        unit += r.unit_s
        first += r.first
        calls += [f"round{k}:{c}" for c in r.calls]
        labels += [k] * len(r.unit_s)
    return PairedResult("ok", tuple(ref), tuple(unit), tuple(first), calls,
                        rounds=tuple(labels) if len(results) > 1 else ())


def measure_paired(unit_step: Callable[[], Any], reference_step: Callable[[], Any],
                   device: str | torch.device, warmup: int, plan: SamplingPlan,
                   load: LoadSampler | None = None,
                   is_oom: Callable[[BaseException], bool] | None = None,
                   block_timed: int = BLOCK_TIMED) -> PairedResult:
    """Warm both up (alternating), then time blocks until `plan` is met by both sides.

    The plan's minimum and cap apply to each side's own measured time and timed calls (a block
    is cut short rather than run past `max_iterations`), so a paired batch size costs about
    (1 + 1/block_timed) times two unpaired runs. Out of memory gives status "oom"; other
    exceptions propagate (the caller turns them into the row's pairing note).
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
        while True:
            count = timers[UNIT].count
            elapsed = max(timers[UNIT].elapsed_s, timers[REFERENCE].elapsed_s)
            timed = 0
            while timed < block_timed and plan.more(count + timed, elapsed):
                timed += 1
            if timed == 0:
                break
            order = (REFERENCE, UNIT) if i % 2 == 0 else (UNIT, REFERENCE)
            first += [order[0]] * timed
            for side in order:
                calls.append(f"settle:{side}")
                steps[side]()
                for _ in range(timed):
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
