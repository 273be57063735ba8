"""Accuracy per class: the classes a quantized detector loses most on, against fp32.

A mean over classes can hold while one class (pedestrians, cyclists) loses several points, so
the report lists each unit's classes with the largest AP drop, with the paired bootstrap
interval of that drop, and flags a class that loses more than the job's
quantization.target.max_map_drop (1 point without one) while the unit's mAP does not.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from qbench.report.blocks import Block, Heading, Para, Table
from qbench.report.tables import fmt, unit_order

DEFAULT_THRESHOLD_PTS = 1.0
SHOWN_PER_UNIT = 3


def _drop(row: dict, name: str = "ap") -> float | None:
    base, value = row.get(f"{name}_fp32"), row.get(name)
    return None if base is None or value is None else 100 * (base - value)


def _with_ci(drop: float | None, low: float | None, high: float | None) -> str:
    if drop is None:
        return "–"
    if low is None or high is None:
        return f"{drop:+.2f}"
    return f"{drop:+.2f} [{low:+.2f} to {high:+.2f}]"


def _map_drop(m: dict) -> float | None:
    return (None if m.get("map") is None or m.get("map_fp32") is None
            else 100 * (m["map_fp32"] - m["map"]))


def threshold_pts(plan_max_map_drop: float | None) -> float:
    return DEFAULT_THRESHOLD_PTS if plan_max_map_drop is None else float(plan_max_map_drop)


def class_findings(models: list[dict], classes: list[dict],
                   threshold: float) -> list[tuple[dict, list[dict], list[dict]]]:
    """Per quantized unit with class rows, in report order: (its models row, its classes by
    drop, largest first, the first SHOWN_PER_UNIT, and the flagged ones: a class drop above
    threshold while the unit's mAP drop is not)."""
    by_unit: dict[str, list[dict]] = defaultdict(list)
    for c in classes:
        by_unit[c["unit_id"]].append(c)
    out = []
    for m in sorted(models, key=unit_order):
        rows = [c for c in by_unit.get(m["unit_id"], []) if _drop(c) is not None]
        if not rows or m["status"] != "ok" or m.get("map") == m.get("map_fp32") and all(
                c["ap"] == c["ap_fp32"] for c in rows):
            continue  # a reference unit against itself has no drop to show
        rows.sort(key=lambda c: -_drop(c))
        mean = _map_drop(m)
        flagged = [c for c in rows if _drop(c) > threshold
                   and (mean is None or mean <= threshold)]
        out.append((m, rows[:SHOWN_PER_UNIT], flagged))
    return out


def kitti_table(models: list[dict]) -> Table | None:
    """KITTI's moderate AP (mean over classes) per unit, with its drop's interval."""
    rows = [[m["model_id"], m["mode"], m["device"], fmt(m.get("kitti_ap_moderate"), ".3f"),
             fmt(m.get("kitti_ap_moderate_fp32"), ".3f"),
             _with_ci(_drop(m, "kitti_ap_moderate"), m.get("kitti_ap_moderate_drop_pts_ci_low"),
                      m.get("kitti_ap_moderate_drop_pts_ci_high"))]
            for m in sorted(models, key=unit_order) if m.get("kitti_ap_moderate") is not None]
    if not rows:
        return None
    return Table(["model", "mode", "device", "KITTI AP moderate (R40, mean over classes)",
                  "fp32", "drop pts [95% CI]"], rows, align_right={3, 4, 5})


def class_blocks(models: list[dict], classes: list[dict], threshold: float) -> list[Block]:
    means = kitti_table(models)
    findings = class_findings(models, classes, threshold)
    if not findings:
        return [Heading("KITTI AP"), means] if means else []
    kitti = any(c.get("ap_moderate") is not None for c in classes)
    headers = ["model", "mode", "device", "class", "GT boxes", "AP", "AP fp32",
               "AP drop pts [95% CI]", "AP@.5"]
    if kitti:
        headers += ["KITTI moderate AP", "moderate drop pts [95% CI]", "easy / hard AP"]
    headers.append("flag")
    rows, alerts = [], []
    for m, top, flagged in findings:
        shown = top + [c for c in flagged if c not in top]
        for c in shown:
            flag = ""
            if c in flagged:
                flag = (f"**loses {_drop(c):.2f} pts (> {threshold:g}) while mAP loses "
                        f"{fmt(_map_drop(m), '.2f')}**")
                alerts.append(f"{m['model_id']} {m['mode']} {m['device']}: {c['class']} "
                              f"AP −{_drop(c):.2f} pts, mAP −{fmt(_map_drop(m), '.2f')} pts")
            row = [m["model_id"], m["mode"], m["device"], c["class"], fmt(c["gt_count"], "d"),
                   fmt(c["ap"], ".3f"), fmt(c["ap_fp32"], ".3f"),
                   _with_ci(_drop(c), c.get("ap_drop_pts_ci_low"), c.get("ap_drop_pts_ci_high")),
                   fmt(c["ap50"], ".3f")]
            if kitti:
                row += [fmt(c.get("ap_moderate"), ".3f"),
                        _with_ci(_drop(c, "ap_moderate"), c.get("ap_moderate_drop_pts_ci_low"),
                                 c.get("ap_moderate_drop_pts_ci_high")),
                        f"{fmt(c.get('ap_easy'), '.3f')} / {fmt(c.get('ap_hard'), '.3f')}"]
            rows.append([*row, flag])
    blocks: list[Block] = [Heading("KITTI AP"), means] if means else []
    blocks.append(Heading("Accuracy per class: the largest drops against fp32"))
    if alerts:
        blocks.append(Para(f"{len(alerts)} class(es) lose more than {threshold:g} AP point(s) "
                           "though the unit's mAP does not: " + "; ".join(alerts), alert=True))
    blocks.append(Table(headers, rows, align_right=set(range(4, len(headers) - 1))))
    blocks.append(Para(f"Per unit, the {SHOWN_PER_UNIT} classes whose COCO AP@[.5:.95] drops "
                       "most against the fp32 model scored in the same unit, and any flagged "
                       "class; the interval is the paired 95% bootstrap over the evaluation "
                       "images (the mAP drop's resamples). Every class is in the "
                       "`class_metrics` table."))
    return blocks


def summary_columns(m: dict, classes: list[dict], threshold: float) -> dict[str, Any]:
    """summary.csv's per-class columns of one unit: its worst class and the flagged ones."""
    kitti = {}
    if m.get("kitti_ap_moderate") is not None:
        kitti = {"kitti_ap_moderate": m["kitti_ap_moderate"],
                 "kitti_ap_moderate_drop_pts": _drop(m, "kitti_ap_moderate"),
                 "kitti_ap_moderate_drop_pts_ci_low": m.get("kitti_ap_moderate_drop_pts_ci_low"),
                 "kitti_ap_moderate_drop_pts_ci_high": m.get("kitti_ap_moderate_drop_pts_ci_high")}
    rows = sorted((c for c in classes if c["unit_id"] == m["unit_id"] and _drop(c) is not None),
                  key=lambda c: -_drop(c))
    if not rows:
        return kitti
    worst = rows[0]
    mean = _map_drop(m)
    flagged = [c["class"] for c in rows
               if _drop(c) > threshold and (mean is None or mean <= threshold)]
    return {"worst_class": worst["class"], "worst_class_ap_drop_pts": _drop(worst),
            "worst_class_ap_drop_pts_ci_low": worst.get("ap_drop_pts_ci_low"),
            "worst_class_ap_drop_pts_ci_high": worst.get("ap_drop_pts_ci_high"),
            "classes_over_threshold": ";".join(flagged) or None,
            "class_threshold_pts": threshold, **kitti}
