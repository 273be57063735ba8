"""Speedups for the report: paired (with CI) against the reference, and against each fp32
baseline of the job, the fastest included.

Every non-reference unit was timed interleaved with the same reference R (fp32 eager unless
the manifest names another), so its paired speedup S_u = median(R) / median(u). The speedup of
a unit over another baseline B of the job is S_u / S_B (R cancels); its 95% interval combines
the two intervals on a log scale, half-widths added in quadrature (the two paired runs are
independent); over R itself it is S_u's own measured interval. S_R is exactly 1. A row without
paired figures (pairing off, or a Parquet file written before pairing existed) falls back to
the ratio of unpaired p50s, marked as such.

Timed side by side (the default), every two variants of a model on a device are a measured
pair of their own (the `pairs` table): `attach_pairs` puts those figures on the latency rows,
and `speedup_over` takes the measured pair first, so no two intervals need combining.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qbench.modes import reference_modes

# The float baselines (the mode table's reference modes: fp32, fp32_compiled, ort_fp32).
FP32_BASELINES = tuple(reference_modes())


@dataclass(frozen=True)
class Speedup:
    value: float
    low: float | None
    high: float | None
    paired: bool
    measured_pair: bool = False  # the two timed side by side: one pair's own median and CI

    def text(self) -> str:
        if self.value == self.low == self.high == 1.0:
            return "1.00x"  # a baseline against itself
        if not self.paired or self.low is None or self.high is None:
            return f"{self.value:.2f}x (unpaired)"
        return f"{self.value:.2f}x [{self.low:.2f}–{self.high:.2f}]"


ONE = Speedup(1.0, 1.0, 1.0, True)
MEASURED_PAIRS = "measured_pairs"  # latency row key: over mode -> Speedup (attach_pairs)


def attach_pairs(latency: list[dict], pairs: list[dict]) -> None:
    """Each latency row gets its measured pairs (`pairs` table rows of its model, device,
    batch size and mode that hold an interval) under MEASURED_PAIRS."""
    index: dict[tuple, dict[str, Speedup]] = {}
    for p in pairs:
        s, lo, hi = p.get("speedup"), p.get("speedup_ci_low"), p.get("speedup_ci_high")
        if p.get("status") == "ok" and s and lo and hi:
            key = (p["job_id"], p["model_id"], p["device"], p["batch_size"], p["mode"])
            index.setdefault(key, {})[p["over_mode"]] = Speedup(s, lo, hi, True, True)
    for r in latency:
        found = index.get((r["job_id"], r["model_id"], r["device"], r["batch_size"], r["mode"]))
        if found and r.get("status") == "ok":
            r[MEASURED_PAIRS] = found


def _paired(row: dict) -> Speedup | None:
    s, lo, hi = row.get("speedup"), row.get("speedup_ci_low"), row.get("speedup_ci_high")
    if s is None or lo is None or hi is None or s <= 0 or lo <= 0:
        return None
    return Speedup(s, lo, hi, True)


def _divide(a: Speedup, b: Speedup) -> Speedup:
    if b == ONE:  # over the reference itself: the measured interval as it is (not symmetrised)
        return a
    value = a.value / b.value
    if a.low is None or b.low is None or a.high is None or b.high is None:
        return Speedup(value, None, None, False)
    half_a = (math.log(a.high) - math.log(a.low)) / 2
    half_b = (math.log(b.high) - math.log(b.low)) / 2
    half = math.hypot(half_a, half_b)
    return Speedup(value, value * math.exp(-half), value * math.exp(half), True)


def vs_reference(row: dict) -> Speedup | None:
    """The row's own speedup over its reference (1 for the reference itself)."""
    if row.get("pairing") == "reference":
        return ONE
    return _paired(row)


def speedup_over(row: dict, baseline: dict | None) -> Speedup | None:
    """Speedup of `row` over the `baseline` row (same model, device, batch size)."""
    if baseline is None or row.get("status") != "ok" or baseline.get("status") != "ok":
        return None
    if row is baseline or row.get("unit_id") == baseline.get("unit_id"):
        return ONE
    measured = (row.get(MEASURED_PAIRS) or {}).get(baseline.get("mode"))
    if measured is not None:
        return measured
    mine, theirs = vs_reference(row), vs_reference(baseline)
    same_ref = row.get("reference_mode") == baseline.get("reference_mode")
    if mine is not None and theirs is not None and same_ref:
        return _divide(mine, theirs)
    p50, base_p50 = row.get("latency_ms_p50"), baseline.get("latency_ms_p50")
    if p50 and base_p50:
        return Speedup(base_p50 / p50, None, None, False)
    return None


def fastest_baseline(rows: list[dict]) -> dict | None:
    """The fastest fp32 baseline among `rows` (one model, device, batch): by paired speedup
    over the shared reference when every baseline has one, else by unpaired p50."""
    ok = [r for r in rows if r.get("mode") in FP32_BASELINES and r.get("status") == "ok"
          and r.get("latency_ms_p50")]
    if not ok:
        return None
    paired = [(vs_reference(r), r) for r in ok]
    if all(s is not None for s, _ in paired) and len({r.get("reference_mode") for r in ok}) == 1:
        return max(paired, key=lambda sr: sr[0].value)[1]
    return min(ok, key=lambda r: r["latency_ms_p50"])
