"""int8_mixed's goal as a score: mAP on the calibration split, or agreement with fp32.

Scored on calibration images only, never on evaluation images, so the reported accuracy of
the chosen configuration stays an honest held-out figure. A quarter of the calibration images
(at least one, when there are four or more) is held out of the search: the chosen
configuration is scored on them too, so the row says whether the target holds beyond the
images it was fitted to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch

from qbench.manifest import Unit
from qbench.models.base import LoadedModel
from qbench.quantize.registry import Quantized, SearchTarget

if TYPE_CHECKING:
    from qbench.evaluate.datasets import UnitData

ScoreFn = Callable[[Quantized], float]  # higher is better
HELDOUT_FRACTION = 0.25


def heldout_count(n: int) -> int:
    """How many of n calibration images the search does not score (0 below four)."""
    return max(1, round(n * HELDOUT_FRACTION)) if n >= 4 else 0


def agreement_score(loaded: LoadedModel, images: torch.Tensor,
                    score_threshold: float = 0.5) -> ScoreFn:
    """Agreement with the fp32 model on `images` (TaskKind.agreement_score): detection_quality
    of detections with scores >= score_threshold, a classifier's top-1 agreement (tie-broken by
    the logits' cosine), or the mean cosine similarity of raw outputs."""
    reference = loaded.predict_fp32(images)

    def score(q: Quantized) -> float:
        return loaded.kind.agreement_score(reference, q.predict(images), score_threshold)

    return score


def cosine_score(loaded: LoadedModel, images: torch.Tensor) -> ScoreFn:
    """Mean cosine similarity of the outputs with fp32's on `images` (min_cosine)."""
    from qbench.evaluate.agreement import outputs_cosine

    reference = loaded.predict_fp32(images)

    def score(q: Quantized) -> float:
        return outputs_cosine(reference, q.predict(images))

    return score


def search_target(unit: Unit, loaded: LoadedModel,
                  calibration_batches: Callable[[], Iterable[torch.Tensor]],
                  dataset: UnitData | None = None) -> SearchTarget:
    """The manifest's quantization.target as a score and the value it must reach; `dataset`:
    the unit's (an mAP target scores its calibration split)."""
    target = unit.quantization.target
    decoded = unit.model.outputs is not None and unit.model.outputs.decoder is not None
    if target.max_map_drop is not None and (loaded.kind.scores_map or decoded):
        if dataset is None:
            raise ValueError("quantization.target.max_map_drop needs the unit's dataset")
        score, held = dataset.calibration_map_scorers(heldout_count)
        drop = target.max_map_drop / 100
        held_value = held(loaded.predict_fp32) - drop if held else None
        return SearchTarget(lambda q: score(q.predict), score(loaded.predict_fp32) - drop,
                            "mAP on the calibration split", target.max_float,
                            (lambda q: held(q.predict)) if held else None, held_value,
                            target.search)
    images = torch.cat(list(calibration_batches()))
    n_held = heldout_count(len(images))
    search, held = (images[:-n_held], images[-n_held:]) if n_held else (images, None)
    if target.min_cosine is not None:
        return SearchTarget(cosine_score(loaded, search), target.min_cosine,
                            "mean cosine similarity of the outputs with fp32 on the calibration "
                            "images", target.max_float,
                            cosine_score(loaded, held) if held is not None else None,
                            target.min_cosine if held is not None else None, target.search)
    name = loaded.kind.agreement_name_for(loaded.predict_fp32(search[:1]))
    return SearchTarget(agreement_score(loaded, search), target.min_agreement,
                        f"{name} on the calibration images",
                        target.max_float,
                        agreement_score(loaded, held) if held is not None else None,
                        target.min_agreement if held is not None else None, target.search)
