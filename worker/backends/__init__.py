"""Where a model runs: one package per runtime (torch, onnxruntime, openvino), each a Backend.

Each runtime package holds a torch-free `config.py` (its name, devices, the sources it takes,
its artifact format; read by the mode table and `qbench validate`) and a `backend.py` with the
Backend subclass (imports the runtime itself). A quantized result carries the Backend object it
runs on; everything that differs by runtime (running a batch, saving the artifact and its load
snippet, inspection's activation capture, the precision operators really ran in, the version
for the environment fingerprint) is asked of that object, never guessed from types.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING

from qbench.backends.onnxruntime import config as onnxruntime_config
from qbench.backends.openvino import config as openvino_config
from qbench.backends.torch import config as torch_config

if TYPE_CHECKING:
    from qbench.backends.base import Backend

# name -> torch-free config module; adding a runtime adds its package and one line here.
CONFIGS = {c.NAME: c for c in (torch_config, onnxruntime_config, openvino_config)}


def backend_class(name: str) -> type[Backend]:
    """The Backend subclass of a runtime (imports that runtime)."""
    if name not in CONFIGS:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(sorted(CONFIGS))}")
    return importlib.import_module(f"{__name__}.{name}.backend").BACKEND


def for_format(fmt: str) -> type[Backend]:
    """The Backend whose artifacts have this format ("torchscript", "onnx", "openvino-ir")."""
    for name, config in CONFIGS.items():
        if fmt == config.ARTIFACT_FORMAT:
            return backend_class(name)
    raise KeyError(f"no backend saves artifacts of format {fmt!r}")


def installed_version(distributions: tuple[str, ...]) -> str | None:
    """The version of the first of these distributions that is installed (no import)."""
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def runtime_versions() -> dict[str, str | None]:
    """`<backend>_version` columns of the environment fingerprint, for every runtime but torch
    (torch and torchvision have their own columns, read off the modules: they keep +cuXXX)."""
    return {f"{name}_version": installed_version(config.DISTRIBUTIONS)
            for name, config in CONFIGS.items() if name != torch_config.NAME}
