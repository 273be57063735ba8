"""The mAP columns of a quantized detector, with a paired bootstrap interval of its mAP drop.

A drop of 0.9 points on 32 images is noise or a loss depending on how the images vary, and a
user cannot quote it without knowing which. pycocotools matches detections image by image, so
the images are resampled with replacement and the same resample is scored for fp32 and the
quantized model: the interval of the difference, as the speedup's is of a paired ratio.
Matching runs once per model (COCOeval.evaluate); each draw only re-accumulates the precision
of the resampled images, which is what makes a few hundred draws cheap.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np

DRAWS = 400
ALL_AREAS = [0.0, 1e10]  # COCO's "all" area range


def _matched(gt: dict[str, Any], predictions: list[dict], image_ids: list[int]):
    """COCOeval after evaluate(), areas "all" and 100 detections only (the mAP's own setting),
    or None when the model found nothing."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    wanted = set(image_ids)
    preds = [copy.deepcopy(p) for p in predictions if p["image_id"] in wanted]
    if not preds:
        return None
    coco_gt = COCO()
    coco_gt.dataset = {"info": {}, **copy.deepcopy(gt)}
    coco_gt.createIndex()
    ev = COCOeval(coco_gt, coco_gt.loadRes(preds), "bbox")
    ev.params.imgIds = sorted(image_ids)
    ev.params.areaRng, ev.params.areaRngLbl, ev.params.maxDets = [ALL_AREAS], ["all"], [100]
    ev.evaluate()
    return ev


def _precision(ev, picks: np.ndarray) -> np.ndarray:
    """Precision [IoU threshold, recall, category] of the images at positions `picks` (repeats
    allowed): evalImgs are laid out category by category, image by image, with one area range."""
    n_images = len(ev._paramsEval.imgIds)
    per_image = ev.evalImgs
    categories = len(per_image) // n_images
    ev.evalImgs = [per_image[k * n_images + i] for k in range(categories) for i in picks]
    ids = ev._paramsEval.imgIds
    ev._paramsEval.imgIds = ev.params.imgIds = list(range(len(picks)))
    try:
        ev.accumulate()
    finally:
        ev.evalImgs, ev._paramsEval.imgIds, ev.params.imgIds = per_image, ids, ids
    return ev.eval["precision"][:, :, :, 0, 0]


def _mean_valid(precision: np.ndarray) -> float:
    valid = precision[precision > -1]  # -1: a category with no ground truth in these images
    return float(valid.mean()) if valid.size else float("nan")


def _class_ap(precision: np.ndarray | None, present: np.ndarray) -> np.ndarray:
    """AP per category ([category]) of a precision [IoU, recall, category] array: NaN where the
    images hold no ground truth of it; 0 for a model that found nothing (precision None)."""
    if precision is None:
        return np.where(present, 0.0, np.nan)
    valid = precision > -1
    counts = valid.sum(axis=(0, 1))
    sums = np.where(valid, precision, 0.0).sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _resampled_map(ev, picks: np.ndarray) -> float:
    """mAP@[.5:.95] of the images at positions `picks`; 0 for a model that found nothing."""
    return 0.0 if ev is None else _mean_valid(_precision(ev, picks))


def _percentiles(diffs: np.ndarray) -> tuple[float, float] | None:
    diffs = diffs[np.isfinite(diffs)]
    if not diffs.size:
        return None
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


def _draws(evs: list, n_images: int, draws: int, seed: int,
           gt_counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per draw, in points: mAP(fp32) − mAP(quantized), and with gt_counts ([image, category]
    ground truth per image) the same difference of each category's AP ([draw, category])."""
    rng = np.random.default_rng(seed)
    diffs, class_diffs = [], []
    for _ in range(draws):
        picks = rng.integers(0, n_images, n_images)
        precisions = [None if ev is None else _precision(ev, picks) for ev in evs]
        maps = [0.0 if p is None else _mean_valid(p) for p in precisions]
        diffs.append(100 * (maps[0] - maps[1]))
        if gt_counts is not None:
            present = gt_counts[picks].sum(axis=0) > 0
            aps = [_class_ap(p, present) for p in precisions]
            class_diffs.append(100 * (aps[0] - aps[1]))
    return np.asarray(diffs), (np.asarray(class_diffs) if gt_counts is not None else None)


def _interval(evs: list, n_images: int, draws: int, seed: int) -> tuple[float, float] | None:
    return _percentiles(_draws(evs, n_images, draws, seed)[0])


def _drop_ci(evs: list, same: bool, n_images: int, draws: int,
             seed: int) -> tuple[float, float] | None:
    if n_images < 2:
        return None
    if same:  # the fp32 unit against itself: every draw is 0, skip the draws
        return 0.0, 0.0
    return _interval(evs, n_images, draws, seed)


def map_drop_interval(gt: dict[str, Any], fp32: list[dict], quantized: list[dict],
                      image_ids: list[int], draws: int = DRAWS,
                      seed: int = 0) -> tuple[float, float] | None:
    """95% percentile interval, in mAP points, of mAP(fp32) − mAP(quantized) over resamples of
    the images; None with fewer than two images. Seeded: the same job gives the same interval."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        evs = [_matched(gt, p, image_ids) for p in (fp32, quantized)]
        return _drop_ci(evs, fp32 == quantized, len(image_ids), draws, seed)


MAP_COLUMNS = ("map", "map50", "map_fp32", "map50_fp32", "map_drop_pts_ci_low",
               "map_drop_pts_ci_high")


def map_columns(gt: dict[str, Any], fp32: list[dict], quantized: list[dict],
                image_ids: list[int]) -> dict[str, float | None]:
    """map, map50, map_fp32, map50_fp32 and map_drop_pts_ci_low/high of COCO-format results.
    Each model is matched once: the point figures are the accumulation over every image, as
    pycocotools' summary computes them, and the draws re-accumulate the same matches."""
    return map_and_class_scores(gt, fp32, quantized, image_ids)[0]


def _gt_counts(gt: dict[str, Any], image_ids: list[int], categories: list[int]) -> np.ndarray:
    """Ground-truth boxes (crowd regions not counted) per evaluation image and category."""
    row = {i: k for k, i in enumerate(image_ids)}
    col = {c: k for k, c in enumerate(categories)}
    counts = np.zeros((len(image_ids), len(categories)), dtype=np.int64)
    for a in gt.get("annotations", []):
        if a["image_id"] in row and a["category_id"] in col and not a.get("iscrowd"):
            counts[row[a["image_id"]], col[a["category_id"]]] += 1
    return counts


def map_and_class_scores(gt: dict[str, Any], fp32: list[dict], quantized: list[dict],
                         image_ids: list[int]) -> tuple[dict[str, float | None], list[dict]]:
    """map_columns, and per category: category_id, class, gt_count, ap, ap50, ap_fp32,
    ap50_fp32 and ap_drop_pts_ci_low/high (the paired interval of its AP drop, from the same
    draws as the mAP's)."""
    wanted = set(image_ids)
    if not any(a["image_id"] in wanted for a in gt.get("annotations", [])):
        return dict.fromkeys(MAP_COLUMNS), []  # no ground truth: mAP is undefined
    categories = sorted(int(c["id"]) for c in gt["categories"])
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt["categories"]}
    counts = _gt_counts(gt, image_ids, categories)
    present = counts.sum(axis=0) > 0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        evs = [_matched(gt, p, image_ids) for p in (fp32, quantized)]
        every = np.arange(len(image_ids))
        points, class_points = [], []
        for ev in evs:
            precision = _precision(ev, every) if ev is not None else None
            points.append((0.0, 0.0) if precision is None else
                          (_mean_valid(precision), _mean_valid(precision[0])))  # IoU 0.5
            class_points.append((_class_ap(precision, present),
                                 _class_ap(None if precision is None else precision[:1],
                                           present)))
        same, n = fp32 == quantized, len(image_ids)
        if n < 2:
            ci, class_ci = None, [None] * len(categories)
        elif same:  # the fp32 unit against itself: every draw is 0, skip the draws
            ci, class_ci = (0.0, 0.0), [(0.0, 0.0) if p else None for p in present]
        else:
            diffs, class_diffs = _draws(evs, n, DRAWS, 0, counts)
            ci = _percentiles(diffs)
            class_ci = [_percentiles(class_diffs[:, k]) for k in range(len(categories))]
    (map_fp32, map50_fp32), (map_q, map50_q) = points
    columns = {"map": map_q, "map50": map50_q, "map_fp32": map_fp32, "map50_fp32": map50_fp32,
               "map_drop_pts_ci_low": ci and ci[0], "map_drop_pts_ci_high": ci and ci[1]}
    (ap_fp32, ap50_fp32), (ap_q, ap50_q) = class_points
    classes = []
    for k, cid in enumerate(categories):
        classes.append({
            "category_id": cid, "class": names[cid], "gt_count": int(counts[:, k].sum()),
            "ap": _finite(ap_q[k]), "ap50": _finite(ap50_q[k]), "ap_fp32": _finite(ap_fp32[k]),
            "ap50_fp32": _finite(ap50_fp32[k]),
            "ap_drop_pts_ci_low": class_ci[k] and class_ci[k][0],
            "ap_drop_pts_ci_high": class_ci[k] and class_ci[k][1]})
    return columns, classes


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
