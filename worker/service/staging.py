"""A job's input files travel with it: staged into the results store by content at submit.

`qbench submit` copies the checkpoint or ONNX file and the dataset a manifest names into
<results>/inputs/<sha256>/<name>, written once (a temporary name, then a rename) and shared by
every job that names the same bytes. The units carry the store-relative paths and each worker
resolves them against its own QBENCH_RESULTS_DIR, inside its inputs/ folder only, so a manifest
submitted from any host that shares the results store runs as written, on the exact bytes whose
digests the `models` row records.

Datasets larger than QBENCH_STAGE_MAX_BYTES (default 2 GiB) are referenced instead: they must
lie inside a data root (QBENCH_DATA_ROOTS), which the workers are expected to mount at the
same path; their digest is still recorded.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import shutil
import stat
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from qbench.atomic import atomic_path
from qbench.env import env_int
from qbench.manifest import ManifestError, Unit, allowed_roots, input_roots, is_inside
from qbench.orchestrate import JobPlan

INPUTS = "inputs"
CHUNK = 1 << 20


def stage_max_bytes() -> int:
    return env_int("QBENCH_STAGE_MAX_BYTES", 2 << 30, minimum=0)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def dataset_files(folder: Path, roots: Sequence[Path]) -> list[tuple[str, Path]]:
    """(path relative to the folder, the real file) of every regular file a reader of the
    folder sees, by lstat and stat alone: no byte is read. A symlink is followed only where it
    resolves inside the folder or the roots (as a unit's reader confines it), and refused
    otherwise; a loop is refused; FIFOs, sockets and devices are left out (no reader opens
    them). Staging copies, hashes and sizes exactly this list."""
    top = folder.resolve()
    allowed = [top, *(Path(r) for r in roots)]
    found: list[tuple[str, Path]] = []

    def walk(real_dir: Path, rel: PurePosixPath, above: frozenset[Path]) -> None:
        with os.scandir(real_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            shown = folder / rel / entry.name
            real = Path(entry.path)
            if entry.is_symlink():
                try:
                    real = real.resolve(strict=True)
                except FileNotFoundError:
                    continue  # a broken link: nothing to read, as a reader sees it
                except (OSError, RuntimeError):
                    raise ManifestError(f"{shown}: symlink loop") from None
                if not is_inside(real, allowed):
                    raise ManifestError(f"{shown}: a symlink to {real}, outside the dataset "
                                        "folder and the data roots (QBENCH_DATA_ROOTS)")
            mode = os.stat(real).st_mode
            if stat.S_ISDIR(mode):
                if real in above:
                    raise ManifestError(f"{shown}: symlink loop (back to {real})")
                walk(real, rel / entry.name, above | {real})
            elif stat.S_ISREG(mode):
                found.append(((rel / entry.name).as_posix(), real))

    walk(top, PurePosixPath(), frozenset({top}))
    return found


def tree_digest(files: list[tuple[str, Path]] | Path) -> str:
    """sha256 over each file's path (relative, sorted) and its sha256: names and bytes."""
    if isinstance(files, Path):  # a folder: the files inside it alone
        files = dataset_files(files, ())
    digest = hashlib.sha256()
    for rel, real in sorted(files):
        digest.update(f"{rel}\0{sha256_file(real)}\n".encode())
    return digest.hexdigest()


def store_path(sha: str, source: Path) -> str:
    """Where bytes of this digest live, relative to the results store."""
    return f"{INPUTS}/{sha}/{safe_name(source.name)}"


def put(source: Path, sha: str, root: Path, files: list[tuple[str, Path]] | None) -> str:
    """Copy a file, or the listed files of a folder, into the store once; a copy already
    there is kept as it is."""
    relative = store_path(sha, source)
    target = root / relative
    if target.exists():
        try:
            os.utime(target)  # reused now: `qbench gc` spares what was staged lately
            return relative
        except FileNotFoundError:
            pass  # gc took it a moment ago: copy it again
    target.parent.mkdir(parents=True, exist_ok=True)
    if files is not None:
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            tmp.mkdir()
            for rel, real in files:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(real, tmp / rel)
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():  # not a submitter that got there first
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    else:
        with atomic_path(target) as tmp_file:
            shutil.copyfile(source, tmp_file)
    return relative


def safe_name(text: str) -> str:
    """A file name that is one plain path component in the store, whatever the user named it."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "_"


@dataclasses.dataclass
class _Input:
    field: str
    value: str  # as the manifest wrote it
    path: Path
    files: list[tuple[str, Path]] | None  # a folder's files (dataset_files); None: a file
    size: int

    @functools.cached_property
    def sha(self) -> str:  # read only once every check that needs no byte has passed
        return tree_digest(self.files) if self.files is not None else sha256_file(self.path)


def _inputs_of(unit: Unit) -> tuple[_Input | None, list[_Input]]:
    def one(field: str, value: str | None) -> _Input | None:
        if value is None:
            return None
        path = unit.resolve(value)  # before staging: confined to this process's input roots
        if not path.exists():
            raise ManifestError(f"{field}: file not found: {path}")
        if path.is_dir():
            files = dataset_files(path, input_roots(Path(unit.base_dir)))
            return _Input(field, value, path, files, sum(real.stat().st_size for _, real in files))
        if not path.is_file():  # a FIFO would block the hash forever
            raise ManifestError(f"{field}: {path} is not a regular file")
        return _Input(field, value, path, None, path.stat().st_size)

    model = one("checkpoint", unit.model.checkpoint) or one("path", unit.model.path)
    data: list[_Input] = []
    if unit.dataset is not None:
        # images, and the annotations JSON or the labels folder (and a YOLO data.yaml)
        data = [i for i in (one(f, v) for f, v, _ in unit.dataset.named_paths()) if i]
    return model, data


def _check_referenced(item: _Input, limit: int) -> None:
    """A dataset too big to copy is read in place: only a data root is shared with workers."""
    roots = allowed_roots()
    if not any(item.path == r or r in item.path.parents for r in roots):
        raise ManifestError(
            f"{item.field}: {item.path} is over QBENCH_STAGE_MAX_BYTES={limit} to copy into "
            f"the results store and not inside a data root the workers share "
            f"(QBENCH_DATA_ROOTS); move it under one or raise the limit")


def _dataset_digest(data: list[_Input]) -> str | None:
    if not data:
        return None
    text = "".join(f"{i.field}:{i.sha}\n" for i in data)
    return hashlib.sha256(text.encode()).hexdigest()


def _digested(plan: JobPlan, root: Path | None) -> JobPlan:
    cache: dict[tuple[str, str], tuple[_Input | None, list[_Input]]] = {}
    limit = stage_max_bytes()
    units = []
    for unit in plan.units:
        key = (unit.model.id, unit.base_dir)
        if key not in cache:
            cache[key] = _inputs_of(unit)
        model, data = cache[key]
        staged = dict(unit.staged)
        if root is not None:
            if model is not None:
                staged[model.value] = put(model.path, model.sha, root, None)
            if data and sum(i.size for i in data) <= limit:  # what is really copied
                for i in data:
                    staged[i.value] = put(i.path, i.sha, root, i.files)
            else:
                for i in data:  # before hashing: a refused dataset is never read
                    _check_referenced(i, limit)
        units.append(unit.model_copy(update={
            "staged": staged,
            "checkpoint_sha256": model.sha if model else None,
            "dataset_sha256": _dataset_digest(data)}))
    return dataclasses.replace(plan, units=units)


def stage_plan(plan: JobPlan, results_root: Path) -> JobPlan:
    """The plan with its input files in the store and their digests on every unit.

    A file that cannot be read or copied is a one-line ManifestError; what was already copied
    stays (it is addressed by content, so it is reused, never wrong).
    """
    try:
        return _digested(plan, results_root)
    except OSError as exc:
        raise ManifestError(f"staging inputs into {results_root / INPUTS}: "
                            f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None


def digest_plan(plan: JobPlan) -> JobPlan:
    """`qbench run`: the same digests, files used where they are."""
    return _digested(plan, None)
