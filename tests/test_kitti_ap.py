"""KITTI's own 2-D AP on cases whose value is known by hand.

One 1242x375 image holds 41 Cars in a row, 50 px tall, unoccluded and untruncated, so they
count at every difficulty. With 41 counted boxes the devkit's 41 score thresholds reach every
recall step, so a detector that finds them all with no false positive has AP 1 (R40: the mean
precision at recall 1/40 .. 40/40).
"""

from __future__ import annotations

import pytest

from qbench.evaluate.kitti_ap import kitti_ap, kitti_scores, score_thresholds

CARS = [["Car", 0.0, 0, 10.0 + 30 * i, 100.0, 38.0 + 30 * i, 150.0] for i in range(41)]
IOU = {"Car": 0.7, "Pedestrian": 0.5}


def _doc(objects: list[list]) -> dict:
    return {"images": [{"id": 1, "file_name": "000000.png", "width": 1242, "height": 375}],
            "annotations": [], "kitti": {"1": objects},
            "categories": [{"id": 1, "name": "Car"}, {"id": 2, "name": "Pedestrian"}]}


def _det(box, score: float = 0.9, category: int = 1) -> dict:
    x1, y1, x2, y2 = box
    return {"image_id": 1, "category_id": category, "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": score}


def _perfect(objects=CARS) -> list[dict]:
    return [_det(o[3:7], 0.5 + 0.01 * i) for i, o in enumerate(objects) if o[0] == "Car"]


def _car_ap(objects, detections) -> dict:
    return kitti_ap(_doc(objects), detections, [1], IOU)["Car"]


def test_a_perfect_detector_has_ap_one_at_every_difficulty():
    assert _car_ap(CARS, _perfect()) == {"easy": 1.0, "moderate": 1.0, "hard": 1.0}
    assert kitti_ap(_doc(CARS), _perfect(), [1], IOU)["Pedestrian"] == dict.fromkeys(
        ("easy", "moderate", "hard"))  # no pedestrian: undefined, not 0


def test_a_missed_hard_box_costs_only_the_hard_ap():
    # occluded 2: ignored at easy (max 0) and moderate (max 1), counted at hard (max 2).
    # Hard finds 41 of 42: recall 41/42 = 0.976 covers the recall steps 1/40 .. 39/40 but
    # not 40/40, so AP = 39/40.
    hard = ["Car", 0.0, 2, 10.0, 200.0, 38.0, 250.0]
    ap = _car_ap([*CARS, hard], _perfect())
    assert (ap["easy"], ap["moderate"]) == (1.0, 1.0)
    assert ap["hard"] == pytest.approx(39 / 40)


def test_a_missed_box_below_the_easy_height_costs_moderate_and_hard():
    small = ["Car", 0.0, 0, 10.0, 200.0, 38.0, 230.0]  # 30 px: <= 40 easy, > 25 moderate
    ap = _car_ap([*CARS, small], _perfect())
    assert ap["easy"] == 1.0
    assert ap["moderate"] == ap["hard"] == pytest.approx(39 / 40)


def test_a_detection_inside_dont_care_is_not_a_false_positive():
    region = ["DontCare", -1.0, -1, 100.0, 250.0, 300.0, 350.0]
    inside = _det((120.0, 260.0, 160.0, 320.0), score=0.99)  # fully inside: over its own area 1
    assert _car_ap([*CARS, region], [*_perfect(), inside])["moderate"] == 1.0
    # the same detection without the region: a false positive above every true one, so the
    # precision is at most 41/42 everywhere and exactly that at full recall
    assert _car_ap(CARS, [*_perfect(), inside])["moderate"] == pytest.approx(41 / 42)


def test_a_van_detected_as_car_is_ignored_but_a_truck_is_not():
    van = ["Van", 0.0, 0, 100.0, 250.0, 160.0, 320.0]
    on_it = _det((100.0, 250.0, 160.0, 320.0), score=0.99)
    assert _car_ap([*CARS, van], [*_perfect(), on_it])["moderate"] == 1.0
    truck = ["Truck", *van[1:]]
    assert _car_ap([*CARS, truck], [*_perfect(), on_it])["moderate"] == pytest.approx(41 / 42)


def test_a_car_needs_iou_above_its_threshold():
    # a detection shifted by 6 of 28 px: IoU 22/34 = 0.65, below Car's 0.7 (a miss) and
    # above Pedestrian's 0.5
    shifted = [_det((o[3] + 6, o[4], o[5] + 6, o[6]), 0.9) for o in CARS]
    assert _car_ap(CARS, shifted)["moderate"] == 0.0
    loose = kitti_ap(_doc(CARS), shifted, [1], {"Car": 0.6})["Car"]
    assert loose["moderate"] == 1.0


def test_thresholds_step_recall_by_one_fortieth():
    assert len(score_thresholds(__import__("numpy").linspace(1, 0.1, 41), 41)) == 41
    # 2 boxes both found: only two thresholds, as the devkit samples them
    assert score_thresholds(__import__("numpy").asarray([0.9, 0.8]), 2) == [0.9, 0.8]


def test_drop_interval_is_zero_for_the_same_outputs_and_holds_a_loss():
    images = [{"id": i, "file_name": f"{i}.png", "width": 1242, "height": 375}
              for i in range(1, 9)]
    doc = {"images": images, "annotations": [], "kitti": {str(i): CARS for i in range(1, 9)},
           "categories": [{"id": 1, "name": "Car"}]}
    perfect = [{**d, "image_id": i} for i in range(1, 9) for d in _perfect()]
    columns, classes = kitti_scores(doc, perfect, perfect, list(range(1, 9)), {"Car": 0.7})
    assert columns["kitti_ap_moderate"] == 1.0
    assert (columns["kitti_ap_moderate_drop_pts_ci_low"],
            columns["kitti_ap_moderate_drop_pts_ci_high"]) == (0.0, 0.0)
    # the quantized model misses a third of the cars on every image: a sure loss
    worse = [d for d in perfect if int(d["bbox"][0]) % 90 != 10]
    columns, classes = kitti_scores(doc, perfect, worse, list(range(1, 9)), {"Car": 0.7})
    drop = 100 * (columns["kitti_ap_moderate_fp32"] - columns["kitti_ap_moderate"])
    assert drop > 20
    assert 0 < columns["kitti_ap_moderate_drop_pts_ci_low"] <= drop
    assert drop <= columns["kitti_ap_moderate_drop_pts_ci_high"] + 1e-9
    assert classes["Car"]["ap_moderate"] == columns["kitti_ap_moderate"]
