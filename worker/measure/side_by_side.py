"""Side-by-side timing: every variant of a model and its reference, round-robin in one process.

The paired pass (qbench.measure.paired) times one unit against the reference; here all of a
model's members (its variants on one device, and the reference once) take turns in cycles.
A cycle runs one block per member: an untimed settle call (the caches still hold the member
before it), then `block_timed` timed calls. The order rotates from cycle to cycle, and runs
backwards every other pass through the rotations, so each member takes every position and
follows different neighbours; a round starts the rotation where the last one's count left it.
Timed call j of member A's block and timed call j of member B's block in the same cycle form
a pair, for every two members: with N members, one pass gives N(N-1)/2 measured pairs where
N-1 paired passes gave only the N-1 pairs with the reference, and the reference is timed once
per cycle instead of once per variant.

Rounds are the paired pass's: each round times every batch size once with its share of the
sampling plan, and a pair's CI resamples rounds, then pairs (stats.paired_ratio_ci).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from qbench.measure.latency import Latency, LatencyTracker
from qbench.measure.machine import LoadSampler
from qbench.measure.paired import BLOCK_TIMED
from qbench.measure.sampling import SamplingPlan
from qbench.measure.stats import RatioCI, paired_ratio_ci


def cycle_order(names: Sequence[str], cycle: int) -> list[str]:
    """The members' order in one cycle: rotated by the cycle number, reversed on odd passes
    through the rotations (two members: AB, BA, BA, AB, like the paired pass's ABBA)."""
    n = len(names)
    shift = cycle % n
    order = list(names[shift:]) + list(names[:shift])
    return order[::-1] if (cycle // n) % 2 else order


@dataclass
class MemberSamples:
    """One member's timed calls at one batch size, in cycle order over the rounds."""

    values_s: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)  # the round of each timed call
    first: list[bool] = field(default_factory=list)  # its block opened the cycle
    status: str = "ok"  # ok | oom | error
    error: str | None = None

    def latency(self) -> Latency | None:
        return Latency.from_seconds(tuple(self.values_s)) if self.values_s else None


@dataclass
class SideBySide:
    """Every member's samples at one batch size; sample i of any two ok members is a pair."""

    members: dict[str, MemberSamples]
    calls: list[str] = field(default_factory=list, repr=False)  # every call, warm-up included

    def ok(self) -> list[str]:
        return [name for name, m in self.members.items() if m.status == "ok" and m.values_s]

    def pairs(self) -> int:
        ok = self.ok()
        return len(self.members[ok[0]].values_s) if ok else 0

    def ratio(self, name: str, over: str) -> RatioCI | None:
        """Speedup of `name` over `over`: median over the pairs of over / name, with its 95%
        two-stage bootstrap CI (rounds, then pairs)."""
        a, b = self.members.get(name), self.members.get(over)
        if a is None or b is None or name not in self.ok() or over not in self.ok():
            return None
        rounds = a.rounds if len(set(a.rounds)) > 1 else None
        return paired_ratio_ci(b.values_s, a.values_s, rounds=rounds)


def measure_side_by_side(steps: dict[str, Callable[[], Any]], device: str, warmup: int,
                         plan: SamplingPlan, *, round_index: int = 0,
                         into: SideBySide | None = None, load: LoadSampler | None = None,
                         is_oom: Callable[[BaseException], bool] | None = None,
                         block_timed: int = BLOCK_TIMED) -> SideBySide:
    """One round at one batch size: warm every member up, then cycles until `plan` is met by
    each member's own timed calls (counts and measured time, as the paired pass).

    `into` carries the earlier rounds; this round's samples are appended with `round_index`.
    A member that runs out of memory or raises is marked (oom/error) and leaves this batch
    size: the samples of this round are dropped for every member (they are pairs only while
    all ran), and the remaining members go on from the next round.
    """
    result = into or SideBySide({name: MemberSamples() for name in steps})
    live = [n for n in steps if result.members[n].status == "ok"]
    if len(live) < 2:
        return result
    timers = {n: LatencyTracker(device) for n in live}
    first: dict[str, list[bool]] = {n: [] for n in live}
    cycle0 = round_index * len(live)  # each round opens with a different member
    current = live[0]  # the member whose call runs (named when it raises)
    try:
        for i in range(warmup):
            for current in cycle_order(live, cycle0 + i):
                result.calls.append(f"warmup:{current}")
                steps[current]()
        if load:
            load.sample()
        c = 0
        while True:
            count = timers[live[0]].count
            elapsed = max(t.elapsed_s for t in timers.values())
            timed = 0
            while timed < block_timed and plan.more(count + timed, elapsed):
                timed += 1
            if timed == 0:
                break
            order = cycle_order(live, cycle0 + c)
            for current in order:
                first[current] += [current == order[0]] * timed
                result.calls.append(f"settle:{current}")
                steps[current]()
                for _ in range(timed):
                    result.calls.append(current)
                    with timers[current].track():
                        steps[current]()
            if load:
                load.maybe_sample()
            c += 1
    except Exception as exc:
        status = "oom" if is_oom is not None and is_oom(exc) else "error"
        text = str(exc).strip().splitlines()
        result.members[current].status = status
        result.members[current].error = f"{type(exc).__name__}: {text[0] if text else ''}"[:500]
        gc.collect()
        return result
    for n in live:
        m = result.members[n]
        m.values_s += timers[n].values_s
        m.rounds += [round_index] * timers[n].count
        m.first += first[n]
    return result
