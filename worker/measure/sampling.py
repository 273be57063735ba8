"""How many timed iterations to run: a count, a minimum measured time, and caps (MLPerf-style).

A batch size runs until it has at least `iterations` samples AND `min_seconds` of measured
time, but stops at `max_iterations` samples or `max_seconds` of measured time, whichever comes
first (a cap wins over a minimum, so a 64-image batch of a big detector cannot run for an hour).
At least one iteration always runs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingPlan:
    iterations: int
    min_seconds: float = 0.0
    max_iterations: int | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"need iterations >= 1, got {self.iterations}")
        if self.min_seconds < 0:
            raise ValueError(f"need min_seconds >= 0, got {self.min_seconds}")

    def more(self, count: int, elapsed_s: float) -> bool:
        """Whether to run another iteration after `count` of them took `elapsed_s` in all."""
        if count < 1:
            return True
        if self.max_iterations is not None and count >= self.max_iterations:
            return False
        if self.max_seconds is not None and elapsed_s >= self.max_seconds:
            return False
        return count < self.iterations or elapsed_s < self.min_seconds

    @property
    def upper_bound(self) -> int | None:
        """The most iterations this plan can run when time alone does not stop it (progress)."""
        if self.max_iterations is not None:
            return self.max_iterations
        return None if self.min_seconds > 0 else self.iterations
