"""Two runs side by side: changes in latency, memory, size and mAP; regressions flagged.

Latency is flagged only when the change is beyond both runs' noise AND surely larger than the
threshold: the bootstrap CI of median(new)/median(old) lies wholly above 1 + threshold and
Mann–Whitney U rejects "same distribution" (qbench.measure.stats.latency_change), on the
evidence `latency_verdict` picks. For a nightly job with at least four earlier nights, the
change must also beat three times their night-to-night spread of the same figure.
Runs written before raw samples were kept fall back to the p50 threshold alone, and say so. Size,
accuracy and failures stay exact comparisons.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from qbench.measure.stats import SIGNIFICANCE, Change, latency_change
from qbench.report.blocks import Block, Heading, Para, Table
from qbench.report.tables import fmt
from qbench.results import job_ids, read_table

Key = tuple[str, str, str, int]


def _samples(root: Path, job_id: str) -> list[tuple]:
    table = read_table(root, "samples", job_id)
    if table.num_rows == 0:
        return []
    cols = table.select(["model_id", "mode", "device", "batch_size", "pass", "role",
                         "reference_mode", "iteration", "latency_ms", "round"]).to_pydict()
    return list(zip(*cols.values(), strict=True))


def unpaired_samples(root: Path, job_id: str) -> dict[Key, list[float]]:
    """The unit's own (unpaired) per-iteration latencies, by (model, mode, device, batch)."""
    out: dict[Key, list[float]] = {}
    for m, mode, d, b, kind, role, _, _, v, _ in _samples(root, job_id):
        if kind == "unpaired" and role == "unit" and v is not None:
            out.setdefault((m, mode, d, b), []).append(v)
    return out


@dataclass(frozen=True)
class Pairs:
    """One unit × batch's per-pair ratios unit / reference, with the round of each pair."""

    reference: str
    ratios: list[float]
    rounds: list[int] | None  # None: one round (files from before rounds: one round)
    partner: str | None = None  # set: a reference unit's latency over this unit's, pair by pair


def partner_pairs(pairs: dict[Key, Pairs], key: Key) -> Pairs | None:
    """The reference unit itself, seen from the first unit (by mode) of the same model, device
    and batch timed beside it: reference / unit per pair. A reference unit has no pass of its
    own beside anything, and its raw samples carry the machine's drift between two runs (fp32
    eager on a shared VM: 48 to 62 ms between runs a minute apart, with each run's samples
    tight), so its own latency is judged relative to the model it was timed beside."""
    model, mode, device, batch = key
    for other in sorted(k for k in pairs if k[0] == model and k[2] == device and k[3] == batch
                        and k[1] != mode and pairs[k].reference == mode):
        p = pairs[other]
        return Pairs(other[1], [1.0 / r for r in p.ratios if r > 0], p.rounds, partner=other[1])
    return None


def paired_ratios(root: Path, job_id: str) -> dict[Key, Pairs]:
    """Per pair, the unit's latency over the reference's timed beside it: load that hit both
    cancels, so this moves only when the unit itself got slower relative to its reference."""
    sides: dict[Key, dict[str, dict[int, float]]] = {}
    rounds: dict[Key, dict[int, int]] = {}
    refs: dict[Key, str] = {}
    for m, mode, d, b, kind, role, ref, i, v, r in _samples(root, job_id):
        # side by side: the variant's calls and the reference's beside them, as in a paired pass
        if kind in ("paired", "side_by_side") and v is not None:
            sides.setdefault((m, mode, d, b), {}).setdefault(role, {})[i] = v
            rounds.setdefault((m, mode, d, b), {})[i] = r or 0
            refs[(m, mode, d, b)] = ref
    out = {}
    for key, by_role in sides.items():
        unit, ref = by_role.get("unit", {}), by_role.get("reference", {})
        index = [i for i in sorted(set(unit) & set(ref)) if ref[i] > 0]
        if index:
            labels = [rounds[key][i] for i in index]
            out[key] = Pairs(refs[key], [unit[i] / ref[i] for i in index],
                             labels if len(set(labels)) > 1 else None)
    return out


@dataclass(frozen=True)
class Spread:
    """Night-to-night spread (1.4826 × MAD of log medians) of one unit × batch over the nights
    before a job: the run-to-run noise no single run's samples show (a quantized model rebuilt
    for each run is not always equally fast)."""

    nights: int
    own: float | None  # of the unit's own medians
    relative: float | None  # of its median unit / reference ratios (paired nights only)


SPREAD_FACTOR = 3.0  # a change must beat this many night-to-night spreads (as the step test)


@dataclass(frozen=True)
class LatencyVerdict:
    regression: bool
    change: Change | None  # None: decided on p50 alone (no samples) or not decided
    basis: str  # paired | samples | unstable | p50
    spread: float | None = None  # relative night-to-night spread it had to beat, when known

    @property
    def within_spread(self) -> bool:
        """Beyond both runs' samples but not beyond the spread of earlier nights."""
        return (self.spread is not None and self.change is not None and not self.regression
                and self.change.regression)


def _beats_spread(change: Change, spread: float | None) -> bool:
    return spread is None or math.log(change.ratio.low) > SPREAD_FACTOR * spread


def latency_verdict(lat_pct: float | None, old: list[float] | None, new: list[float] | None,
                    threshold_pct: float,
                    old_pairs: Pairs | None = None,
                    new_pairs: Pairs | None = None,
                    stable: bool | None = None, spread: Spread | None = None) -> LatencyVerdict:
    """Which evidence decides a latency change, strongest first:
    1. both runs timed the unit beside the same reference: the per-pair ratios unit/reference
       (the machine's load between and during the runs cancels), each run's CI resampling its
       rounds before its pairs (the drift between rounds is run-to-run noise in small);
    2. both runs kept raw samples and both rows are stable (cv <= 10%): the raw samples;
       an unstable row is not flagged from raw samples (its run-to-run drift is not in its
       samples: on a shared machine a quiet and a busy run of the same code differ by 2x);
    3. neither kept samples (files from before): the p50 threshold alone.
    With a nightly history (`spread`), a change on 1 or 2 must also beat SPREAD_FACTOR times
    the nights' spread of that same figure: two runs can each be tight and still differ."""
    if (old_pairs and new_pairs and old_pairs.reference == new_pairs.reference
            and len(old_pairs.ratios) >= 2 and len(new_pairs.ratios) >= 2):
        change = latency_change(old_pairs.ratios, new_pairs.ratios, threshold_pct,
                                old_pairs.rounds, new_pairs.rounds)
        noise = spread.relative if spread else None
        return LatencyVerdict(change.regression and _beats_spread(change, noise), change,
                              "paired", noise)
    if old and new and len(old) >= 2 and len(new) >= 2:
        change = latency_change(old, new, threshold_pct)
        if stable is False:
            return LatencyVerdict(False, change, "unstable")
        noise = spread.own if spread else None
        return LatencyVerdict(change.regression and _beats_spread(change, noise), change,
                              "samples", noise)
    return LatencyVerdict(lat_pct is not None and lat_pct > threshold_pct, None, "p50")


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


def compare_jobs(root: Path, base: str, new: str, th: Thresholds = Thresholds(),
                 spreads: dict[Key, Spread] | None = None) -> Comparison:
    """`spreads`: the night-to-night spread per unit × batch before `new` (a nightly's
    history, qbench.report.history.night_spread), which a latency change must also beat."""
    old_m = {(m["model_id"], m["mode"], m["device"]): m for m in read_table(root, "models", base).to_pylist()}
    new_m = {(m["model_id"], m["mode"], m["device"]): m for m in read_table(root, "models", new).to_pylist()}
    old_l = {(r["model_id"], r["mode"], r["device"], r["batch_size"]): r
             for r in read_table(root, "latency", base).to_pylist()}
    new_l = {(r["model_id"], r["mode"], r["device"], r["batch_size"]): r
             for r in read_table(root, "latency", new).to_pylist()}
    old_s, new_s = unpaired_samples(root, base), unpaired_samples(root, new)
    old_p, new_p = paired_ratios(root, base), paired_ratios(root, new)
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
            k = (*key, b)
            stable = (None if lo is None or ln is None or lo.get("stable") is None
                      or ln.get("stable") is None else bool(lo["stable"] and ln["stable"]))
            op, np_ = old_p.get(k), new_p.get(k)
            if (op is None and np_ is None and lo and ln
                    and lo.get("pairing") == ln.get("pairing") == "reference"):
                op, np_ = partner_pairs(old_p, k), partner_pairs(new_p, k)
            verdict = latency_verdict(lat, old_s.get(k), new_s.get(k), th.latency_pct,
                                      op, np_, stable, (spreads or {}).get(k))
            change = verdict.change
            if verdict.regression and same:
                partner = op.partner if op is not None and verdict.basis == "paired" else None
                what = (f"relative to {partner} timed beside it, median ×" if partner else
                        "relative to its reference timed beside it, median ×"
                        if verdict.basis == "paired" else "median ×")
                why = (f"{what}{change.ratio.estimate:.3f} [{change.ratio.low:.3f}–"
                       f"{change.ratio.high:.3f}], Mann–Whitney p={change.p_value:.1e}"
                       if change else "no raw samples: p50 only")
                cmp.regressions.append(f"{label} batch {b}: p50 {lo['latency_ms_p50']:.1f} → "
                                       f"{ln['latency_ms_p50']:.1f} ms ({lat:+.1f}%, threshold "
                                       f"+{th.latency_pct:.0f}%; {why})")
            cmp.rows.append([*key, fmt(b, "d"), fmt(lat, "+.1f"), _ci_text(change),
                             _verdict_text(verdict, th.latency_pct), fmt(mem, "+.1f"),
                             fmt(size, "+.1f"), fmt(map_delta, "+.2f")])
    for key in sorted(set(old_m) - set(new_m)):
        cmp.regressions.append(f"{' '.join(key)}: in {base} but missing from {new}")
    return cmp


def _ci_text(change: Change | None) -> str:
    if change is None:
        return "–"
    r = change.ratio
    return f"{100 * (r.low - 1):+.1f} … {100 * (r.high - 1):+.1f}"


def _verdict_text(verdict: LatencyVerdict, threshold_pct: float) -> str:
    change = verdict.change
    if change is None:
        return "no samples"
    basis = {"paired": " (paired)", "samples": "", "unstable": " (unstable: not flagged)"}
    suffix = basis.get(verdict.basis, "")
    if verdict.within_spread:
        return (f"slower, within {SPREAD_FACTOR:.0f}× the nights' spread "
                f"(±{100 * math.expm1(verdict.spread):.1f}%)" + suffix)
    if verdict.regression:
        return "**slower**" + suffix
    if change.significant and change.beyond_threshold:
        return "slower" + suffix
    if change.significant and change.ratio.estimate > 1 + threshold_pct / 100:
        return f"slower, CI reaches below +{threshold_pct:.0f}%" + suffix
    if change.significant:
        return f"slower, within {threshold_pct:.0f}%" + suffix
    return ("not significant" if change.ratio.estimate >= 1 else "same or faster") + suffix


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
                       "Latency is flagged only when the median is surely slower by more than "
                       "the threshold: the bootstrap 95% CI of the ratio of medians lies wholly "
                       f"above 1 + threshold and Mann–Whitney p < {SIGNIFICANCE}; for a "
                       "unit timed beside its reference in both runs (paired), on its latency "
                       "relative to that reference, pair by pair (the reference itself: "
                       "relative to the unit timed beside it); otherwise on its own samples, "
                       "and only when both rows are stable."))
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
