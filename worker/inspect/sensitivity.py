"""Layer sensitivity and mixed precision: which layer groups are worth keeping in float.

A group is a keep_float pattern (a module path of the fp32 model, e.g. "backbone.fpn" or
"layer4"); int8_static and int8_dynamic match it against the module and its parents. Ranking
re-quantizes once per group with that group alone kept float and scores the result (mAP, or
agreement with fp32 without a dataset). The greedy search then keeps the most sensitive
groups float, one more at a time in ranking order (skipping groups that do not help), until
the target score holds.
Every configuration is quantized and scored once: results are cached by the set of groups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from worker.evaluate.scores import detection_quality  # noqa: F401  (scores live in evaluate/)
from worker.inspect.capture import named_layers
from worker.models.base import LoadedModel
from worker.quantize.registry import Quantized, QuantizeRequest, quantize

QuantizeFn = Callable[[list[str]], Quantized]  # groups kept float -> quantized model
ScoreFn = Callable[[Quantized], float]  # higher is better
LatencyFn = Callable[[Quantized], float]  # milliseconds


@dataclass(frozen=True)
class Trial:
    float_groups: tuple[str, ...]
    score: float
    size_bytes: int
    latency_ms: float | None = None


@dataclass(frozen=True)
class Sensitivity:
    group: str
    score: float  # with this group alone kept float
    gain: float  # score - all-quantized score


class Evaluator:
    """Quantize with some groups kept float, score (and time) it; each set of groups once."""

    def __init__(self, quantize_fn: QuantizeFn, score_fn: ScoreFn,
                 latency_fn: LatencyFn | None = None) -> None:
        self.quantize_fn, self.score_fn, self.latency_fn = quantize_fn, score_fn, latency_fn
        self.trials: dict[frozenset[str], Trial] = {}

    def __call__(self, groups: Sequence[str]) -> Trial:
        key = frozenset(groups)
        if key not in self.trials:
            q = self.quantize_fn(list(groups))
            latency = self.latency_fn(q) if self.latency_fn else None
            self.trials[key] = Trial(tuple(groups), float(self.score_fn(q)), q.size_bytes, latency)
        return self.trials[key]


@dataclass
class SensitivityResult:
    baseline: Trial  # nothing kept float
    ranking: list[Sensitivity]  # largest gain first; ties keep the candidates' order
    evaluate: Evaluator = field(repr=False)


@dataclass
class MixedPrecision:
    target: float
    met: bool
    float_groups: list[str]
    chosen: Trial  # the last configuration on the path: meets the target if `met`
    path: list[Trial]  # accepted steps: 0, 1, 2, ... groups kept float


def mode_quantizer(loaded: LoadedModel, mode: str, request: QuantizeRequest) -> QuantizeFn:
    """A QuantizeFn for a registered mode: the request's keep_float plus the groups."""
    return lambda groups: quantize(
        loaded, mode, replace(request, keep_float=[*request.keep_float, *groups]))


def candidate_groups(loaded: LoadedModel, depth: int | None = None) -> list[str]:
    """Module paths, `depth` segments deep, that hold conv/linear layers, in module order.

    Default depth: the kind's group_depth, 3 for detectors (backbone.body.layer1, backbone.fpn.inner_blocks, rpn.head.conv,
    roi_heads.box_head.fc6, ...), 1 for classifiers (conv1, layer1, ..., fc).
    """
    depth = depth or loaded.kind.group_depth
    groups = [".".join(name.split(".")[:depth]) for name in named_layers(loaded.module)]
    return list(dict.fromkeys(groups))


def agreement_score(loaded: LoadedModel, images: torch.Tensor,
                    score_threshold: float = 0.5) -> ScoreFn:
    """Agreement with the fp32 model on `images` when there is no dataset, continuous so that
    few images still rank groups: detection_quality of detections with scores >=
    score_threshold, or the mean cosine similarity of classifier logits."""
    reference = loaded.predict_fp32(images)

    def score(q: Quantized) -> float:
        return loaded.kind.agreement_score(reference, q.predict(images), score_threshold)

    return score


def rank_sensitivity(loaded: LoadedModel, quantize_fn: QuantizeFn,
                     candidates: Sequence[str] | None, score_fn: ScoreFn,
                     latency_fn: LatencyFn | None = None) -> SensitivityResult:
    """Score with each candidate group alone kept float; rank by the score it gives back."""
    groups = list(candidates) if candidates else candidate_groups(loaded)
    evaluate = Evaluator(quantize_fn, score_fn, latency_fn)
    base = evaluate([])
    ranking = []
    for group in groups:
        trial = evaluate([group])
        ranking.append(Sensitivity(group, trial.score, trial.score - base.score))
    ranking.sort(key=lambda s: -s.gain)  # stable: ties keep the candidates' order
    return SensitivityResult(base, ranking, evaluate)


def mixed_precision_search(sens: SensitivityResult, target: float,
                           max_float: int | None = None) -> MixedPrecision:
    """Greedy: walk the ranking, keeping each group float if that raises the score, until
    score >= target. A group that does not help is left quantized (groups interact: the
    second most sensitive alone may add nothing once the first is float). `max_float` caps
    how many groups may stay float."""
    limit = len(sens.ranking) if max_float is None else max_float
    path = [sens.baseline]
    for item in sens.ranking:
        current = path[-1]
        if current.score >= target or len(current.float_groups) >= limit:
            break
        trial = sens.evaluate([*current.float_groups, item.group])
        if trial.score > current.score:
            path.append(trial)
    chosen = path[-1]
    return MixedPrecision(target, chosen.score >= target, list(chosen.float_groups), chosen, path)
