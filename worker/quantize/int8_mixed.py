"""int8_mixed: int8_static with the fewest most sensitive layer groups kept float.

The groups are ranked by how much score each gives back when kept float alone, then kept float
greedily until the target holds, and the groups kept float are refined (stage -> block -> layer)
so the fewest layers stay float (worker/quantize/mixed_search.py). The score is computed on part
of the calibration images (mAP on their annotations, or agreement with fp32:
worker/evaluate/targets.py); the rest of them are held out to check the chosen configuration,
and evaluation images are never used, so the reported accuracy stays an honest held-out figure.
"""

from __future__ import annotations

from dataclasses import replace

from worker.models.base import LoadedModel
from worker.quantize.mixed_search import (
    MIXED_COLUMNS,
    MixedSearch,
    layer_children,
    mixed_precision_search,
    mode_quantizer,
    rank_sensitivity,
    refine_float_groups,
    split_score,
)
from worker.quantize.registry import Quantized, QuantizeRequest, register


@register("int8_mixed", devices={"cpu"}, needs_calibration=True, extra_columns=MIXED_COLUMNS,
          description="int8_static, keeping the most sensitive layer groups float until "
                      "quantization.target holds")
def quantize_int8_mixed(loaded: LoadedModel, request: QuantizeRequest) -> Quantized:
    if request.search_target is None:
        raise ValueError("int8_mixed needs a search target (quantization.target)")
    target = request.search_target()
    quantize_fn = mode_quantizer(loaded, "int8_static", replace(request, search_target=None))
    sensitivity = rank_sensitivity(loaded, quantize_fn, None, target.score_fn,
                                   progress=request.progress)
    search = mixed_precision_search(sensitivity, target.value, target.max_float)
    from worker.inspect.capture import named_layers  # as candidate_groups: not needed earlier

    search = refine_float_groups(sensitivity.evaluate, layer_children(named_layers(loaded.module)),
                                 search)
    chosen = quantize_fn(search.float_groups)
    heldout = split_score(target.heldout_fn(chosen))[0] if target.heldout_fn else None
    outcome = MixedSearch(sensitivity, search, target, heldout)
    chosen.notes = f"{outcome.note()}; {chosen.notes}"
    chosen.search = outcome
    return chosen
