"""Where a unit's time goes: wall-clock seconds per phase, as `models` columns.

The pipeline names its steps for progress ("load model", "measure batch 4", "paired batch 4",
...); the clock maps each step to one of seven phases and charges the time until the next
step to it. A phase the unit never entered stays null (a unit without a dataset has no
evaluate time, not zero of it).
"""

from __future__ import annotations

import time

PHASES = ("load", "quantize", "unpaired_timing", "paired_timing", "evaluate", "inspect", "write")
LABELS = {"load": "load", "quantize": "quantize", "unpaired_timing": "unpaired timing",
          "paired_timing": "paired timing", "evaluate": "evaluate", "inspect": "inspect",
          "write": "write"}
# Step text prefix -> phase (the progress steps of worker/pipeline.py and unit_latency.py).
_PREFIXES = (("load model", "load"), ("quantize", "quantize"), ("measure batch", "unpaired_timing"),
             ("build reference", "paired_timing"), ("paired batch", "paired_timing"),
             ("evaluate", "evaluate"), ("inspect", "inspect"), ("save artifact", "write"),
             ("write results", "write"))


def column(phase: str) -> str:
    return f"{phase}_seconds"


COLUMNS = [column(p) for p in PHASES]


def phase_of(step: str) -> str | None:
    """The phase a progress step belongs to, or None for a step of no phase."""
    for prefix, phase in _PREFIXES:
        if step.startswith(prefix):
            return phase
    return None


class PhaseClock:
    """Charges wall-clock time to the phase entered last."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.current: str | None = None
        self._since = time.monotonic()

    def enter(self, phase: str | None) -> None:
        if phase is None or phase == self.current:
            return
        self.stop()
        self.current = phase
        self.seconds.setdefault(phase, 0.0)

    def step(self, text: str) -> None:
        self.enter(phase_of(text))

    def stop(self) -> None:
        now = time.monotonic()
        if self.current is not None:
            self.seconds[self.current] += now - self._since
        self.current = None
        self._since = now

    def columns(self) -> dict[str, float | None]:
        self.stop()
        return {column(p): (round(self.seconds[p], 3) if p in self.seconds else None)
                for p in PHASES}


def job_time_by_phase(models: list[dict]) -> dict[str, float]:
    """Seconds per phase summed over a job's units (rows without phase columns add nothing)."""
    totals = {p: 0.0 for p in PHASES}
    for row in models:
        for p in PHASES:
            totals[p] += row.get(column(p)) or 0.0
    return totals
