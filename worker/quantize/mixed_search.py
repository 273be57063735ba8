"""int8_mixed's and ort_int8_mixed's search: which layer groups are worth keeping in float.

A group is a keep_float pattern (a module path of the fp32 model, e.g. "backbone.fpn" or
"layer4"; on a given ONNX file a run of its nodes, worker/quantize/onnx_groups.py); the
quantizer matches it against the module and its parents. Ranking
re-quantizes once per group with that group alone kept float and scores the result (the
scores are in worker/evaluate/targets.py: mAP on the calibration split, or agreement with
fp32). The greedy search then keeps the most sensitive groups float, one more at a time in
ranking order (skipping groups that do not help), until the target score holds. Refinement
then splits each group kept float into its children (stage -> block -> layer) and quantizes
every child the target does without, so the fewest layers stay float: a whole backbone kept
float because one of its blocks is sensitive costs most of the size reduction.
Every configuration is quantized and scored once: results are cached by the set of groups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qbench.models.base import LoadedModel
from qbench.quantize.registry import Quantized, QuantizeRequest, SearchTarget, quantize
from qbench.quantize.score_text import score_text

QuantizeFn = Callable[[list[str]], Quantized]  # groups kept float -> quantized model
# higher is better; a (score, tie-break) pair where the score is coarse (top-1 agreement on a
# few images): the tie-break ranks configurations the score cannot tell apart, never the target
Score = float | tuple[float, float]
ScoreFn = Callable[[Quantized], Score]


def split_score(value: Score) -> tuple[float, float]:
    """(score, tie-break) of a score function's value; a plain float has no tie-break."""
    if isinstance(value, tuple):
        return float(value[0]), float(value[1])
    return float(value), 0.0
LatencyFn = Callable[[Quantized], float]  # milliseconds


@dataclass(frozen=True)
class Trial:
    float_groups: tuple[str, ...]
    score: float
    size_bytes: int
    latency_ms: float | None = None
    tiebreak: float = 0.0

    def better_than(self, other: Trial) -> bool:
        return (self.score, self.tiebreak) > (other.score, other.tiebreak)


@dataclass(frozen=True)
class Sensitivity:
    group: str
    score: float  # with this group alone kept float
    gain: float  # score - all-quantized score
    tiebreak_gain: float = 0.0


class Evaluator:
    """Quantize with some groups kept float, score (and time) it; each set of groups once."""

    def __init__(self, quantize_fn: QuantizeFn, score_fn: ScoreFn,
                 latency_fn: LatencyFn | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.quantize_fn, self.score_fn, self.latency_fn = quantize_fn, score_fn, latency_fn
        self.progress = progress
        self.trials: dict[frozenset[str], Trial] = {}

    def __call__(self, groups: Sequence[str]) -> Trial:
        key = frozenset(groups)
        if key not in self.trials:
            q = self.quantize_fn(list(groups))
            latency = self.latency_fn(q) if self.latency_fn else None
            score, tiebreak = split_score(self.score_fn(q))
            self.trials[key] = Trial(tuple(groups), score, q.size_bytes, latency, tiebreak)
            if self.progress:
                self.progress(f"trial {len(self.trials)}: {len(groups)} groups float, "
                              f"score {score_text(score)}")
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
    path: list[Trial]  # accepted steps: 0, 1, 2, ... groups kept float, then refinements
    refined_from: list[str] = field(default_factory=list)  # the groups before refinement


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
    from qbench.inspect.capture import named_layers  # matplotlib-free, but not needed earlier

    return _prefixes(named_layers(loaded.module), depth)


def _prefixes(layers: Sequence[str], depth: int) -> list[str]:
    """The distinct first `depth` segments of the layer names, in module order."""
    return list(dict.fromkeys(".".join(name.split(".")[:depth]) for name in layers))


def child_groups(layers: Sequence[str], group: str) -> list[str]:
    """The module paths one segment below `group` that hold layers, in module order ([] for a
    layer itself)."""
    inside = [name for name in layers if name.startswith(group + ".")]
    return _prefixes(inside, group.count(".") + 2)


def layer_children(layers: Sequence[str]) -> Callable[[str], list[str]]:
    """A group's children among module-path layer names (stage -> block -> layer)."""
    return lambda group: child_groups(layers, group)


def refine_float_groups(evaluate: Evaluator, children: Callable[[str], list[str]],
                        search: MixedPrecision) -> MixedPrecision:
    """Split each float group of a search that met its target into its children (module
    paths: layer_children; runs of ONNX nodes: their halves), one level at a time down to
    single layers, and quantize each child whose loss the target tolerates.

    A group's children kept float are not the group kept float: the adds, activations and
    quantize/dequantize boundaries between them are quantized then. So the split itself is a
    trial, and a group whose split misses the target stays whole. Then each child is tried
    quantized (the rest as they are) and left quantized when the score still reaches the
    target; the children that remain float are refined in turn. Every accepted configuration
    was scored at or above the target, so the result meets it. Each split and each child
    tried is one quantize-and-score trial (cached: none is run twice).
    """
    if not search.met or not search.float_groups:
        return search
    target, current, path = search.target, list(search.float_groups), list(search.path)
    pending = list(current)
    while pending:
        group = pending.pop(0)
        kids = children(group)
        if not kids:
            continue  # a layer: nothing finer to try
        others = [g for g in current if g != group]
        split = evaluate([*others, *kids])
        if split.score < target:
            continue
        keep = list(kids)
        for kid in kids:
            tried = evaluate([*others, *(k for k in keep if k != kid)])
            if tried.score >= target:
                keep.remove(kid)
                path.append(tried)
        if len(keep) == len(kids):
            path.append(split)
        current = [*others, *keep]
        pending += keep
    if current == search.float_groups:
        return search
    chosen = evaluate(current)  # cached: the last accepted configuration
    return replace(search, met=chosen.score >= target, float_groups=current, chosen=chosen,
                   path=path, refined_from=list(search.float_groups))


def rank_sensitivity(loaded: LoadedModel, quantize_fn: QuantizeFn,
                     candidates: Sequence[str] | None, score_fn: ScoreFn,
                     latency_fn: LatencyFn | None = None,
                     progress: Callable[[str], None] | None = None) -> SensitivityResult:
    """Score with each candidate group alone kept float; rank by the score it gives back."""
    groups = list(candidates) if candidates else candidate_groups(loaded)
    evaluate = Evaluator(quantize_fn, score_fn, latency_fn, progress)
    base = evaluate([])
    ranking = []
    for group in groups:
        trial = evaluate([group])
        ranking.append(Sensitivity(group, trial.score, trial.score - base.score,
                                   trial.tiebreak - base.tiebreak))
    ranking.sort(key=lambda s: (-s.gain, -s.tiebreak_gain))  # stable: ties keep the order
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
        if trial.better_than(current):
            path.append(trial)
    chosen = path[-1]
    return MixedPrecision(target, chosen.score >= target, list(chosen.float_groups), chosen, path)


def search_groups(loaded: LoadedModel, onnx_file: Path | None, mode: str
                  ) -> tuple[list[str], Callable[[str], list[str]], Callable[[list[str]], list[str]]]:
    """The groups a search over a runtime's quantizer starts from, how each splits, and the
    keep_float patterns a choice of groups becomes: runs of an ONNX file's weight nodes when
    the model is one (onnx_file, the graph the quantizer reads), else the torch module tree."""
    if onnx_file is None:
        from qbench.inspect.capture import named_layers

        return candidate_groups(loaded), layer_children(named_layers(loaded.module)), list
    from qbench.quantize.onnx_groups import node_groups

    groups = node_groups(onnx_file)
    top = groups.top()
    if not top:
        raise ValueError(f"{mode}: {Path(loaded.onnx_path).name} has no named weight nodes "
                         "(Conv, Gemm, MatMul) to keep float")
    return top, groups.children, groups.patterns


def required_target(request: QuantizeRequest, mode: str) -> SearchTarget:
    """The request's search target, built now (it scores fp32 on the calibration images)."""
    if request.search_target is None:
        raise ValueError(f"{mode} needs a search target (quantization.target)")
    return request.search_target()


def search_and_quantize(loaded: LoadedModel, target: SearchTarget, quantize_fn: QuantizeFn,
                        candidates: Sequence[str] | None, children: Callable[[str], list[str]],
                        final_fn: QuantizeFn | None = None,
                        progress: Callable[[str], None] | None = None) -> Quantized:
    """The whole search of a searching mode: rank the candidate groups, keep the most
    sensitive float greedily, refine, then quantize the choice (with final_fn where the last
    model must be written elsewhere than the trials), score it on the held-out images and put
    the outcome in its notes and its `search`."""
    sensitivity = rank_sensitivity(loaded, quantize_fn, candidates, target.score_fn,
                                   progress=progress)
    search = mixed_precision_search(sensitivity, target.value, target.max_float)
    search = refine_float_groups(sensitivity.evaluate, children, search)
    chosen = (final_fn or quantize_fn)(search.float_groups)
    heldout = split_score(target.heldout_fn(chosen))[0] if target.heldout_fn else None
    outcome = MixedSearch(sensitivity, search, target, heldout)
    chosen.notes = f"{outcome.note()}; {chosen.notes}"
    chosen.search = outcome
    return chosen





def heldout_met(target: SearchTarget, heldout_score: float | None) -> bool | None:
    """Whether the chosen model reached the target on the held-out images; None: none held."""
    if heldout_score is None or target.heldout_value is None:
        return None
    return heldout_score >= target.heldout_value


def heldout_note(target: SearchTarget, heldout_score: float | None) -> str:
    met = heldout_met(target, heldout_score)
    if met is None:
        return ""
    return (f"; on held-out images {'met' if met else 'NOT met'}: "
            f"{score_text(heldout_score)} vs {score_text(target.heldout_value)}")


def outcome_columns(target: SearchTarget, score: float, met: bool, float_groups: Sequence[str],
                    heldout_score: float | None,
                    refined_from: Sequence[str] | None = None) -> dict[str, Any]:
    """A searching mode's models columns, whichever search chose its model."""
    return {"mixed_target_metric": target.name, "mixed_target": target.value,
            "mixed_score": score, "mixed_target_met": met,
            "mixed_float_groups": list(float_groups), "mixed_heldout_score": heldout_score,
            "mixed_heldout_target": target.heldout_value,
            "mixed_heldout_met": heldout_met(target, heldout_score),
            "mixed_refined_from": list(refined_from) if refined_from else None}


@dataclass
class MixedSearch:
    """What int8_mixed found: the ranking, the greedy path and the target it aimed at."""

    sensitivity: SensitivityResult
    search: MixedPrecision
    target: SearchTarget
    heldout_score: float | None = None  # the chosen model on images the search never scored

    def columns(self) -> dict[str, Any]:
        return outcome_columns(self.target, self.search.chosen.score, self.search.met,
                               self.search.float_groups, self.heldout_score,
                               self.search.refined_from)

    def note(self) -> str:
        verdict = "met" if self.search.met else "NOT met"
        refined = (f" (refined from {', '.join(self.search.refined_from)})"
                   if self.search.refined_from else "")
        held = heldout_note(self.target, self.heldout_score)
        return (f"mixed precision: kept float {', '.join(self.search.float_groups) or 'nothing'}"
                f"{refined} for {self.target.name} >= {score_text(self.target.value)} ({verdict}: "
                f"{score_text(self.search.chosen.score)}, all-int8 "
                f"{score_text(self.sensitivity.baseline.score)}){held}")

    def write_plot(self, out_dir: Path) -> Path:
        from qbench.inspect.tradeoff_plot import plot_tradeoff

        out_dir.mkdir(parents=True, exist_ok=True)
        return plot_tradeoff(self.sensitivity, self.search,
                             out_dir / "mixed_precision_tradeoff.png", self.target.name)
