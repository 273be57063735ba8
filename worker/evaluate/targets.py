"""int8_mixed's goal as a score: mAP on the calibration split, or agreement with fp32.

Scored on calibration images only, never on evaluation images, so the reported accuracy of
the chosen configuration stays an honest held-out figure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from worker.manifest import Unit
from worker.models.base import LoadedModel
from worker.quantize.registry import Quantized, SearchTarget

ScoreFn = Callable[[Quantized], float]  # higher is better


def agreement_score(loaded: LoadedModel, images: torch.Tensor,
                    score_threshold: float = 0.5) -> ScoreFn:
    """Agreement with the fp32 model on `images` when there is no dataset, continuous so that
    few images still rank groups: detection_quality of detections with scores >=
    score_threshold, or the mean cosine similarity of classifier logits (TaskKind)."""
    reference = loaded.predict_fp32(images)

    def score(q: Quantized) -> float:
        return loaded.kind.agreement_score(reference, q.predict(images), score_threshold)

    return score


def search_target(unit: Unit, loaded: LoadedModel,
                  calibration_batches: Callable[[], Iterable[torch.Tensor]]) -> SearchTarget:
    """The manifest's quantization.target as a score and the value it must reach."""
    target = unit.quantization.target
    if target.max_map_drop is not None and loaded.kind.scores_map:
        from worker.evaluate.datasets import calibration_map_scorer

        score = calibration_map_scorer(unit, loaded)
        fp32 = score(loaded.predict_fp32)
        return SearchTarget(lambda q: score(q.predict), fp32 - target.max_map_drop / 100,
                            "mAP on the calibration split", target.max_float)
    images = torch.cat(list(calibration_batches()))
    return SearchTarget(agreement_score(loaded, images), target.min_agreement,
                        "agreement with fp32 on the calibration images", target.max_float)
