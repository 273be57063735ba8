"""`qbench export`: copy a job's artifacts, checked against their sha256, with a card beside each.

Everything is staged in a hidden folder inside the target and renamed into place only once
every file is copied and verified: a bad hash, a full disk or an unwritable target leaves
nothing half-copied behind.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qbench.artifacts.card import build_card, card_json
from qbench.artifacts.store import copy_hashing
from qbench.manifest import check_job_id
from qbench.results import job_ids, read_table

LIST_AT_MOST = 20


class ExportError(ValueError):
    """One line naming what is wrong (and what exists instead)."""


@dataclass
class ExportResult:
    files: list[Path] = field(default_factory=list)  # artifacts written; cards beside them
    skipped: list[str] = field(default_factory=list)  # "model mode: why there is no artifact"
    kept: list[Path] = field(default_factory=list)  # already there with the same bytes
    replaced: list[Path] = field(default_factory=list)  # a different file was there (--overwrite)


def _listing(names: list[str]) -> str:
    if not names:
        return "none"
    shown = names[-LIST_AT_MOST:]
    more = len(names) - len(shown)
    return (f"{more} older and " if more else "") + ", ".join(shown)


def _select(root: Path, job_id: str, model: str | None, mode: str | None) -> list[dict]:
    rows = read_table(root, "models", job_id).to_pylist()
    if not rows:
        raise ExportError(f"job {job_id!r}: no rows under {root}; jobs: {_listing(job_ids(root))}")
    models = sorted({r["model_id"] for r in rows})
    if model is not None and model not in models:
        raise ExportError(f"model {model!r} is not in job {job_id}; models: {', '.join(models)}")
    rows = [r for r in rows if model is None or r["model_id"] == model]
    modes = sorted({r["mode"] for r in rows})
    if mode is not None and mode not in modes:
        where = f" for model {model}" if model else ""
        raise ExportError(f"mode {mode!r} is not in job {job_id}{where}; modes: {', '.join(modes)}")
    return [r for r in rows if mode is None or r["mode"] == mode]


def _why_none(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"the unit failed ({row['error']})"
    if row["error"]:
        return row["error"]
    notes = row["notes"] or ""
    return next((n.strip() for n in notes.split(";") if n.strip().startswith("artifact")),
                "no artifact recorded")


def _split(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Rows with an artifact, and why the other (model, mode) pairs have none."""
    ready = [r for r in rows if r["artifact_path"]]
    have = {(r["model_id"], r["mode"]) for r in ready}
    skipped = [f"{r['model_id']} {r['mode']} {r['device']}: {_why_none(r)}" for r in rows
               if (r["model_id"], r["mode"]) not in have]
    return sorted(ready, key=lambda r: (r["model_id"], r["mode"])), skipped


def _source(root: Path, row: dict[str, Any]) -> Path:
    base = (root / "artifacts").resolve()
    path = (root / row["artifact_path"]).resolve()
    if base not in path.parents:
        raise ExportError(f"{row['model_id']} {row['mode']}: artifact_path "
                          f"{row['artifact_path']!r} points outside {base}")
    if not path.is_file():
        raise ExportError(f"artifact missing: {path} ({row['model_id']} {row['mode']})")
    return path


def _onnx_input(path: Path) -> str | None:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    names = [i.name for i in graph.input if i.name not in inits]
    return names[0] if len(names) == 1 else None


def _stage(root: Path, rows: list[dict], latency: list[dict], staging: Path) -> list[Path]:
    """Copy and verify every artifact, then write its card; returns paths relative to staging."""
    staged: list[Path] = []
    for row in rows:
        src = _source(root, row)
        rel = Path(row["model_id"]) / src.name
        dst = staging / rel
        dst.parent.mkdir(exist_ok=True)
        digest = copy_hashing(src, dst)
        if digest != row["artifact_sha256"]:
            raise ExportError(f"sha256 mismatch: {src} (recorded {row['artifact_sha256'][:12]}…, "
                              f"file {digest[:12]}…): changed or truncated since the job saved it")
        onnx_input = _onnx_input(dst) if row["artifact_format"] == "onnx" else None
        unit_latency = [r for r in latency if r["unit_id"] == row["unit_id"]]
        card = build_card(row, unit_latency, src.name, dst.stat().st_size, onnx_input)
        dst.with_suffix(".json").write_text(card_json(card))
        staged += [rel, rel.with_suffix(".json")]
    return staged


def _check_way_clear(to: Path, staged: list[Path]) -> None:
    """Every target is free or a file an earlier export wrote; a folder or a file where a
    folder must go is the user's and is never replaced."""
    for rel in staged:
        final = to / rel
        if final.parent.exists() and not final.parent.is_dir():
            raise ExportError(f"cannot write {final}: {final.parent} is a file, not a folder")
        if final.is_symlink() or (final.exists() and not final.is_file()):
            raise ExportError(f"cannot write {final}: something other than a file is there "
                              "(left as it is)")


def _roll_back(moved: list[tuple[Path, Path | None]]) -> bool:
    """Undo the moves, newest first; False if a backup could not be put back (it is kept)."""
    ok = True
    for final, backup in reversed(moved):
        try:
            if final.is_file():
                final.unlink()
            if backup is not None:
                os.replace(backup, final)
        except OSError:
            ok = False
    return ok


def _differing(to: Path, staging: Path, staged: list[Path]) -> tuple[list[Path], list[Path]]:
    """(targets already there with the same bytes, targets holding different bytes)."""
    same, different = [], []
    for rel in staged:
        final = to / rel
        if final.is_file():
            (same if filecmp.cmp(final, staging / rel, shallow=False) else different).append(rel)
    return same, different


def export_artifacts(root: Path, job_id: str, to: Path, model: str | None = None,
                     mode: str | None = None, overwrite: bool = False) -> ExportResult:
    """Copy the chosen artifacts of a job to <to>/<model_id>/<mode>.<ext> with <mode>.json.

    A file already there with the same bytes is left as it is; one with other bytes (the
    user's own, or another job's export) is never replaced silently: the export is refused,
    naming it, unless overwrite is given, and then the replaced files are listed."""
    check_job_id(job_id)
    ready, skipped = _split(_select(root, job_id, model, mode))
    if not ready:
        raise ExportError(f"job {job_id}: nothing to export; {'; '.join(skipped)}")
    latency = read_table(root, "latency", job_id).to_pylist()
    created = not to.exists()
    try:
        to.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=to, prefix=".qbench-export-"))
    except OSError as exc:
        raise ExportError(f"cannot write to {to}: {exc.strerror or exc}") from None
    # (final path, backup of what was there before or None): a failure puts every earlier file
    # back exactly as it was; the user's own files are moved aside, never deleted.
    moved: list[tuple[Path, Path | None]] = []
    backups = staging / ".previous"
    same: list[Path] = []
    different: list[Path] = []
    try:
        staged = _stage(root, ready, latency, staging)
        _check_way_clear(to, staged)
        same, different = _differing(to, staging, staged)
        if different and not overwrite:
            shown = ", ".join(str(to / r) for r in different[:LIST_AT_MOST])
            raise ExportError(f"{shown}: already there with other content; nothing was written "
                              "(--overwrite replaces them, or export to another folder)")
        for rel in staged:
            if rel in same:
                continue
            final = to / rel
            final.parent.mkdir(exist_ok=True)
            backup = None
            if final.exists():
                backup = backups / rel
                backup.parent.mkdir(parents=True, exist_ok=True)
                os.replace(final, backup)
            moved.append((final, backup))
            os.replace(staging / rel, final)
    except BaseException as exc:
        restored = _roll_back(moved)
        if restored:
            shutil.rmtree(staging, ignore_errors=True)
        if created and restored:
            shutil.rmtree(to, ignore_errors=True)
        if isinstance(exc, OSError):
            where = exc.filename or to
            raise ExportError(f"cannot write {where}: {exc.strerror or exc}"
                              + ("" if restored else f"; earlier files kept in {backups}")) from None
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return ExportResult([to / Path(r["model_id"]) / Path(r["artifact_path"]).name for r in ready],
                        skipped, [to / r for r in same], [to / r for r in different])
