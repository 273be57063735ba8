"""ort_int8_mixed: ort_int8 with the fewest most sensitive layers kept float until the target holds.

The search is int8_mixed's (worker/quantize/mixed_search.py: rank groups, keep the most
sensitive float greedily, refine the float groups) with ort_int8 as the quantizer, so it also
takes a given ONNX file: there a group is a run of weight nodes in graph order, refined by
halves down to single nodes (worker/quantize/onnx_groups.py); a kept node's activation and
output-layout tail stays float with it, as with keep_float. The model is calibrated once: the
ranges do not depend on which nodes stay float, so every trial reuses them. The score and the
held-out check are int8_mixed's (worker/evaluate/targets.py): decoded mAP on the calibration
split's annotations for a detector with outputs.decoder, else agreement with fp32.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qbench.models.base import LoadedModel
from qbench.quantize.mixed_search import required_target, search_and_quantize, search_groups
from qbench.quantize.ort_int8 import prepare_ort_int8, quantize_prepared
from qbench.quantize.registry import Quantized, QuantizeRequest, register


@register("ort_int8_mixed")
def quantize_ort_int8_mixed(loaded: LoadedModel, request: QuantizeRequest) -> Quantized:
    target = required_target(request, "ort_int8_mixed")
    base = replace(request, search_target=None)
    prep = prepare_ort_int8(loaded, base)
    work = Path(request.work_dir)
    candidates, children, patterns = search_groups(
        loaded, prep.path if loaded.onnx_path is not None else None, "ort_int8_mixed")

    def quantize_fn(float_groups: list[str], out: Path = work / "trial_int8.onnx") -> Quantized:
        keep = [*request.keep_float, *patterns(list(float_groups))]
        return quantize_prepared(loaded, replace(base, keep_float=keep), prep, out)

    return search_and_quantize(
        loaded, target, quantize_fn, candidates, children,
        final_fn=lambda groups: quantize_fn(groups, work / "model_int8.onnx"),
        progress=request.progress)
