"""ov_int8_mixed with `target.search: nncf`: NNCF's accuracy control, scored by qbench.

nncf.quantize_with_accuracy_control quantizes the whole model, ranks its quantizers by how
much each changes the outputs on the calibration feeds, then reverts the worst to float one
group at a time until the score is within max_drop of the float model's. Its validation
function is qbench's own score (worker/evaluate/targets.py: decoded mAP on the calibration
split, agreement or cosine with fp32), so the target means what it means for qbench's search;
max_drop is the float OpenVINO model's score less the target's value. Every model NNCF scores
is recorded (its score and how many conv/matmul layers ran in float) for the report's plot.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qbench.backends.openvino.backend import OpenVinoBackend
from qbench.backends.openvino.convert import Converted
from qbench.models.base import LoadedModel
from qbench.quantize.mixed_search import heldout_note, outcome_columns, split_score
from qbench.quantize.registry import Quantized, QuantizeRequest, SearchTarget
from qbench.quantize.score_text import score_text


@dataclass(frozen=True)
class Validation:
    score: float
    float_layers: int  # conv/matmul layers the compiled model ran in float


@dataclass
class AccuracyControl:
    """What NNCF's accuracy control did: the columns and note a searching mode gives."""

    target: SearchTarget
    float_score: float  # the float OpenVINO model's score, NNCF's reference
    chosen_score: float
    float_groups: list[str]  # weight layers NNCF left or put back in float
    validations: list[Validation] = field(default_factory=list)
    heldout_score: float | None = None

    @property
    def met(self) -> bool:
        return self.chosen_score >= self.target.value

    def columns(self) -> dict[str, Any]:
        return outcome_columns(self.target, self.chosen_score, self.met, self.float_groups,
                               self.heldout_score)

    def note(self) -> str:
        held = heldout_note(self.target, self.heldout_score)
        shown = ", ".join(self.float_groups[:5]) + (
            f" + {len(self.float_groups) - 5} more" if len(self.float_groups) > 5 else "")
        return (f"mixed precision by NNCF's accuracy control: put back in float "
                f"{shown or 'nothing'} for {self.target.name} >= "
                f"{score_text(self.target.value)} ({'met' if self.met else 'NOT met'}: "
                f"{score_text(self.chosen_score)}, float model {score_text(self.float_score)}, "
                f"{len(self.validations)} models scored){held}")

    def write_plot(self, out_dir: Path) -> Path:
        from qbench.inspect.tradeoff_plot import plot_accuracy_control

        out_dir.mkdir(parents=True, exist_ok=True)
        return plot_accuracy_control(self, out_dir / "mixed_precision_tradeoff.png")


def accuracy_control(loaded: LoadedModel, converted: Converted, request: QuantizeRequest,
                     target: SearchTarget, data: list) -> tuple[Any, AccuracyControl]:
    """(the model NNCF's accuracy control chose, what it did)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    from qbench.quantize.openvino_model import weight_layers
    from qbench.quantize.ov_int8 import (
        histogram_error,
        ignored_ops,
        nncf_parameters,
        quiet_nncf,
        refuse_if_bodies,
    )

    refuse_if_bodies(loaded, converted)
    quiet_nncf()
    validations: list[Validation] = []

    def score(compiled: Any) -> float:
        runtime = OpenVinoBackend(converted, "int8", compiled=compiled)
        scored = Quantized(predict=runtime.predict(loaded.kind), backend=runtime.label,
                           size_bytes=0, params_by_dtype={})
        value = split_score(target.score_fn(scored))[0]
        ran = runtime.executed_precision()
        validations.append(Validation(value, sum(n for p, n in ran.items() if p != "int8")))
        if request.progress:
            request.progress(f"NNCF model {len(validations)}: score {score_text(value)}")
        return value

    float_score = score(OpenVinoBackend(converted, "fp32").compiled)
    max_drop = max(0.0, float_score - target.value)
    ignored, _notes = ignored_ops(loaded, converted, request.keep_float)
    kwargs, _how = nncf_parameters(request)
    restorer = AdvancedAccuracyRestorerParameters(
        **({"max_num_iterations": target.max_float} if target.max_float is not None else {}))
    # NNCF draws progress bars on stdout; the worker's log is one line per scored model.
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = nncf.quantize_with_accuracy_control(
                converted.model, calibration_dataset=nncf.Dataset(data),
                validation_dataset=nncf.Dataset(data),
                validation_fn=lambda compiled, _items: score(compiled),
                max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(data),
                fast_bias_correction=kwargs["fast_bias_correction"],
                ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
                advanced_quantization_parameters=kwargs["advanced_parameters"],
                advanced_accuracy_restorer_parameters=restorer)
    except ValueError as exc:
        error = histogram_error(request, exc)
        if error is exc:
            raise
        raise error from exc
    chosen = score(OpenVinoBackend(replace(converted, model=model), "mixed").compiled)
    # what NNCF put back in float: float weight layers the ignored scope did not ask for
    asked = set(ignored)
    left_float = {converted.layer_name(op) for op in converted.model.get_ordered_ops()
                  if op.get_friendly_name() in asked}
    floats = [name for name in weight_layers(converted, model)[1] if name not in left_float]
    return model, AccuracyControl(target, float_score, chosen, floats, validations)
