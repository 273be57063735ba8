"""Where artifacts live, how they are named, hashed and written (atomically)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from qbench.atomic import atomic_path

# artifact_format -> file extension; a (job, model, mode) has exactly one of these files.
EXTENSIONS = {"torchscript": "pt", "onnx": "onnx", "openvino-ir": "tar"}
CHUNK = 1 << 20


def artifacts_dir(root: Path, job_id: str) -> Path:
    return root / "artifacts" / job_id


def artifact_file(root: Path, job_id: str, model_id: str, mode: str, fmt: str) -> Path:
    return artifacts_dir(root, job_id) / model_id / f"{mode}.{EXTENSIONS[fmt]}"


def relative(root: Path, path: Path) -> str:
    """The path stored in the row: relative to the results folder, which workers and the CLI
    may mount at different places."""
    return path.relative_to(root).as_posix()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_hashing(src: Path, dst: Path) -> str:
    """Copy src to dst and return the sha256 of the bytes copied (one read of src)."""
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(CHUNK):
            digest.update(chunk)
            fout.write(chunk)
    return digest.hexdigest()


def remove_others(root: Path, job_id: str, model_id: str, mode: str, keep: Path | None) -> None:
    """Delete this mode's files in any other format: a retry never leaves two artifacts."""
    for fmt in EXTENSIONS:
        path = artifact_file(root, job_id, model_id, mode, fmt)
        if path != keep:
            path.unlink(missing_ok=True)


def write_atomic(target: Path, write: Callable[[Path], object]) -> str:
    """write(tmp_path) under a temporary name beside target, hash it, rename; returns sha256.

    Readers never see half a file, and a retried unit replaces the file it wrote before."""
    with atomic_path(target) as tmp:
        write(tmp)
        digest = sha256_file(tmp)
    return digest
