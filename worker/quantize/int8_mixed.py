"""int8_mixed: int8_static with the fewest most sensitive layer groups kept float.

The groups are ranked by how much score each gives back when kept float alone, then kept float
greedily until the target holds (worker/inspect/sensitivity.py). The score is computed on the
calibration images (mAP on their annotations, or agreement with fp32), never on evaluation
images, so the reported accuracy stays an honest held-out figure.
"""

from __future__ import annotations

from dataclasses import replace

from worker.models.base import LoadedModel
from worker.quantize.registry import Quantized, QuantizeRequest, register


@register("int8_mixed", devices={"cpu"}, needs_calibration=True,
          description="int8_static, keeping the most sensitive layer groups float until "
                      "quantization.target holds")
def quantize_int8_mixed(loaded: LoadedModel, request: QuantizeRequest) -> Quantized:
    from worker.inspect.sensitivity import mixed_precision_search, mode_quantizer, rank_sensitivity

    target = request.search
    if target is None:
        raise ValueError("int8_mixed needs a search target (quantization.target)")
    quantize_fn = mode_quantizer(loaded, "int8_static", replace(request, search=None))
    sensitivity = rank_sensitivity(loaded, quantize_fn, None, target.score_fn)
    search = mixed_precision_search(sensitivity, target.value, target.max_float)
    chosen = quantize_fn(search.float_groups)
    verdict = "met" if search.met else "NOT met"
    chosen.notes = (f"mixed precision: kept float {', '.join(search.float_groups) or 'nothing'} "
                    f"for {target.name} >= {target.value:.3f} ({verdict}: "
                    f"{search.chosen.score:.3f}, all-int8 {sensitivity.baseline.score:.3f}); "
                    + chosen.notes)
    chosen.search = (sensitivity, search, target)
    return chosen
