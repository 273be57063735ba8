"""The mode table: every quantization mode as a backend x a recipe, as plain data.

`qbench validate`, the pipeline and the report read this table; it imports neither torch nor a
runtime, so validation starts fast. Each mode's handler (what builds it) lives in
worker/quantize/<mode>.py and binds itself to its row with `@register(name)`; a test holds the
two together. Adding a mode: a row here and a handler module.
"""

from __future__ import annotations

from dataclasses import dataclass

from qbench.backends import CONFIGS

# The `models` columns a searching mode fills (its MixedSearch.columns()); null for the others.
MIXED_COLUMNS = ("mixed_target_metric", "mixed_target", "mixed_score", "mixed_target_met",
                 "mixed_float_groups", "mixed_heldout_score", "mixed_heldout_target",
                 "mixed_heldout_met", "mixed_refined_from")

BIAS_CORRECTION = "bias_correction"  # calibration.bias_correction
FULL_BIAS_CORRECTION = "full_bias_correction"  # calibration.bias_correction: full


@dataclass(frozen=True)
class Mode:
    name: str
    backend: str  # a package of worker/backends
    precision: str  # what its weight layers compute in: fp32 | fp16 | bf16 | int8 | mixed
    description: str
    devices: frozenset[str]
    sources: frozenset[str]
    needs_calibration: bool = False
    reference: bool = False  # the model as given (a float baseline): nothing to inspect
    options: frozenset[str] = frozenset()  # manifest options it takes (bias_correction)
    extra_columns: tuple[str, ...] = ()  # `models` columns only this mode fills

    @property
    def bias_correction(self) -> bool:
        return BIAS_CORRECTION in self.options

    @property
    def full_bias_correction(self) -> bool:
        return FULL_BIAS_CORRECTION in self.options


def _mode(name: str, backend: str, precision: str, description: str, *,
          devices: tuple[str, ...] | None = None, options: tuple[str, ...] = (),
          **flags) -> Mode:
    config = CONFIGS[backend]
    runs_on = config.devices()
    return Mode(name, backend, precision, description,
                frozenset(d for d in (devices or runs_on) if d in runs_on),
                frozenset(config.SOURCES), options=frozenset(options), **flags)


def _table() -> dict[str, Mode]:
    rows = [
        _mode("fp32", "torch", "fp32", "float32 eager PyTorch (the reference)", reference=True),
        _mode("fp32_compiled", "torch", "fp32",
              "float32, torch.compile (inductor); a detector's parts that compile",
              reference=True),
        _mode("fp16", "torch", "fp16", "float16 weights and activations (CUDA)",
              devices=("cuda",)),
        _mode("bf16", "torch", "bf16", "bfloat16 weights and activations"),
        _mode("int8_dynamic", "torch", "int8",
              "dynamic int8 of nn.Linear layers (torch.ao, x86 engine)", devices=("cpu",)),
        _mode("int8_static", "torch", "int8",
              "post-training static int8 (torch.ao FX, x86 backend)", devices=("cpu",),
              needs_calibration=True),
        _mode("int8_mixed", "torch", "mixed",
              "int8_static, keeping the most sensitive layer groups float until "
              "quantization.target holds", devices=("cpu",), needs_calibration=True,
              extra_columns=MIXED_COLUMNS),
        _mode("ort_fp32", "onnxruntime", "fp32", "ONNX Runtime float32 of the exported model",
              reference=True),
        _mode("ort_int8", "onnxruntime", "int8",
              "ONNX Runtime static int8 (QDQ, u8 activations, s8 weights)",
              needs_calibration=True, options=(BIAS_CORRECTION,)),
        _mode("ort_int8_mixed", "onnxruntime", "mixed",
              "ort_int8, keeping the most sensitive layers (ONNX nodes) float until "
              "quantization.target holds", needs_calibration=True,
              options=(BIAS_CORRECTION,), extra_columns=MIXED_COLUMNS),
        _mode("ov_fp32", "openvino", "fp32",
              "OpenVINO float32 (INFERENCE_PRECISION_HINT f32 forced)"),
        _mode("ov_bf16", "openvino", "bf16",
              "OpenVINO bfloat16 (needs AVX-512 BF16 or AMX)"),
        _mode("ov_int8", "openvino", "int8",
              "OpenVINO int8 by NNCF post-training quantization; detector post-processing "
              "stays float", needs_calibration=True,
              options=(BIAS_CORRECTION, FULL_BIAS_CORRECTION)),
        _mode("ov_int8_mixed", "openvino", "mixed",
              "ov_int8, keeping the most sensitive layers float until quantization.target "
              "holds (qbench's search, NNCF as the quantizer)", needs_calibration=True,
              options=(BIAS_CORRECTION, FULL_BIAS_CORRECTION), extra_columns=MIXED_COLUMNS),
    ]
    return {m.name: m for m in rows}


MODES: dict[str, Mode] = _table()
SOURCES = tuple(sorted({s for m in MODES.values() for s in m.sources}))


def mode_names() -> list[str]:
    return sorted(MODES)


def get_mode(name: str) -> Mode:
    if name not in MODES:
        raise KeyError(f"unknown mode {name!r}; known: {', '.join(mode_names())}")
    return MODES[name]


def mode_device_problem(mode: str, device: str) -> str | None:
    """None when the mode runs on the device, else a one-line reason."""
    entry = get_mode(mode)
    if device not in entry.devices:
        return f"mode {mode} does not run on {device} (it runs on: {', '.join(sorted(entry.devices))})"
    return None


def mode_source_problem(mode: str, source: str) -> str | None:
    """None when the mode can take a model of this source, else a one-line reason."""
    if source in get_mode(mode).sources:
        return None
    runs = ", ".join(m for m in mode_names() if source in MODES[m].sources)
    why = " (an ONNX file has no torch module)" if source == "onnx" else ""
    return f"mode {mode} cannot run models of source {source}{why}; use {runs}"


def reference_modes() -> list[str]:
    """The float baselines a job may name as benchmark.reference."""
    return [m for m in mode_names() if MODES[m].reference]
