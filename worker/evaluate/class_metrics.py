"""A detector's accuracy on a box dataset: the `models` row's mAP columns (and, on a KITTI
dataset, KITTI's moderate AP), and one `class_metrics` row per class.

A mean over classes hides the one class int8 hurts most, so each class's AP and AP@.5 are kept
beside fp32's, with the paired bootstrap interval of its drop from the same resamples as the
mAP drop's (qbench.evaluate.map_interval); on KITTI, its easy/moderate/hard AP too.
"""

from __future__ import annotations

from typing import Any

from qbench.evaluate.map_interval import map_and_class_scores

CLASS_ROWS = "class_rows"  # the key evaluate_unit takes the per-class rows from


def detector_accuracy(data: Any, fp32: list[dict], quantized: list[dict]) -> dict[str, Any]:
    """Accuracy columns of the models row, with the class rows under CLASS_ROWS.
    data: the EvalSet (its gt document, evaluation image ids and, for KITTI, IoU thresholds)."""
    columns, classes = map_and_class_scores(data.gt, fp32, quantized, data.image_ids)
    if data.kitti_iou and classes:
        from qbench.evaluate.kitti_ap import kitti_scores

        kitti_columns, per_class = kitti_scores(data.gt, fp32, quantized, data.image_ids,
                                                data.kitti_iou)
        columns.update(kitti_columns)
        for row in classes:
            row.update(per_class.get(row["class"], {}))
    return {**columns, CLASS_ROWS: classes}
