"""Model files checked for what they claim to be, before a job is queued, without torch.

A checkpoint must be a torch archive: the zip layout `torch.save` (and `torch.jit.save`)
writes, a `data.pkl` and a `version` record under one top folder, or the legacy format, a
pickle that starts with torch's magic number. Nothing is unpickled here: the zip's directory
and the first bytes are enough. An ONNX file must parse as an ONNX model with a graph that has
inputs and outputs; tensors stored outside the file are not read.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from qbench.errors import ManifestError

# What torch.save(..., _use_new_zipfile_serialization=False) writes first: pickle protocol 2,
# then torch's magic number 0x1950a86a20f9469cfc6c as a 10-byte LONG1.
LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def is_torch_archive(path: Path) -> bool:
    with path.open("rb") as fh:
        if fh.read(len(LEGACY_MAGIC)) == LEGACY_MAGIC:
            return True
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    return any(f"{t}/data.pkl" in names and (f"{t}/version" in names or f"{t}/.data/version"
                                             in names) for t in tops)


def onnx_problem(path: Path) -> str | None:
    """Why the file is not an ONNX model with a graph, inputs and outputs; None when it is."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
        return f"not an ONNX model ({' '.join(str(exc).split())[:120] or type(exc).__name__})"
    if not model.HasField("graph") or not model.graph.node:
        return "not an ONNX model (no graph)"
    initializers = {t.name for t in model.graph.initializer}
    if not [i for i in model.graph.input if i.name not in initializers]:
        return "an ONNX model without graph inputs"
    if not model.graph.output:
        return "an ONNX model without graph outputs"
    return None


def check_model_file(field: str, path: Path, source: str, kind: str) -> None:
    """kind: "checkpoint" (a torch archive) or "onnx"; ManifestError naming the file if not."""
    try:
        if kind == "checkpoint" and not is_torch_archive(path):
            raise ManifestError(f"{source}: {field}: {path} is not a torch checkpoint (neither "
                                "the zip archive torch.save writes nor its legacy format)")
        if kind == "onnx" and (problem := onnx_problem(path)):
            raise ManifestError(f"{source}: {field}: {path} is {problem}")
    except OSError as exc:
        raise ManifestError(f"{source}: {field}: {path}: cannot be read "
                            f"({exc.strerror or exc})") from None


def check_model_files(manifest, resolved: dict[str, Path], source: str) -> None:
    """Every checkpoint and ONNX file the manifest names (resolved: field -> path)."""
    for i, m in enumerate(manifest.models):
        if (path := resolved.get(f"models[{i}].checkpoint")) is not None:
            check_model_file(f"models[{i}].checkpoint", path, source, "checkpoint")
        if m.source == "onnx" and (path := resolved.get(f"models[{i}].path")) is not None:
            check_model_file(f"models[{i}].path", path, source, "onnx")
