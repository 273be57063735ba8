"""The paired bootstrap interval of a detector's mAP drop."""

from __future__ import annotations

import numpy as np
import pytest

from qbench.evaluate import coco
from qbench.evaluate.map_interval import _matched, _resampled_map, map_columns, map_drop_interval


def _scenes(n: int = 12) -> dict:
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(1, n + 1):
        images.append({"id": i, "file_name": f"{i}.png", "width": 200, "height": 200})
        for _ in range(3):
            x, y, w, h = (float(v) for v in rng.uniform([0, 0, 20, 20], [150, 150, 50, 50]))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 3)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def _detections(doc: dict, shift: float, images: set[int] | None = None) -> list[dict]:
    """Each true box found, moved right by `shift` of its width on `images` (default all)."""
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
             "bbox": [a["bbox"][0] + (shift * a["bbox"][2]
                                      if images is None or a["image_id"] in images else 0),
                      *a["bbox"][1:]]}
            for a in doc["annotations"]]


def test_every_image_once_gives_pycocotools_own_map():
    doc = _scenes()
    preds = _detections(doc, 0.15, images={1, 2, 3, 4})
    ids = [im["id"] for im in doc["images"]]
    ev = _matched(doc, preds, ids)
    assert _resampled_map(ev, np.arange(len(ids))) == pytest.approx(
        coco.evaluate_detections(doc, preds, ids)["map"])
    own = coco.evaluate_detections(doc, preds, ids)
    cols = map_columns(doc, _detections(doc, 0.0), preds, ids)
    assert (cols["map"], cols["map50"]) == pytest.approx((own["map"], own["map50"]))
    assert map_columns(doc, preds, preds, [])["map"] is None  # no ground truth: undefined


def test_interval_holds_the_drop_and_is_zero_for_identical_outputs():
    doc = _scenes()
    ids = [im["id"] for im in doc["images"]]
    fp32 = _detections(doc, 0.0)
    assert map_drop_interval(doc, fp32, fp32, ids) == (0.0, 0.0)
    # a loss on every image: the whole interval is a loss
    everywhere = map_columns(doc, fp32, _detections(doc, 0.2), ids)
    drop = 100 * (everywhere["map_fp32"] - everywhere["map"])
    assert 0 < everywhere["map_drop_pts_ci_low"] <= drop <= everywhere["map_drop_pts_ci_high"]
    # the same loss on 2 of 12 images: the interval is wide and reaches (almost) no loss
    few = map_columns(doc, fp32, _detections(doc, 0.2, images={1, 2}), ids)
    assert few["map_drop_pts_ci_high"] - few["map_drop_pts_ci_low"] > 2 * (
        everywhere["map_drop_pts_ci_high"] - everywhere["map_drop_pts_ci_low"])
    assert few["map_drop_pts_ci_low"] < 0.5 * 100 * (few["map_fp32"] - few["map"])
    # seeded: the same inputs give the same interval
    assert map_columns(doc, fp32, _detections(doc, 0.2, images={1, 2}), ids) == few


def test_a_model_that_finds_nothing_and_too_few_images():
    doc = _scenes()
    ids = [im["id"] for im in doc["images"]]
    cols = map_columns(doc, _detections(doc, 0.0), [], ids)
    assert cols["map"] == 0.0
    assert cols["map_drop_pts_ci_low"] == pytest.approx(100 * cols["map_fp32"], abs=5)
    assert map_drop_interval(doc, _detections(doc, 0.0), [], [1]) is None
