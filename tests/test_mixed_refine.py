"""int8_mixed's refinement: groups kept float split stage -> block -> layer until the fewest
layers stay float, and the held-out share of the calibration images."""

from __future__ import annotations

from qbench.evaluate.targets import heldout_count
from qbench.quantize.mixed_search import (
    Evaluator,
    MixedPrecision,
    child_groups,
    layer_children,
    refine_float_groups,
)
from qbench.quantize.registry import Quantized

LAYERS = ["features.0.conv", "features.1.conv.0", "features.1.conv.1", "features.2.conv.0",
          "features.2.conv.1", "classifier.1"]
SENSITIVE = "features.1.conv.1"


def _float_layers(groups: list[str]) -> set[str]:
    return {n for n in LAYERS if any(n == g or n.startswith(g + ".") for g in groups)}


def _evaluator(glue: str | None = None) -> tuple[Evaluator, list[tuple[str, ...]]]:
    """Scores by which layers stay float; with `glue`, that block's own ops (say its residual
    add) cost 0.5 unless the block is kept float as a whole."""
    tried: list[tuple[str, ...]] = []

    def quantize(groups: list[str]) -> Quantized:
        tried.append(tuple(groups))
        return Quantized(predict=lambda x: x, backend="test", size_bytes=100 * len(groups),
                         params_by_dtype={}, notes="\n".join(groups))

    def score(q: Quantized) -> float:  # the sensitive layer costs 0.5, any other one 0.01
        groups = [g for g in q.notes.split("\n") if g]
        float_now = _float_layers(groups)
        lost = [n for n in LAYERS if n not in float_now]
        whole = glue is None or any(glue == g or glue.startswith(g + ".") for g in groups)
        return 1.0 - sum(0.5 if n == SENSITIVE else 0.01 for n in lost) - (0 if whole else 0.5)

    return Evaluator(quantize, score), tried


def test_child_groups_one_level_down_in_module_order():
    assert child_groups(LAYERS, "features") == ["features.0", "features.1", "features.2"]
    assert child_groups(LAYERS, "features.1.conv") == ["features.1.conv.0", "features.1.conv.1"]
    assert child_groups(LAYERS, SENSITIVE) == []


def test_refinement_keeps_only_the_sensitive_layer_float():
    evaluate, tried = _evaluator()
    start = evaluate(["features"])
    search = MixedPrecision(0.9, True, ["features"], start, [start])
    refined = refine_float_groups(evaluate, layer_children(LAYERS), search)
    assert refined.float_groups == [SENSITIVE]
    assert refined.met and refined.chosen.score >= 0.9
    assert refined.refined_from == ["features"]
    assert [len(t.float_groups) for t in refined.path][:1] == [1]
    assert len(tried) == len(set(tried)), "every configuration quantized once"
    assert ("features.0", "features.1", "features.2") in tried, "the split itself is a trial"


def test_a_block_whose_split_misses_the_target_stays_whole():
    evaluate, _ = _evaluator(glue="features.1")
    start = evaluate(["features"])
    search = MixedPrecision(0.9, True, ["features"], start, [start])
    refined = refine_float_groups(evaluate, layer_children(LAYERS), search)
    assert refined.float_groups == ["features.1"] and refined.chosen.score >= 0.9


def test_refinement_leaves_a_search_that_missed_its_target_alone():
    evaluate, _ = _evaluator()
    start = evaluate(["features"])
    missed = MixedPrecision(2.0, False, ["features"], start, [start])
    assert refine_float_groups(evaluate, layer_children(LAYERS), missed) is missed


def test_a_quarter_of_the_calibration_images_is_held_out():
    assert [heldout_count(n) for n in (1, 3, 4, 8, 32)] == [0, 0, 1, 2, 8]
