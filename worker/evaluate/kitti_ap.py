"""KITTI's own 2-D detection AP (the object benchmark's devkit, evaluate_object.cpp), per class
and difficulty, with a paired bootstrap interval of the moderate AP's drop.

The definition, as the devkit has it:
- difficulty easy / moderate / hard: a ground-truth box counts when its height is above
  40 / 25 / 25 px, its occlusion at most 0 / 1 / 2 and its truncation at most 0.15 / 0.3 / 0.5;
  otherwise it is ignored (a detection on it is neither right nor wrong).
- a detection lower than that minimum height is ignored too (whatever its class).
- neighbouring classes: a Van is ignored when Car is scored, a Person_sitting when Pedestrian
  is: a Car detection on a Van is not a false positive.
- DontCare regions: a detection not matched to a box, that lies inside a DontCare region by
  more than the IoU threshold of its own area, is not a false positive.
- matching: ground-truth boxes in file order each take the unassigned detection of most
  overlap (above the class's IoU threshold: Car 0.7, others 0.5 unless
  dataset.iou_thresholds says otherwise; overlap strictly above it, as the devkit compares).
- precision at 41 score thresholds chosen from the true positives' scores so that recall
  steps by 1/40; precision is made non-increasing; AP is the mean of the 40 points after
  recall 0 (the "R40" AP KITTI reports since 2019).
Where the devkit divides by zero (no counted ground truth of a class at a difficulty), the AP
is left undefined (None) rather than 0: a class the images do not hold is no loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qbench.evaluate.formats.kitti import DEFAULT_CLASSES, DONT_CARE

DIFFICULTIES = ("easy", "moderate", "hard")
MIN_HEIGHT = (40.0, 25.0, 25.0)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
DEFAULT_IOU = {"car": 0.7, "pedestrian": 0.5, "cyclist": 0.5}
OTHER_IOU = 0.5
NEIGHBOUR = {"car": "van", "pedestrian": "person_sitting"}
N_SAMPLE_PTS = 41
DRAWS = 400  # as the mAP drop's interval, with the same seed: the same resamples


def kitti_thresholds(spec: Any) -> dict[str, float] | None:
    """Class name -> IoU threshold of a `format: kitti` dataset spec; None for other formats."""
    if spec is None or spec.format != "kitti":
        return None
    given = {k.lower(): v for k, v in (spec.iou_thresholds or {}).items()}
    return {c: given.get(c.lower(), DEFAULT_IOU.get(c.lower(), OTHER_IOU))
            for c in (spec.classes or DEFAULT_CLASSES)}


def _overlap(a: np.ndarray, b: np.ndarray, over_first: bool = False) -> np.ndarray:
    """[len(a), len(b)] IoU of xyxy boxes, or intersection over a's area (over_first)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    if over_first:
        return inter / area_a[:, None]
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


@dataclass
class _Image:
    """One image's boxes for one class and difficulty, flagged as the devkit's cleanData."""

    overlaps: np.ndarray  # [detections, ground truth] IoU
    gt_flag: np.ndarray  # 0 counted, 1 ignored (neighbour, too hard), -1 another class
    det_flag: np.ndarray  # 0 this class, 1 ignored (too low), -1 another class
    scores: np.ndarray
    in_dont_care: np.ndarray  # [detections] inside some DontCare region beyond the threshold


def _match(im: _Image, threshold: float, active: np.ndarray | None):
    """(tp, fp, fn, true positives' scores) as the devkit's computeStatistics: without
    `active` the recall pass (each box takes its best-scoring candidate), with it the
    precision pass at a score threshold (`active`: detections at or above it)."""
    usable = im.det_flag != -1
    if active is not None:
        usable = usable & active
    assigned = np.zeros(len(im.scores), dtype=bool)
    tp = fn = 0
    tp_scores = []
    for g in np.flatnonzero(im.gt_flag != -1):
        candidates = usable & ~assigned & (im.overlaps[:, g] > threshold)
        if not candidates.any():
            fn += int(im.gt_flag[g] == 0)
            continue
        index = np.flatnonzero(candidates)
        if active is None:  # the highest score (the first one on a tie)
            j = index[np.argmax(im.scores[index])]
        else:  # the most overlap among this class's detections, else a too-low one
            valid = index[im.det_flag[index] == 0]
            j = valid[np.argmax(im.overlaps[valid, g])] if len(valid) else index[0]
        assigned[j] = True
        if im.gt_flag[g] == 0 and im.det_flag[j] == 0:
            tp += 1
            tp_scores.append(im.scores[j])
    fp = 0
    if active is not None:
        loose = ~assigned & (im.det_flag == 0) & active
        fp = int(loose.sum() - (loose & im.in_dont_care).sum())
    return tp, fp, fn, tp_scores


@dataclass
class _Curve:
    """Everything a resample of the images needs for one class and difficulty: counted boxes,
    the recall pass's true-positive scores, and the precision pass's (tp, fp) per image as a
    step function of the score threshold."""

    n_valid: np.ndarray  # [images]
    tp_scores: list[np.ndarray]  # per image
    sorted_scores: np.ndarray  # [images, most] relevant detections' scores, descending, -inf pad
    steps: np.ndarray  # [images, most + 1, 2]: (tp, fp) with the top k relevant active


def _curve(images: list[_Image], threshold: float) -> _Curve:
    most = max([int((im.det_flag != -1).sum()) for im in images] + [0])
    sorted_scores = np.full((len(images), most), -np.inf)
    steps = np.zeros((len(images), most + 1, 2), dtype=np.int64)
    n_valid, tp_scores = [], []
    for i, im in enumerate(images):
        n_valid.append(int((im.gt_flag == 0).sum()))
        tp_scores.append(np.asarray(_match(im, threshold, None)[3], dtype=float))
        relevant = np.flatnonzero(im.det_flag != -1)
        order = relevant[np.argsort(-im.scores[relevant], kind="stable")]
        sorted_scores[i, :len(order)] = im.scores[order]
        active = np.zeros(len(im.scores), dtype=bool)
        steps[i, 0] = _match(im, threshold, active)[:2]
        for k, j in enumerate(order, 1):
            active[j] = True
            steps[i, k] = _match(im, threshold, active)[:2]
    return _Curve(np.asarray(n_valid), tp_scores, sorted_scores, steps)


def score_thresholds(scores: np.ndarray, n_gt: int) -> list[float]:
    """The devkit's getThresholds: scores (descending) where recall reaches each 1/40 step."""
    v = sorted(scores.tolist(), reverse=True)
    chosen, current = [], 0.0
    for i, score in enumerate(v):
        left = (i + 1) / n_gt
        right = (i + 2) / n_gt if i < len(v) - 1 else left
        if right - current < current - left and i < len(v) - 1:
            continue
        chosen.append(score)
        current += 1.0 / (N_SAMPLE_PTS - 1.0)
    return chosen


def _ap(curve: _Curve, weights: np.ndarray) -> float | None:
    """R40 AP of the images taken `weights` times each (1 each: the dataset itself)."""
    n_gt = int((curve.n_valid * weights).sum())
    if n_gt == 0:
        return None
    owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(curve.tp_scores)] + [[]])
    scores = np.concatenate([*curve.tp_scores, []])
    thresholds = score_thresholds(np.repeat(scores, weights[owner.astype(int)]), n_gt)
    if not thresholds:
        return 0.0
    t = np.asarray(thresholds)
    k = (curve.sorted_scores[:, None, :] >= t[None, :, None]).sum(axis=-1)  # [images, thr]
    counts = np.take_along_axis(curve.steps, k[:, :, None], axis=1)  # [images, thr, 2]
    tp, fp = (counts * weights[:, None, None]).sum(axis=0).T
    precision = np.zeros(N_SAMPLE_PTS)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision[:len(t)] = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(precision[1:].sum() / (N_SAMPLE_PTS - 1))


def _boxes(rows: list[list[Any]]) -> np.ndarray:
    return np.asarray([r for r in rows], dtype=float).reshape(-1, 4)


def _images(gt: dict[str, Any], detections: dict[int, list[tuple[str, list[float], float]]],
            image_ids: list[int], name: str, difficulty: int, threshold: float) -> list[_Image]:
    objects = gt.get("kitti", {})
    me, neighbour = name.lower(), NEIGHBOUR.get(name.lower())
    out = []
    for image_id in image_ids:
        rows = objects.get(str(image_id), [])
        types = [str(r[0]).lower() for r in rows]
        boxes = _boxes([r[3:7] for r in rows])
        height = boxes[:, 3] - boxes[:, 1]
        trunc = np.asarray([float(r[1]) for r in rows])
        occl = np.asarray([int(r[2]) for r in rows])
        hard = ((occl > MAX_OCCLUSION[difficulty]) | (trunc > MAX_TRUNCATION[difficulty])
                | (height <= MIN_HEIGHT[difficulty]))
        mine = np.asarray([t == me for t in types], dtype=bool)
        near = np.asarray([t == neighbour for t in types], dtype=bool)
        gt_flag = np.where(mine & ~hard, 0, np.where(near | mine, 1, -1)).astype(int)
        dets = detections.get(image_id, [])
        det_boxes = _boxes([d[1] for d in dets])
        det_height = np.abs(det_boxes[:, 3] - det_boxes[:, 1])
        det_mine = np.asarray([d[0].lower() == me for d in dets], dtype=bool)
        det_flag = np.where(det_height < MIN_HEIGHT[difficulty], 1,
                            np.where(det_mine, 0, -1)).astype(int)
        dont_care = _boxes([r[3:7] for r, t in zip(rows, types, strict=True)
                            if t == DONT_CARE.lower()])
        inside = (_overlap(det_boxes, dont_care, over_first=True) > threshold).any(axis=1)
        out.append(_Image(_overlap(det_boxes, boxes), gt_flag, det_flag,
                          np.asarray([d[2] for d in dets], dtype=float), inside))
    return out


def _by_image(gt: dict[str, Any], results: list[dict]) -> dict[int, list]:
    names = {int(c["id"]): str(c["name"]) for c in gt["categories"]}
    out: dict[int, list] = {}
    for r in results:
        x, y, w, h = r["bbox"]
        out.setdefault(int(r["image_id"]), []).append(
            (names.get(int(r["category_id"]), ""), [x, y, x + w, y + h], float(r["score"])))
    return out


def kitti_ap(gt: dict[str, Any], results: list[dict], image_ids: list[int],
             thresholds: dict[str, float]) -> dict[str, dict[str, float | None]]:
    """{class: {easy, moderate, hard}} AP (0..1, None where undefined) of COCO-format results
    on a KITTI dataset's document (its raw objects under "kitti")."""
    curves = _curves(gt, results, image_ids, thresholds)
    ones = np.ones(len(image_ids), dtype=np.int64)
    return {c: {d: _ap(curves[c][k], ones) for k, d in enumerate(DIFFICULTIES)}
            for c in thresholds}


def _curves(gt, results, image_ids, thresholds) -> dict[str, list[_Curve]]:
    dets = _by_image(gt, results)
    return {c: [_curve(_images(gt, dets, image_ids, c, k, t), t) for k in range(3)]
            for c, t in thresholds.items()}


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _ci(diffs: list[float | None]) -> tuple[float, float] | None:
    finite = np.asarray([d for d in diffs if d is not None and np.isfinite(d)])
    if not finite.size:
        return None
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def kitti_scores(gt: dict[str, Any], fp32: list[dict], quantized: list[dict],
                 image_ids: list[int], thresholds: dict[str, float], draws: int = DRAWS,
                 seed: int = 0) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The models row's KITTI columns (moderate AP mean over classes, fp32's, and the paired
    95% interval of its drop in points), and per class: its easy/moderate/hard AP, fp32's
    moderate AP, its drop's interval and its IoU threshold."""
    n = len(image_ids)
    models = [_curves(gt, r, image_ids, thresholds) for r in (fp32, quantized)]
    ones = np.ones(n, dtype=np.int64)
    points = [{c: [_ap(cv, ones) for cv in curves[c]] for c in thresholds} for curves in models]
    same = fp32 == quantized
    mean_diffs: list[float | None] = []
    class_diffs: dict[str, list[float | None]] = {c: [] for c in thresholds}
    if n >= 2 and not same:
        rng = np.random.default_rng(seed)
        for _ in range(draws):
            weights = np.bincount(rng.integers(0, n, n), minlength=n)
            mod = [{c: _ap(curves[c][1], weights) for c in thresholds} for curves in models]
            for c in thresholds:
                a, b = mod[0][c], mod[1][c]
                class_diffs[c].append(None if a is None or b is None else 100 * (a - b))
            a, b = _mean(list(mod[0].values())), _mean(list(mod[1].values()))
            mean_diffs.append(None if a is None or b is None else 100 * (a - b))

    def interval(diffs, defined):
        if n < 2 or not defined:
            return None
        return (0.0, 0.0) if same else _ci(diffs)

    fp32_mean = _mean([points[0][c][1] for c in thresholds])
    q_mean = _mean([points[1][c][1] for c in thresholds])
    ci = interval(mean_diffs, q_mean is not None)
    columns = {"kitti_ap_moderate": q_mean, "kitti_ap_moderate_fp32": fp32_mean,
               "kitti_ap_moderate_drop_pts_ci_low": ci and ci[0],
               "kitti_ap_moderate_drop_pts_ci_high": ci and ci[1]}
    classes = {}
    for c, t in thresholds.items():
        easy, moderate, hard = points[1][c]
        cci = interval(class_diffs[c], moderate is not None)
        classes[c] = {"kitti_iou_threshold": t, "ap_easy": easy, "ap_moderate": moderate,
                      "ap_hard": hard, "ap_moderate_fp32": points[0][c][1],
                      "ap_moderate_drop_pts_ci_low": cci and cci[0],
                      "ap_moderate_drop_pts_ci_high": cci and cci[1]}
    return columns, classes
