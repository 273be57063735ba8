"""The report's first screen: the job, the nightly verdict, the recommendation, one line per
variant and the flags, before any table."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from qbench.modes import MODES
from qbench.report.blocks import Block, Bullets, Heading, Para
from qbench.report.history import History
from qbench.report.speedup import FP32_BASELINES
from qbench.report.tables import MIB, stability_text, unit_order

TREND_STEADY_PCT = 5.0  # a first-to-last change within this is "steady" in the nightly trend


def job_line(models: list[dict], latency: list[dict], job_id: str,
             later: list[Any] | None = None) -> str:
    """Job name and id, when, where (host, CPU and its int8 ISA, threads) and how long;
    `later`: when steps after the units ended (side-by-side timings), which the job waited for."""
    rows = models or latency
    if not rows:
        return f"Job `{job_id}`: no rows yet."
    first = rows[0]
    started = [m["started_at"] for m in models if m.get("started_at")]
    ended = [m["ended_at"] for m in models if m.get("ended_at")] + [t for t in later or [] if t]
    when = min(started).strftime("%Y-%m-%d %H:%M UTC") if started else "date unknown"
    took = ""
    if started and ended:
        secs = (max(ended) - min(started)).total_seconds()
        took = f", took {secs / 60:.1f} min" if secs >= 90 else f", took {secs:.0f} s"
    isa = first.get("cpu_isa")
    gpu = first.get("gpu_name")
    return (f"Job **{first.get('job_name') or job_id}** (`{job_id}`), {when}{took}; host "
            f"{first.get('host')}, CPU {first.get('cpu_model')} (int8 ISA: {isa or 'none'}), "
            f"{first.get('threads')} thread(s)" + (f", GPU {gpu}" if gpu else "") + ".")


def _speed_range(rows: list[dict]) -> str:
    parts = []
    for r in sorted(rows, key=lambda r: r["batch_size"]):
        text = r.get("speedup_vs_fastest_fp32_text")
        if text:
            parts.append(f"batch {r['batch_size']} {text}")
    return ", ".join(parts) if parts else "speed not measured"


def variant_lines(models: list[dict], summary: list[dict], recs: list[dict]) -> list[str]:
    """One line per quantized variant: size, speed with CI per batch, accuracy with CI, met."""
    from qbench.report.recommend import Target, accuracy_of

    by_unit = defaultdict(list)
    for s in summary:
        if s.get("batch_size") is not None and s.get("status") == "ok":
            by_unit[(s["model_id"], s["mode"], s["device"])].append(s)
    targets = {(r["model_id"], r["device"]): (r["target_metric"], r["target"]) for r in recs}
    lines = []
    for m in sorted(models, key=unit_order):
        if m["mode"] in FP32_BASELINES:
            continue
        name = f"**{m['model_id']} {m['mode']}** ({m['device']})"
        if m["status"] != "ok":
            lines.append(f"{name}: failed: {m['error']}")
            continue
        size = ""
        if m.get("size_bytes") and m.get("fp32_size_bytes"):
            size = (f"{m['fp32_size_bytes'] / m['size_bytes']:.1f}x smaller "
                    f"({m['size_bytes'] / MIB:.1f} MiB); ")
        metric, threshold = targets.get((m["model_id"], m["device"]), (None, None))
        target = Target(*(
            (threshold, 0.99, 0.999) if metric == "map_drop_pts" else
            (1.0, threshold, 0.999) if metric == "agreement_top1" else
            (1.0, 0.99, threshold) if metric == "output_cosine" and threshold else (1.0, 0.99, 0.999)))
        acc = accuracy_of(m, {}, target)
        met = "**meets the target**" if acc.meets else "**misses the target**"
        lines.append(f"{name}: {size}speed over the fastest fp32: "
                     f"{_speed_range(by_unit[(m['model_id'], m['mode'], m['device'])])}; "
                     f"{acc.text()}: {met}.")
    return lines


def _int8_mode(name: str) -> bool:
    """A mode whose weights should be int8 (the mode table's int8 and mixed precisions)."""
    mode = MODES.get(name)
    return mode is not None and mode.precision in ("int8", "mixed")


WORK_TOLERANCE = 0.05  # a relative difference in a detector's work (worker/evaluate/work.py)
# What a mode's precision (the mode table's) says its conv/matmul operators run in.
NAMED_PRECISION = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8"}


def ran_other_precision(m: dict) -> str | None:
    """Where the runtime ran most conv/matmul operators in another precision than the mode's
    name says (an fp32 mode run in bf16, an int8 mode whose convs mostly ran float): a line
    saying so, else None. Rows without the read-out (older rows, mixed modes) say nothing."""
    mode = MODES.get(m["mode"])
    named = NAMED_PRECISION.get(mode.precision) if mode is not None else None
    ran = m.get("executed_precision")
    if named is None or ran is None or ran == named or m.get("status") != "ok":
        return None
    counts = json.loads(m.get("executed_ops_by_precision") or "{}")
    return (f"ran in {ran} ({counts.get(ran, 0)} of {sum(counts.values())} conv/matmul "
            f"operators), not the {named} its name says")


def work_difference(row: dict[str, Any]) -> str | None:
    """A line saying how a row's work differs from its reference's by more than
    WORK_TOLERANCE, else None (rows without the columns say nothing). Where a two-stage
    detector's proposals are counted on both sides they are its work: with the same proposals
    into the box head, fewer detections past the score threshold is an accuracy change (the
    mAP drop says it), not less work. Detections are the work of detectors counted no further."""
    diffs = []
    counted = row.get("proposals_per_image") is not None and bool(
        row.get("reference_proposals_per_image"))
    for what, label in (("proposals", "proposals into the box head"),
                        *(() if counted else (("detections", "detections"),))):
        ours, theirs = row.get(f"{what}_per_image"), row.get(f"reference_{what}_per_image")
        if ours is None or not theirs:
            continue
        change = ours / theirs - 1.0
        if abs(change) > WORK_TOLERANCE:
            diffs.append(f"{ours:.1f} {label} per image vs {theirs:.1f} ({change:+.0%})")
    if not diffs:
        return None
    return (f"does different work than {row.get('work_reference_mode')}: " + "; ".join(diffs)
            + ": a speedup that does less is not a speedup")


def flag_lines(models: list[dict], summary: list[dict], regressions: list[str],
               base: str | None) -> list[str]:
    """Regressions, unstable rows, failures, and rows not doing what their name says."""
    out = [f"regression against {base}: {r}" for r in regressions]
    for m in sorted(models, key=unit_order):
        if m["status"] != "ok":
            out.append(f"{m['model_id']} {m['mode']} {m['device']} failed: {m['error']}")
        elif _int8_mode(m["mode"]) and m.get("params_int8_fraction") == 0:
            out.append(f"{m['model_id']} {m['mode']} {m['device']}: no int8 weights: it runs "
                       "in float, whatever its name")
        for problem in (ran_other_precision(m), work_difference(m)):
            if problem and m["status"] == "ok":
                out.append(f"{m['model_id']} {m['mode']} {m['device']}: {problem}")
        if m.get("mixed_target_met") is False:
            out.append(f"{m['model_id']} {m['mode']} {m['device']}: the mixed-precision search "
                       "did not reach its target")
    unstable = [s for s in summary if s.get("stable") is False]
    if unstable:
        out.append(f"{len(unstable)} unstable row(s) (latency CV over the limit): "
                   + ", ".join(f"{s['mode']} batch {s['batch_size']} {stability_text(s)}"
                               for s in unstable[:8])
                   + ("…" if len(unstable) > 8 else ""))
    failed_pairs = [s for s in summary if str(s.get("pairing") or "").startswith("failed")]
    if failed_pairs:
        out.append("paired timing failed for: " + ", ".join(
            f"{s['mode']} batch {s['batch_size']}" for s in failed_pairs))
    for s in summary:
        if s.get("status") == "oom":
            out.append(f"out of memory: {s['model_id']} {s['mode']} batch {s['batch_size']}")
    return out


def nightly_lines(history: History | None, regressions: list[str], base: str | None) -> list[str]:
    """The verdict against the previous night and the trend over the history, in words."""
    if base is None:
        return []
    verdict = (f"**{len(regressions)} regression(s)** against the previous night ({base})."
               if regressions else
               f"**No regression** against the previous night ({base}): every change is within "
               "the noise or below the thresholds.")
    lines = [verdict]
    if history is None or len(history.jobs) < 2:
        return lines
    moves = []
    for (model, mode, device, batch), nights in sorted(history.series.items()):
        if len(nights) < 2 or nights[-1].job_id != history.jobs[-1]:
            continue
        change = 100 * (nights[-1].p50 / nights[0].p50 - 1) if nights[0].p50 else 0.0
        moves.append((abs(change), change, f"{model} {mode} {device} batch {batch}",
                      nights[0].p50, nights[-1].p50, len(nights)))
    if not moves:
        return lines
    moves.sort(reverse=True)
    steady = [m for m in moves if m[0] <= TREND_STEADY_PCT]
    text = (f"Trend over the last {len(history.jobs)} nights: {len(steady)} of {len(moves)} "
            f"rows steady (median latency within ±{TREND_STEADY_PCT:.0f}% of the first night)")
    moved = [m for m in moves if m[0] > TREND_STEADY_PCT][:3]
    if moved:
        text += "; moved most: " + "; ".join(
            f"{what} {'slower' if c > 0 else 'faster'} by {abs(c):.0f}% ({a:.1f} → {b:.1f} ms)"
            for _, c, what, a, b, _ in moved)
    lines.append(text + ".")
    return lines


def recommendation_lines(recs: list[dict]) -> list[str]:
    """One line per model x device when every batch size has the same answer, else one per
    batch size (each row's own verdict)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in recs:
        groups[(r["model_id"], r["device"])].append(r)
    lines = []
    for (model, device), rows in groups.items():
        modes = {r["recommended_mode"] for r in rows}
        if len(rows) == 1 or len(modes) != 1 or None in modes or any(r["closest_mode"] for r in rows):
            lines += [r["verdict"] for r in rows]
            continue
        mode = modes.pop()
        speeds = ", ".join(
            f"batch {r['batch_size']} "
            + (f"{r['speedup_vs_fastest_fp32']:.2f}x" if r["speedup_vs_fastest_fp32"] else "–")
            + (f" [{r['speedup_ci_low']:.2f}–{r['speedup_ci_high']:.2f}]"
               if r["speedup_ci_low"] and r["speedup_ci_high"] else "") for r in rows)
        first = rows[0]
        line = (f"{model} on {device}: use **{mode}** at every batch size measured; speedup over "
                f"{first['fastest_fp32_mode']}: {speeds}")
        if first["accuracy_metric"] != "baseline":
            from qbench.report.recommend import Accuracy

            acc = Accuracy(first["accuracy_metric"], first["accuracy_value"],
                           first["accuracy_ci_low"], first["accuracy_ci_high"], first["target"])
            clears = acc.interval_clears
            line += "; " + acc.text() + (
                ", its whole interval clears the target" if clears else
                ", its interval reaches past the target" if clears is False else "")
        ups = {r["runner_up_mode"] for r in rows if r["runner_up_mode"]}
        if ups:
            apart = sum(bool(r["told_apart"]) for r in rows if r["runner_up_mode"])
            line += (f"; runner-up {'/'.join(sorted(ups))}, told apart by its measured interval "
                     f"at {apart} of {sum(1 for r in rows if r['runner_up_mode'])} batch sizes")
        lines.append(line + ".")
    return lines


def first_screen(job_id: str, models: list[dict], latency: list[dict], summary: list[dict],
                 recs: list[dict[str, Any]], regressions: list[str], base: str | None,
                 history: History | None, later: list[Any] | None = None) -> list[Block]:
    blocks: list[Block] = [Para(job_line(models, latency, job_id, later))]
    nightly = nightly_lines(history, regressions, base)
    if nightly:
        blocks += [Heading("Tonight against the previous night"),
                   Para(nightly[0], alert=bool(regressions)), *(Para(t) for t in nightly[1:])]
    if recs:
        blocks += [Heading("Recommendation"), Bullets(recommendation_lines(recs))]
    variants = variant_lines(models, summary, recs)
    if variants:
        blocks += [Heading("Each variant"), Bullets(variants)]
    flags = flag_lines(models, summary, [] if nightly else regressions, base)
    if flags:
        blocks += [Heading("Flags"), Bullets(flags)]
    return blocks
