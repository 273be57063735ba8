"""Registry of quantization modes keyed by name (torchao's config -> handler shape).

Each mode lives in its own module under worker/quantize/ and registers one handler with
@register(...); adding a mode is a one-file change. The registry imports every module of the
package once, so mode names are known to manifest validation without naming them here.
A mode also says whether it is a reference (the model as given: fp32, ort_fp32) and which
`models` columns only it fills (int8_mixed's search outcome).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from worker.catalogue import TORCH_SOURCES
from worker.errors import ModelError

if TYPE_CHECKING:
    import torch

    from worker.manifest import CalibrationSpec
    from worker.models.base import LoadedModel


@dataclass
class QuantizeRequest:
    """What a handler gets besides the fp32 model."""

    device: str  # "cpu" | "cuda"
    calibration: CalibrationSpec
    keep_float: list[str]
    # Yields NCHW float batches in [0, 1] at the model's input size: calibration images,
    # never the evaluation images.
    calibration_batches: Callable[[], Iterable[torch.Tensor]]
    work_dir: str  # scratch folder for exported files (ONNX), unique per unit
    # What a searching mode (int8_mixed) must reach, built only when such a mode asks: it
    # scores fp32 on the calibration images first.
    search_target: Callable[[], SearchTarget] | None = None
    # Where a long-running mode (a search's trials) says how far it is; one line each time.
    progress: Callable[[str], None] | None = None


@dataclass
class SearchTarget:
    """A score to maximise and the value it must reach (mixed-precision search)."""

    score_fn: Callable[[Quantized], Any]  # a float, or (score, tie-break): mixed_search.Score
    value: float
    name: str  # e.g. "mAP on the calibration split"
    max_float: int | None = None
    # The same score on calibration images the search never scores, and the value it must
    # reach there: whether the target holds beyond the images it was fitted to.
    heldout_fn: Callable[[Quantized], Any] | None = None
    heldout_value: float | None = None


@dataclass
class Quantized:
    """A model ready to benchmark: predict(batch NCHW on device) -> detections | logits."""

    predict: Callable[[torch.Tensor], Any]
    backend: str  # e.g. "torch-eager", "torch-fx-x86", "onnxruntime"
    size_bytes: int  # bytes of the serialized model
    params_by_dtype: dict[str, int]  # element counts of weights per dtype
    int8_modules: list[str] = field(default_factory=list)
    float_modules: list[str] = field(default_factory=list)
    notes: str = ""  # what stayed float and why, shown in the report
    module: Any = None  # the torch module or ORT session, for inspection
    # ORT modes: (fp32, quantized) ONNX files with matching node names; a session cannot be
    # hooked, so inspection compares these. They live in the request's work_dir.
    onnx_paths: tuple[str, str] | None = None
    search: Any = None  # int8_mixed: its MixedSearch (columns(), write_plot())


Handler = Callable[["LoadedModel", QuantizeRequest], Quantized]


@dataclass(frozen=True)
class ModeInfo:
    name: str
    handler: Handler
    devices: frozenset[str]
    needs_calibration: bool
    description: str
    sources: frozenset[str] = frozenset(TORCH_SOURCES)
    reference: bool = False  # the model as given (fp32, ort_fp32): nothing to inspect
    extra_columns: tuple[str, ...] = ()  # `models` columns only this mode fills


_MODES: dict[str, ModeInfo] = {}
_loaded = False


def register(name: str, *, devices: Iterable[str], needs_calibration: bool = False,
             description: str = "", sources: Iterable[str] = TORCH_SOURCES,
             reference: bool = False,
             extra_columns: Iterable[str] = ()) -> Callable[[Handler], Handler]:
    def wrap(handler: Handler) -> Handler:
        if name in _MODES:
            raise RuntimeError(f"mode {name!r} registered twice")
        _MODES[name] = ModeInfo(name, handler, frozenset(devices), needs_calibration, description,
                                frozenset(sources), reference, tuple(extra_columns))
        return handler
    return wrap


def _load_modes() -> None:
    global _loaded
    if _loaded:
        return
    import worker.quantize as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in {"registry", "common", "parts", "mixed_search"}:
            importlib.import_module(f"worker.quantize.{info.name}")
    _loaded = True


def modes() -> dict[str, ModeInfo]:
    _load_modes()
    return dict(_MODES)


def mode_names() -> list[str]:
    return sorted(modes())


def get_mode(name: str) -> ModeInfo:
    all_modes = modes()
    if name not in all_modes:
        raise KeyError(f"unknown mode {name!r}; known: {', '.join(sorted(all_modes))}")
    return all_modes[name]


def validate_mode_device(mode: str, device: str) -> str | None:
    """None when the mode runs on the device, else a one-line reason."""
    info = get_mode(mode)
    if device not in info.devices:
        return f"mode {mode} does not run on {device} (it runs on: {', '.join(sorted(info.devices))})"
    return None


def validate_mode_source(mode: str, source: str) -> str | None:
    """None when the mode can take a model of this source, else a one-line reason."""
    info = get_mode(mode)
    if source not in info.sources:
        runs = ", ".join(sorted(m for m, i in modes().items() if source in i.sources))
        why = " (an ONNX file has no torch module)" if source == "onnx" else ""
        return f"mode {mode} cannot run models of source {source}{why}; use {runs}"
    return None


def quantize(model: LoadedModel, mode: str, request: QuantizeRequest) -> Quantized:
    problem = validate_mode_source(mode, model.source)
    if problem:
        raise ModelError(problem)
    q = get_mode(mode).handler(model, request)
    loader_notes = getattr(model, "notes", "")  # e.g. what a YOLO benchmark leaves out
    if loader_notes:
        q.notes = "; ".join(n for n in (loader_notes, q.notes) if n)
    return q
