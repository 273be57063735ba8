"""The `models` row of a unit, assembled from small typed results that know their columns.

Each step of the pipeline returns one of these (or a result of its own module with a
`columns()` method: evaluate.run.Evaluation, artifacts.save.SavedArtifact,
quantize.mixed_search.MixedSearch); `assemble` puts the start columns, the results in order,
the status and the notes together once, at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from qbench.models.base import LoadedModel
    from qbench.quantize.registry import Quantized

INT8_DTYPES = {"qint8", "quint8", "int8", "uint8"}
_KNOWN_DTYPES = {"float32", "float16", "bfloat16", *INT8_DTYPES}


class RowPart(Protocol):
    def columns(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ModelFacts:
    """What loading told: the task, whether the weights are trained, the input size."""

    task: str
    trained_weights: bool
    input_h: int
    input_w: int

    @classmethod
    def of(cls, loaded: LoadedModel) -> ModelFacts:
        return cls(loaded.task, loaded.trained, loaded.input_size[0], loaded.input_size[1])

    def columns(self) -> dict[str, Any]:
        return {"task": self.task, "trained_weights": self.trained_weights,
                "input_h": self.input_h, "input_w": self.input_w}


@dataclass(frozen=True)
class InputFacts:
    """How images are fed to the model (its declared or default preprocessing), and why
    accuracy stays null when nobody declared it."""

    preprocess_json: str
    accuracy_note: str | None

    @classmethod
    def of(cls, pre: Any) -> InputFacts:  # a qbench.preprocess.defaults.Resolved
        from qbench.preprocess.defaults import UNDECLARED

        return cls(pre.to_json(), None if pre.trusted else UNDECLARED)

    def columns(self) -> dict[str, Any]:
        return {"preprocess": self.preprocess_json, "accuracy_note": self.accuracy_note}


@dataclass(frozen=True)
class Backend:
    """What runs the quantized model, e.g. "torch-fx-x86", "onnxruntime", and the properties
    it was compiled with where the runtime reports them (OpenVINO)."""

    name: str
    config: dict[str, Any] | None = None

    def columns(self) -> dict[str, Any]:
        return {"backend": self.name,
                "runtime_config": (None if self.config is None
                                   else json.dumps(self.config, sort_keys=True))}


@dataclass(frozen=True)
class SizeResult:
    """Bytes of the serialized quantized model against fp32's."""

    size_bytes: int
    fp32_size_bytes: int

    @classmethod
    def of(cls, q: Quantized, fp32_size: int) -> SizeResult:
        return cls(q.size_bytes, fp32_size)

    def columns(self) -> dict[str, Any]:
        return {"size_bytes": self.size_bytes,
                "fp32_size_bytes": self.fp32_size_bytes,
                "size_reduction": (1.0 - self.size_bytes / self.fp32_size_bytes
                                   if self.fp32_size_bytes else None)}


@dataclass(frozen=True)
class ParamsResult:
    """Weights per dtype and which conv/linear layers are int8 or float."""

    by_dtype: dict[str, int]
    int8_modules: tuple[str, ...]
    float_modules: tuple[str, ...]

    @classmethod
    def of(cls, q: Quantized) -> ParamsResult:
        return cls(dict(q.params_by_dtype), tuple(q.int8_modules), tuple(q.float_modules))

    def columns(self) -> dict[str, Any]:
        counts = self.by_dtype
        total = sum(counts.values())
        int8 = sum(n for d, n in counts.items() if d in INT8_DTYPES)
        return {
            "params_total": total, "params_fp32": counts.get("float32", 0),
            "params_fp16": counts.get("float16", 0), "params_bf16": counts.get("bfloat16", 0),
            "params_int8": int8,
            "params_other": sum(n for d, n in counts.items() if d not in _KNOWN_DTYPES),
            "params_int8_fraction": int8 / total if total else None,
            "params_by_dtype": json.dumps(counts, sort_keys=True),
            "int8_module_count": len(self.int8_modules),
            "float_module_count": len(self.float_modules),
            "int8_modules": list(self.int8_modules), "float_modules": list(self.float_modules),
        }


@dataclass(frozen=True)
class ExecutedPrecision:
    """How many conv/matmul-type operators the runtime really ran in each precision, read from
    the runtime itself (backends/*/backend.py executed_precision), and the one most ran in."""

    counts: dict[str, int] | None

    @classmethod
    def of(cls, runtime: Any) -> tuple[ExecutedPrecision, str | None]:
        """The read-out and, where the runtime could not be asked, a note saying why."""
        if runtime is None:
            return cls(None), None
        try:
            return cls(runtime.executed_precision()), None
        except Exception as exc:  # the measurements stand without it; the note says why
            return cls(None), (f"executed precision not read: {type(exc).__name__}: "
                               f"{str(exc).strip()[:200]}")

    @property
    def dominant(self) -> str | None:
        if not self.counts:
            return None
        return max(sorted(self.counts), key=lambda k: self.counts[k])

    def columns(self) -> dict[str, Any]:
        counts = self.counts
        total = sum(counts.values()) if counts else 0
        return {"executed_ops_by_precision": (None if counts is None
                                              else json.dumps(counts, sort_keys=True)),
                "executed_precision": self.dominant,
                "executed_int8_fraction": (counts.get("int8", 0) / total if total else None)}


def join_notes(notes: Iterable[str | None]) -> str:
    return "; ".join(n for n in notes if n)


def assemble(start: dict[str, Any], parts: Iterable[RowPart], *, status: str,
             error: str | None, notes: str | None, ended_at: Any) -> dict[str, Any]:
    """One `models` row: start columns, then each result's columns, then the outcome."""
    row = dict(start)
    for part in parts:
        row.update(part.columns())
    row.update(status=status, error=error, ended_at=ended_at)
    if notes is not None:
        row["notes"] = notes
    return row
