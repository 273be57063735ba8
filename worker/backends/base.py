"""What every runtime provides: the Backend a quantized result runs on.

A Backend object is made by a mode for one quantized result and holds that result's runtime
state (a torch module, or ONNX files and their session). Class-level facts (devices, version,
the artifact's load snippet) need no instance.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from qbench.inspect.record import LayerComparison
    from qbench.models.base import LoadedModel
    from qbench.models.kinds import TaskKind


class ArtifactError(RuntimeError):
    """Why an artifact could not be saved; the unit's measurements stay valid."""


@dataclass
class Artifact:
    """A file ready to be written: `write(path)` writes it; `note` goes to the row's notes."""

    format: str  # "torchscript" | "onnx": the `artifact_format` column
    write: Callable[[Path], None]
    note: str


class Backend(ABC):
    """A runtime a quantized result runs on (see worker/backends/__init__.py)."""

    config: ClassVar[ModuleType]  # the runtime's torch-free config module
    label: str  # the `backend` column of the rows (e.g. "torch-eager", "onnxruntime")

    # -- facts of the runtime ----------------------------------------------------------------
    @classmethod
    def name(cls) -> str:
        return cls.config.NAME

    @classmethod
    def devices(cls) -> tuple[str, ...]:
        return tuple(cls.config.devices())

    @classmethod
    def version(cls) -> str | None:
        """The installed version of the runtime (the first of its distributions found)."""
        from qbench.backends import installed_version

        return installed_version(cls.config.DISTRIBUTIONS)

    @classmethod
    @abstractmethod
    def load_snippet(cls, kind: TaskKind, file: str, input_name: str | None) -> str:
        """A Python snippet that loads and runs an artifact of this runtime without qbench."""

    # -- one quantized result ----------------------------------------------------------------
    @property
    def module(self) -> Any:
        """The torch module that runs, for runtimes that have one; None otherwise."""
        return None

    @abstractmethod
    def artifact(self, kind: TaskKind, example: torch.Tensor,
                 predict: Callable[[torch.Tensor], Any]) -> Artifact:
        """What to save for this result, checked against `predict` on an example where the
        saved form is a different program; raises ArtifactError when it cannot be saved."""

    @abstractmethod
    def compare_layers(self, loaded: LoadedModel, predict: Callable[[torch.Tensor], Any],
                       images: torch.Tensor, layers: str) -> LayerComparison:
        """Inspection: activations of the fp32 model and of this result, layer by layer."""

    def proposals_per_image(self, predict: Callable[[torch.Tensor], Any],
                            images: torch.Tensor) -> list[int] | None:
        """How many proposals a two-stage detector's box head pooled for each image (predict:
        this result's, run on images where the runtime reads them on the way), where the
        runtime lets them be read; None where it does not (or the model has no box head)."""
        return None

    def runtime_config(self) -> dict[str, Any] | None:
        """The properties the runtime reports it compiled this result with; None where it
        takes none beyond the thread count (torch, ONNX Runtime)."""
        return None

    @abstractmethod
    def executed_precision(self) -> dict[str, int]:
        """How many weight-carrying operators ran in each precision ("int8", "float32",
        "bfloat16", ...), read from what the runtime really executes."""
