"""The report's per-class section: largest drops first, and a class flagged when it loses more
than the threshold while the unit's mAP does not."""

from __future__ import annotations

from qbench.report.blocks import Para, Table
from qbench.report.classes import class_blocks, class_findings, summary_columns


def _unit(mode: str, map_q: float, map_fp32: float = 0.80) -> dict:
    return {"unit_id": mode, "job_id": "j", "model_id": "det", "mode": mode, "device": "cpu",
            "status": "ok", "map": map_q, "map_fp32": map_fp32}


def _cls(unit: str, name: str, ap: float, ap_fp32: float) -> dict:
    return {"unit_id": unit, "class": name, "gt_count": 10, "ap": ap, "ap_fp32": ap_fp32,
            "ap50": ap, "ap_drop_pts_ci_low": 0.5, "ap_drop_pts_ci_high": 4.0}


def test_a_class_losing_more_than_the_threshold_is_flagged_when_the_mean_holds():
    models = [_unit("fp32", 0.80), _unit("int8", 0.795)]  # mean: -0.5 pts, within 1 pt
    classes = [_cls("fp32", "car", 0.9, 0.9), _cls("fp32", "pedestrian", 0.7, 0.7),
               _cls("int8", "car", 0.905, 0.9), _cls("int8", "pedestrian", 0.68, 0.7),
               _cls("int8", "cyclist", 0.795, 0.80)]
    [(m, top, flagged)] = class_findings(models, classes, 1.0)  # fp32 against itself: none
    assert m["mode"] == "int8"
    assert [c["class"] for c in top] == ["pedestrian", "cyclist", "car"]
    assert [c["class"] for c in flagged] == ["pedestrian"]
    blocks = class_blocks(models, classes, 1.0)
    alert = next(b for b in blocks if isinstance(b, Para) and b.alert)
    assert "pedestrian AP −2.00 pts, mAP −0.50 pts" in alert.text
    table = next(b for b in blocks if isinstance(b, Table))
    assert table.rows[0][3] == "pedestrian" and "+2.00 [+0.50 to +4.00]" in table.rows[0]
    cols = summary_columns(models[1], classes, 1.0)
    assert cols["worst_class"] == "pedestrian" and cols["classes_over_threshold"] == "pedestrian"
    # with a job threshold of 3 points nothing is flagged; when the mean itself drops more
    # than the threshold, the class is no surprise and is not flagged either
    assert class_findings(models, classes, 3.0)[0][2] == []
    assert class_findings([_unit("int8", 0.70)], classes, 1.0)[0][2] == []
