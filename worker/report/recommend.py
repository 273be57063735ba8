"""One recommendation per model x device x batch size: the fastest variant meeting the target.

The target is the job's `quantization.target`: `max_map_drop` mAP points for a detector scored
on a dataset (1.0 when the manifest gives none), `min_agreement` top-1 agreement with fp32 for a
classifier (0.99 by default), `min_cosine` output cosine with fp32 otherwise (0.999 when not
given). An fp32 baseline meets the target by definition (it is what the others are measured
against). "Fastest" is the largest speedup over the job's fastest fp32 baseline at that batch
size (qbench.report.speedup). The runner-up is the next fastest qualifying variant; the two are
"told apart" when the interval of the recommended variant's speedup over the runner-up lies
wholly above 1: the interval of their measured pair when they were timed side by side.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from qbench.report.speedup import FP32_BASELINES, Speedup, fastest_baseline, speedup_over

DETECTOR_TASKS = ("detection", "yolo")
DEFAULT_MAX_MAP_DROP = 1.0
DEFAULT_MIN_COSINE = 0.999


@dataclass(frozen=True)
class Target:
    max_map_drop: float = DEFAULT_MAX_MAP_DROP
    min_agreement: float = 0.99
    min_cosine: float = DEFAULT_MIN_COSINE

    @classmethod
    def of(cls, spec: Any | None) -> Target:
        """From a manifest's TargetSpec (None: the defaults)."""
        if spec is None:
            return cls()
        return cls(spec.max_map_drop if spec.max_map_drop is not None else DEFAULT_MAX_MAP_DROP,
                   spec.min_agreement,
                   spec.min_cosine if spec.min_cosine is not None else DEFAULT_MIN_COSINE)


@dataclass(frozen=True)
class Accuracy:
    """One variant's accuracy figure against the target, with its interval where there is one."""

    metric: str  # map_drop_pts | agreement_top1 | output_cosine | baseline
    value: float | None
    low: float | None
    high: float | None
    threshold: float | None

    @property
    def meets(self) -> bool:
        if self.metric == "baseline":
            return True
        if self.value is None or self.threshold is None:
            return False
        if self.metric == "map_drop_pts":
            return self.value <= self.threshold
        return self.value >= self.threshold

    @property
    def interval_clears(self) -> bool | None:
        """The whole 95% interval on the right side of the target (None: no interval)."""
        if self.metric == "baseline":
            return True
        if self.low is None or self.high is None or self.threshold is None:
            return None
        return self.high <= self.threshold if self.metric == "map_drop_pts" else self.low >= self.threshold

    def shortfall(self) -> float:
        """How far from the target, relative to it (0 when met; large when unknown)."""
        if self.meets:
            return 0.0
        if self.value is None or not self.threshold:
            return float("inf")
        if self.metric == "map_drop_pts":
            return (self.value - self.threshold) / max(self.threshold, 1e-9)
        return (self.threshold - self.value) / self.threshold

    def text(self) -> str:
        if self.metric == "baseline":
            return "fp32 baseline"
        if self.value is None:
            return f"{LABELS[self.metric]} not measured"
        interval = (f" [{self.low:{FORMATS[self.metric]}} to {self.high:{FORMATS[self.metric]}}]"
                    if self.low is not None and self.high is not None else "")
        sign = "≤" if self.metric == "map_drop_pts" else "≥"
        return (f"{LABELS[self.metric]} {self.value:{FORMATS[self.metric]}}{interval} "
                f"(target {sign} {self.threshold:g})")


LABELS = {"map_drop_pts": "mAP drop (points)", "agreement_top1": "top-1 agreement",
          "output_cosine": "output cosine"}
FORMATS = {"map_drop_pts": "+.2f", "agreement_top1": ".3f", "output_cosine": ".4f"}


def accuracy_of(model: dict, summary: dict, target: Target) -> Accuracy:
    """The figure the target is about, for this unit's task."""
    if model["mode"] in FP32_BASELINES:
        return Accuracy("baseline", None, None, None, None)
    if model.get("task") in DETECTOR_TASKS and model.get("map") is not None:
        base = model.get("map_fp32")
        drop = (100 * (base - model["map"]) if base is not None
                else summary.get("map_drop_pts"))
        return Accuracy("map_drop_pts", drop, model.get("map_drop_pts_ci_low"),
                        model.get("map_drop_pts_ci_high"), target.max_map_drop)
    if model.get("task") == "classification" and model.get("agreement_top1") is not None:
        return Accuracy("agreement_top1", model["agreement_top1"],
                        model.get("agreement_top1_ci_low"), model.get("agreement_top1_ci_high"),
                        target.min_agreement)
    return Accuracy("output_cosine", model.get("output_cosine"), None, None, target.min_cosine)


@dataclass
class Candidate:
    row: dict  # latency row of this variant at this batch size
    summary: dict
    accuracy: Accuracy
    speed: Speedup | None  # over the fastest fp32 baseline

    @property
    def mode(self) -> str:
        return self.row["mode"]


def _speed_key(c: Candidate) -> tuple:
    return (c.speed.value if c.speed else 0.0, -(c.row.get("latency_ms_p50") or float("inf")))


def recommend(models: list[dict], latency: list[dict], summary: list[dict],
              target: Target) -> list[dict[str, Any]]:
    """One `recommendations` row per model x device x batch size with at least one ok row."""
    by_unit = {m["unit_id"]: m for m in models}
    summary_of = {(s["model_id"], s["mode"], s["device"], s.get("batch_size")): s for s in summary}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in latency:
        groups[(r["model_id"], r["device"], r["batch_size"])].append(r)
    out = []
    for (model_id, device, batch), rows in sorted(groups.items(),
                                                          key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        ok = [r for r in rows if r["status"] == "ok" and r["unit_id"] in by_unit
              and by_unit[r["unit_id"]]["status"] == "ok"]
        if not ok:
            continue
        base = fastest_baseline(ok)
        cands = []
        for r in ok:
            m = by_unit[r["unit_id"]]
            s = summary_of.get((model_id, r["mode"], device, batch), {})
            cands.append(Candidate(r, s, accuracy_of(m, s, target), speedup_over(r, base)))
        out.append(_row(model_id, device, batch, cands, base, target, ok[0]))
    return out


def _target_text(cands: list[Candidate], target: Target) -> tuple[str | None, float | None]:
    metrics = [c.accuracy for c in cands if c.accuracy.metric != "baseline"]
    if not metrics:
        return None, None
    return metrics[0].metric, metrics[0].threshold


def _row(model_id: str, device: str, batch: int, cands: list[Candidate], base: dict | None,
         target: Target, any_row: dict) -> dict[str, Any]:
    qualifying = sorted((c for c in cands if c.accuracy.meets), key=_speed_key, reverse=True)
    quantized = [c for c in cands if c.mode not in FP32_BASELINES]
    best = qualifying[0] if qualifying else None
    second = qualifying[1] if len(qualifying) > 1 else None
    metric, threshold = _target_text(cands, target)
    row: dict[str, Any] = {
        "job_id": any_row["job_id"], "job_name": any_row.get("job_name"), "model_id": model_id,
        "device": device, "batch_size": batch, "target_metric": metric, "target": threshold,
        "fastest_fp32_mode": base["mode"] if base else None,
        "candidates": len(cands),
        "quantized_qualifying": sum(c.accuracy.meets for c in quantized),
        "env_fingerprint": any_row.get("env_fingerprint"), "host": any_row.get("host"),
    }
    if best is not None:
        acc = best.accuracy
        row.update(
            recommended_mode=best.mode, recommended_backend=best.row.get("backend"),
            recommended_unit_id=best.row["unit_id"],
            speedup_vs_fastest_fp32=best.speed.value if best.speed else None,
            speedup_ci_low=best.speed.low if best.speed else None,
            speedup_ci_high=best.speed.high if best.speed else None,
            speedup_paired=best.speed.paired if best.speed else None,
            accuracy_metric=acc.metric, accuracy_value=acc.value, accuracy_ci_low=acc.low,
            accuracy_ci_high=acc.high, meets_target=acc.meets,
            interval_clears_target=acc.interval_clears)
    if second is not None and best is not None:
        apart = speedup_over(best.row, second.row)
        row.update(runner_up_mode=second.mode,
                   runner_up_speedup_vs_fastest_fp32=second.speed.value if second.speed else None,
                   over_runner_up=apart.value if apart else None,
                   over_runner_up_ci_low=apart.low if apart else None,
                   over_runner_up_ci_high=apart.high if apart else None,
                   told_apart=(apart.low > 1.0 if apart and apart.paired and apart.low is not None
                               else None),
                   runner_up_basis=_basis(best, second, apart))
    if quantized and not any(c.accuracy.meets for c in quantized):
        closest = min(quantized, key=lambda c: (c.accuracy.shortfall(), -_speed_key(c)[0]))
        row.update(closest_mode=closest.mode, closest_accuracy_value=closest.accuracy.value)
    row["verdict"] = verdict_text(row, best, second, quantized, target)
    from qbench.results import RECOMMENDATIONS

    return {name: row.get(name) for name in RECOMMENDATIONS.names}  # every column, in order


def _basis(best: Candidate, second: Candidate, apart: Speedup | None) -> str | None:
    """How the recommended-over-runner-up figure was obtained."""
    if apart is None:
        return None
    if apart.measured_pair:
        return "measured pair"  # the two timed side by side: their own pairs and interval
    if not apart.paired:
        return "unpaired p50"
    if second.row.get("pairing") == "reference" or best.row.get("pairing") == "reference":
        return "paired"  # one of the two is the reference: its own measured pairs
    return "two paired runs"  # each over the shared reference, intervals combined


def verdict_text(row: dict, best: Candidate | None, second: Candidate | None,
                 quantized: list[Candidate], target: Target) -> str:
    """The recommendation in one sentence a reader cannot misread."""
    where = f"{row['model_id']} on {row['device']}, batch {row['batch_size']}"
    if best is None:
        return f"{where}: nothing measured meets the target."
    speed = best.speed.text() if best.speed else "speed not measured"
    parts = [f"{where}: use **{best.mode}**, {speed} over {row['fastest_fp32_mode']}"]
    if best.accuracy.metric != "baseline":
        clears = best.accuracy.interval_clears
        parts.append(best.accuracy.text() + (
            "; its whole interval clears the target" if clears else
            "; its interval reaches past the target" if clears is False else ""))
    if row.get("closest_mode"):
        closest = next(c for c in quantized if c.mode == row["closest_mode"])
        parts.append(f"no quantized variant meets the target; closest: {closest.mode} "
                     f"({closest.accuracy.text()})")
    if second is not None:
        apart = row.get("told_apart")
        ratio = row.get("over_runner_up")
        lo, hi = row.get("over_runner_up_ci_low"), row.get("over_runner_up_ci_high")
        figure = (f"{ratio:.2f}x [{lo:.2f}–{hi:.2f}]" if ratio and lo and hi
                  else f"{ratio:.2f}x" if ratio else "?")
        parts.append(f"runner-up {second.mode}, {figure} slower: "
                     + ("told apart" if apart else "not told apart" if apart is False
                        else "no interval to tell them apart"))
    return "; ".join(parts) + "."
