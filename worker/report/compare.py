"""Two runs side by side: changes in latency, memory, size and mAP; regressions flagged."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from worker.report.blocks import Block, Heading, Para, Table
from worker.report.tables import fmt
from worker.results import job_ids, read_table


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
            if lat is not None and lat > th.latency_pct and same:
                cmp.regressions.append(f"{label} batch {b}: p50 {lo['latency_ms_p50']:.1f} → "
                                       f"{ln['latency_ms_p50']:.1f} ms ({lat:+.1f}%, threshold "
                                       f"+{th.latency_pct:.0f}%)")
            cmp.rows.append([*key, fmt(b, "d"), fmt(lat, "+.1f"), fmt(mem, "+.1f"), fmt(size, "+.1f"),
                             fmt(map_delta, "+.2f")])
    for key in sorted(set(old_m) - set(new_m)):
        cmp.regressions.append(f"{' '.join(key)}: in {base} but missing from {new}")
    return cmp


def comparison_blocks(cmp: Comparison, th: Thresholds) -> list[Block]:
    blocks: list[Block] = [Heading(f"Compared with {cmp.base}")]
    if not cmp.same_environment:
        blocks.append(Para(f"The environments differ ({', '.join(sorted(cmp.environments[0]))} vs "
                           f"{', '.join(sorted(cmp.environments[1]))}): latency and memory changes "
                           "are shown but not flagged; size, accuracy and failures still are.",
                           alert=True))
    blocks.append(Table(["model", "mode", "device", "batch", "p50 change %", "RSS peak change %",
                         "size change %", "mAP change pts"], cmp.rows, align_right={3, 4, 5, 6, 7}))
    blocks.append(Para(f"Thresholds: latency +{th.latency_pct:.0f}%, mAP −{th.map_pts} points."))
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
