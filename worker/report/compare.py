"""Two runs side by side: changes in latency, memory, size and mAP; regressions flagged.

Latency is flagged only when the change is larger than the threshold AND beyond both runs'
noise: the bootstrap CI of median(new)/median(old) over the raw samples excludes 1 and
Mann–Whitney U rejects "same distribution" (worker.measure.stats.latency_change). Runs written
before raw samples were kept fall back to the p50 threshold alone, and the row says so. Size,
accuracy and failures stay exact comparisons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from worker.measure.stats import SIGNIFICANCE, Change, latency_change
from worker.report.blocks import Block, Heading, Para, Table
from worker.report.tables import fmt
from worker.results import job_ids, read_table

Key = tuple[str, str, str, int]


def unpaired_samples(root: Path, job_id: str) -> dict[Key, list[float]]:
    """The unit's own (unpaired) per-iteration latencies, by (model, mode, device, batch)."""
    out: dict[Key, list[float]] = {}
    table = read_table(root, "samples", job_id)
    if table.num_rows == 0:
        return out
    cols = table.select(["model_id", "mode", "device", "batch_size", "pass", "role",
                         "latency_ms"]).to_pydict()
    for m, mode, d, b, kind, role, v in zip(*cols.values(), strict=True):
        if kind == "unpaired" and role == "unit" and v is not None:
            out.setdefault((m, mode, d, b), []).append(v)
    return out


def latency_verdict(lat_pct: float | None, old: list[float] | None, new: list[float] | None,
                    threshold_pct: float) -> tuple[bool, Change | None]:
    """(regression?, the sample-based change when both runs kept samples)."""
    if old and new and len(old) >= 2 and len(new) >= 2:
        change = latency_change(old, new, threshold_pct)
        return change.regression, change
    return lat_pct is not None and lat_pct > threshold_pct, None


@dataclass(frozen=True)
class Thresholds:
    latency_pct: float = 10.0  # p50 slower by more than this: a regression
    map_pts: float = 0.5  # mAP lower by more than this many points: a regression


@dataclass
class Comparison:
    base: str
    new: str
    same_environment: bool
    environments: tuple[set[str], set[str]]
    rows: list[list[str]] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)


def _pct(new: float | None, old: float | None) -> float | None:
    return None if new is None or not old else 100.0 * (new - old) / old


def compare_jobs(root: Path, base: str, new: str, th: Thresholds = Thresholds()) -> Comparison:
    old_m = {(m["model_id"], m["mode"], m["device"]): m for m in read_table(root, "models", base).to_pylist()}
    new_m = {(m["model_id"], m["mode"], m["device"]): m for m in read_table(root, "models", new).to_pylist()}
    old_l = {(r["model_id"], r["mode"], r["device"], r["batch_size"]): r
             for r in read_table(root, "latency", base).to_pylist()}
    new_l = {(r["model_id"], r["mode"], r["device"], r["batch_size"]): r
             for r in read_table(root, "latency", new).to_pylist()}
    old_s, new_s = unpaired_samples(root, base), unpaired_samples(root, new)
    envs = ({m["env_fingerprint"] for m in old_m.values()}, {m["env_fingerprint"] for m in new_m.values()})
    same = envs[0] == envs[1] and len(envs[0]) == 1
    cmp = Comparison(base, new, same, envs)
    for key in sorted(set(old_m) & set(new_m)):
        o, n = old_m[key], new_m[key]
        label = " ".join(key)
        if o["status"] == "ok" and n["status"] != "ok":
            cmp.regressions.append(f"{label}: was ok, now {n['status']} ({n['error']})")
        map_delta = (100 * (n["map"] - o["map"]) if n["map"] is not None and o["map"] is not None
                     else None)
        if map_delta is not None and map_delta < -th.map_pts:
            cmp.regressions.append(f"{label}: mAP {100 * o['map']:.2f} → {100 * n['map']:.2f} "
                                   f"({map_delta:+.2f} pts, threshold −{th.map_pts} pts)")
        size = _pct(n["size_bytes"], o["size_bytes"])
        batches = sorted(b for (*k, b) in set(old_l) & set(new_l) if tuple(k) == key)
        for b in batches or [None]:
            lo, ln = old_l.get((*key, b)), new_l.get((*key, b))
            lat = _pct(ln and ln["latency_ms_p50"], lo and lo["latency_ms_p50"])
            mem = _pct(ln and ln["rss_peak_bytes"], lo and lo["rss_peak_bytes"])
            flagged, change = latency_verdict(lat, old_s.get((*key, b)), new_s.get((*key, b)),
                                              th.latency_pct)
            if flagged and same:
                why = (f"median ×{change.ratio.estimate:.3f} [{change.ratio.low:.3f}–"
                       f"{change.ratio.high:.3f}], Mann–Whitney p={change.p_value:.1e}"
                       if change else "no raw samples: p50 only")
                cmp.regressions.append(f"{label} batch {b}: p50 {lo['latency_ms_p50']:.1f} → "
                                       f"{ln['latency_ms_p50']:.1f} ms ({lat:+.1f}%, threshold "
                                       f"+{th.latency_pct:.0f}%; {why})")
            cmp.rows.append([*key, fmt(b, "d"), fmt(lat, "+.1f"), _ci_text(change),
                             _verdict_text(change, th.latency_pct), fmt(mem, "+.1f"),
                             fmt(size, "+.1f"), fmt(map_delta, "+.2f")])
    for key in sorted(set(old_m) - set(new_m)):
        cmp.regressions.append(f"{' '.join(key)}: in {base} but missing from {new}")
    return cmp


def _ci_text(change: Change | None) -> str:
    if change is None:
        return "–"
    r = change.ratio
    return f"{100 * (r.low - 1):+.1f} … {100 * (r.high - 1):+.1f}"


def _verdict_text(change: Change | None, threshold_pct: float) -> str:
    if change is None:
        return "no samples"
    if change.regression:
        return "**slower**"
    if change.significant:
        return f"slower, within {threshold_pct:.0f}%"
    return "not significant" if change.ratio.estimate >= 1 else "same or faster"


def comparison_blocks(cmp: Comparison, th: Thresholds) -> list[Block]:
    blocks: list[Block] = [Heading(f"Compared with {cmp.base}")]
    if not cmp.same_environment:
        blocks.append(Para(f"The environments differ ({', '.join(sorted(cmp.environments[0]))} vs "
                           f"{', '.join(sorted(cmp.environments[1]))}): latency and memory changes "
                           "are shown but not flagged; size, accuracy and failures still are.",
                           alert=True))
    blocks.append(Table(["model", "mode", "device", "batch", "p50 change %",
                         "median change 95% CI %", "latency verdict", "RSS peak change %",
                         "size change %", "mAP change pts"], cmp.rows,
                        align_right={3, 4, 5, 7, 8, 9}))
    blocks.append(Para(f"Thresholds: latency +{th.latency_pct:.0f}%, mAP −{th.map_pts} points. "
                       "Latency is flagged only when the median is slower by more than the "
                       "threshold and the change is beyond both runs' noise (bootstrap CI of the "
                       f"ratio of medians excludes 1 and Mann–Whitney p < {SIGNIFICANCE})."))
    return blocks


NIGHTLY = re.compile(r"^(?P<name>.+)-nightly-(?P<day>\d{8})-[0-9a-f]{6}$")


def previous_nightly(root: Path, job_id: str) -> str | None:
    """The latest earlier night of the same nightly manifest (by name), if any."""
    me = NIGHTLY.match(job_id)
    if not me:
        return None
    earlier = [(m["day"], j) for j in job_ids(root) if (m := NIGHTLY.match(j))
               and m["name"] == me["name"] and m["day"] < me["day"]]
    return max(earlier)[1] if earlier else None
