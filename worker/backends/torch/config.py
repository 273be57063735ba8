"""The torch backend as plain data (no torch import): read by the mode table and validate."""

from __future__ import annotations

NAME = "torch"
SOURCES = ("torchvision", "yolo")  # loaders that yield a torch module
ARTIFACT_FORMAT = "torchscript"
DISTRIBUTIONS = ("torch", "torchvision")  # versions in the environment fingerprint


def devices() -> tuple[str, ...]:
    """Devices a torch mode may name; whether CUDA is present is checked when a unit runs."""
    return ("cpu", "cuda")
