"""A nightly manifest's history: step changes over the last nights, and the trend per unit.

asv's idea for regressions over a history: fit one step to the nights' medians and keep it only
when it is larger than the threshold and than the night-to-night spread before it
(qbench.measure.stats.detect_step). Nights run on another environment fingerprint than the
latest are left out: a step between two machines is not a regression.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qbench.measure.stats import detect_step, median_ci, robust_log_spread
from qbench.report.compare import (
    NIGHTLY,
    Key,
    Spread,
    paired_ratios,
    partner_pairs,
    unpaired_samples,
)
from qbench.results import job_ids, read_table

HISTORY_NIGHTS = 10
SPREAD_MIN_NIGHTS = 4  # earlier nights needed before their spread is trusted


@dataclass
class Night:
    job_id: str
    day: str
    p50: float  # median of the raw samples (or the row's p50 when none were kept)
    low: float | None  # 95% bootstrap CI of that median
    high: float | None
    # median of unit/reference over the night's pairs, and the reference's mode (paired units)
    relative: float | None = None
    reference_mode: str | None = None
    stable: bool | None = None  # the row's own stability flag


@dataclass
class History:
    jobs: list[str]
    series: dict[Key, list[Night]] = field(default_factory=dict)


def nightly_jobs(root: Path, job_id: str, nights: int = HISTORY_NIGHTS) -> list[str]:
    """This night and the earlier nights of the same manifest, oldest first, at most `nights`."""
    me = NIGHTLY.match(job_id)
    if not me:
        return []
    same = sorted((m["day"], j) for j in job_ids(root) if (m := NIGHTLY.match(j))
                  and m["name"] == me["name"] and m["day"] <= me["day"])
    return [j for _, j in same][-nights:]


def load_history(root: Path, job_id: str, nights: int = HISTORY_NIGHTS) -> History:
    jobs = nightly_jobs(root, job_id, nights)
    if not jobs:
        return History([])
    envs = {j: {r["env_fingerprint"] for r in read_table(root, "latency", j).to_pylist()}
            for j in jobs}
    mine = envs[job_id]
    jobs = [j for j in jobs if envs[j] == mine]
    history = History(jobs)
    for j in jobs:
        day = NIGHTLY.match(j)["day"]
        samples = unpaired_samples(root, j)
        pairs = paired_ratios(root, j)
        for r in read_table(root, "latency", j).to_pylist():
            if r["status"] != "ok" or r["latency_ms_p50"] is None:
                continue
            key = (r["model_id"], r["mode"], r["device"], r["batch_size"])
            values = samples.get(key)
            if values:
                p50, low, high = median_ci(values)
            else:
                p50, low, high = r["latency_ms_p50"], None, None
            pair = pairs.get(key)
            if pair is None and r.get("pairing") == "reference":
                pair = partner_pairs(pairs, key)  # the reference: relative to its partner
            history.series.setdefault(key, []).append(Night(
                j, day, p50, low, high, float(np.median(pair.ratios)) if pair else None,
                pair.reference if pair else None, r.get("stable")))
    return history


def _log_spread(values: list[float]) -> float | None:
    return robust_log_spread(values) if len(values) >= SPREAD_MIN_NIGHTS else None


def night_spread(history: History, job_id: str, base: str | None = None) -> dict[Key, Spread]:
    """Per unit × batch, the spread of the nights of `history` (load_history of `job_id`)
    before `job_id`, up to `base` when it is one of them: the nights a change is measured
    from, not those it may already have slowed. Empty for a job that is not a nightly or has
    too short a history."""
    cut = history.jobs.index(base) + 1 if base in history.jobs else len(history.jobs) - 1
    before = set(history.jobs[:cut]) - {job_id}
    out = {}
    for key, series in history.series.items():
        earlier = [n for n in series if n.job_id in before]
        refs = {n.reference_mode for n in earlier}
        relative = ([n.relative for n in earlier] if len(refs) == 1
                    and all(n.relative is not None for n in earlier) else [])
        own, rel = _log_spread([n.p50 for n in earlier]), _log_spread(relative)
        if own is not None or rel is not None:
            out[key] = Spread(len(earlier), own, rel)
    return out


def step_regressions(history: History, threshold_pct: float) -> list[str]:
    """One line per unit × batch whose history has a step up reaching the latest night."""
    out = []
    latest = history.jobs[-1] if history.jobs else None
    for key, nights in sorted(history.series.items()):
        if not nights or nights[-1].job_id != latest:
            continue
        # Relative to the reference timed beside it when every night has that (load cancels),
        # else the unit's own medians.
        paired = (all(n.relative is not None for n in nights)
                  and len({n.reference_mode for n in nights}) == 1)
        step = detect_step([n.relative if paired else n.p50 for n in nights], threshold_pct)
        if step is None:
            continue
        if not paired and any(n.stable is False for n in nights[step.index:]):
            continue  # a unit's own medians on unstable (busy) nights: load, not code
        model, mode, device, batch = key
        since = nights[step.index].day
        what = (f"latency relative to {nights[-1].reference_mode} timed beside it "
                f"{step.before:.3f} → {step.after:.3f}" if paired else
                f"median {step.before:.1f} → {step.after:.1f} ms")
        out.append(f"{model} {mode} {device} batch {batch}: step change over the last "
                   f"{len(nights)} nights, {what} ({100 * (step.ratio - 1):+.1f}%, since night "
                   f"{since}; night-to-night spread before it "
                   f"{100 * float(np.expm1(step.noise)):.1f}%)")
    return out
