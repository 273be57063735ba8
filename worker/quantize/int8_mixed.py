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

from qbench.models.base import LoadedModel
from qbench.quantize.mixed_search import (
    layer_children,
    mode_quantizer,
    required_target,
    search_and_quantize,
)
from qbench.quantize.registry import Quantized, QuantizeRequest, register


@register("int8_mixed")
def quantize_int8_mixed(loaded: LoadedModel, request: QuantizeRequest) -> Quantized:
    target = required_target(request, "int8_mixed")
    quantize_fn = mode_quantizer(loaded, "int8_static", replace(request, search_target=None))
    from qbench.inspect.capture import named_layers  # as candidate_groups: not needed earlier

    return search_and_quantize(loaded, target, quantize_fn, None,
                               layer_children(named_layers(loaded.module)),
                               progress=request.progress)
