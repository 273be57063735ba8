"""ov_int8_mixed: ov_int8 with the fewest most sensitive layers kept float until the target holds.

qbench's own search (worker/quantize/mixed_search.py, as int8_mixed and ort_int8_mixed) with
NNCF as the quantizer: a group kept float joins NNCF's ignored scope. The score and the
held-out check are qbench's (worker/evaluate/targets.py: decoded mAP on the calibration
split's annotations for a detector with outputs.decoder, else agreement with fp32), so the
target means what it means for the other runtimes' searching modes. The model is converted and
its calibration feeds read once; NNCF collects statistics again for every trial.
With quantization.target.search: nncf, NNCF's accuracy control searches instead, with the same
scorer (worker/quantize/ov_accuracy_control.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qbench.backends.openvino.convert import convert
from qbench.models.base import LoadedModel
from qbench.quantize.mixed_search import (
    required_target,
    search_and_quantize,
    search_groups,
    split_score,
)
from qbench.quantize.openvino_model import ov_quantized
from qbench.quantize.ov_accuracy_control import accuracy_control
from qbench.quantize.ov_int8 import (
    calibration_feeds,
    ignored_ops,
    nncf_parameters,
    quantize_with_nncf,
)
from qbench.quantize.registry import Quantized, QuantizeRequest, register


@register("ov_int8_mixed")
def quantize_ov_int8_mixed(loaded: LoadedModel, request: QuantizeRequest) -> Quantized:
    target = required_target(request, "ov_int8_mixed")
    base = replace(request, search_target=None)
    converted = convert(loaded, request.work_dir)
    data = calibration_feeds(converted, base)
    if target.search == "nncf":
        model, outcome = accuracy_control(loaded, converted, base, target, data)
        _, how = nncf_parameters(base)
        notes = [*ignored_ops(loaded, converted, request.keep_float)[1],
                 f"{how}, {len(data)} feeds (NNCF)"]
        chosen = ov_quantized(loaded, converted, "mixed", notes, model=model)
        if target.heldout_fn is not None:
            outcome.heldout_score = split_score(target.heldout_fn(chosen))[0]
        chosen.notes = f"{outcome.note()}; {chosen.notes}"
        chosen.search = outcome
        return chosen
    candidates, children, patterns = search_groups(
        loaded, Path(loaded.onnx_path) if loaded.onnx_path is not None else None, "ov_int8_mixed")

    def quantize_fn(float_groups: list[str]) -> Quantized:
        keep = [*request.keep_float, *patterns(list(float_groups))]
        model, notes = quantize_with_nncf(loaded, converted, replace(base, keep_float=keep), data)
        return ov_quantized(loaded, converted, "mixed", notes, model=model)

    return search_and_quantize(loaded, target, quantize_fn, candidates, children,
                               progress=request.progress)
