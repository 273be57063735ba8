"""The handlers that build each mode, and what they return (Quantized).

What a mode is (backend, precision, devices, sources, calibration, reference, options) is the
torch-free mode table, worker/modes.py; each mode's module here (worker/quantize/<mode>.py)
binds its handler to that row with @register(name). The registry imports those modules once,
on first use.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qbench.errors import ModelError
from qbench.modes import MODES, get_mode, mode_source_problem

if TYPE_CHECKING:
    import torch

    from qbench.backends.base import Backend
    from qbench.manifest import CalibrationSpec
    from qbench.models.base import LoadedModel
    from qbench.quantize.mixed_search import MixedSearch
    from qbench.quantize.ov_accuracy_control import AccuracyControl


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
    search: str = "qbench"  # quantization.target.search: "qbench", or "nncf" (ov_int8_mixed)


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
    # What it runs on (worker/backends): saving, inspection and executed precision ask it.
    runtime: Backend | None = None
    # a searching mode's outcome (columns(), note(), write_plot()): qbench's search, or NNCF's
    search: MixedSearch | AccuracyControl | None = None

    @property
    def module(self) -> Any:
        """The torch module that runs (torch backends), else None."""
        return None if self.runtime is None else self.runtime.module


Handler = Callable[["LoadedModel", QuantizeRequest], Quantized]

_HANDLERS: dict[str, Handler] = {}
_loaded = False


def register(name: str) -> Callable[[Handler], Handler]:
    """Bind a handler to its row of the mode table (worker/modes.py)."""
    def wrap(handler: Handler) -> Handler:
        if name not in MODES:
            raise RuntimeError(f"mode {name!r} has no row in the mode table (worker/modes.py)")
        if name in _HANDLERS:
            raise RuntimeError(f"mode {name!r} registered twice")
        _HANDLERS[name] = handler
        return handler
    return wrap


def _load_modes() -> None:
    global _loaded
    if _loaded:
        return
    import qbench.quantize as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name in MODES:
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    _loaded = True


def handlers() -> dict[str, Handler]:
    """Every registered handler by mode name (imports the mode modules once)."""
    _load_modes()
    return dict(_HANDLERS)


def handler(name: str) -> Handler:
    get_mode(name)  # an unknown name: KeyError naming the known ones
    return handlers()[name]


def quantize(model: LoadedModel, mode: str, request: QuantizeRequest) -> Quantized:
    problem = mode_source_problem(mode, model.source)
    if problem:
        raise ModelError(problem)
    q = handler(mode)(model, request)
    loader_notes = getattr(model, "notes", "")  # e.g. what a YOLO benchmark leaves out
    if loader_notes:
        q.notes = "; ".join(n for n in (loader_notes, q.notes) if n)
    return q
