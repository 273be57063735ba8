"""`qbench gc`: remove staged inputs that nothing references any more.

An entry of <results>/inputs/ (one folder per content digest, worker/service/staging.py) is kept when
- a `models` row references it: a unit of a job plan with a row, or the row's checkpoint_sha256;
- a queued or running unit references it: a message on the cpu/gpu queues or delivered and
  not yet acknowledged (running units stay in Kombu's unacked set until they end);
- it was staged less than the grace period ago (QBENCH_GC_GRACE, default 1 h): a submit
  between staging and queueing has not sent its units yet.

Safe beside working submits and workers: staging touches an entry it reuses, and gc first
renames a candidate out of the way, then looks again (its mtime, the queues) and puts it back
if a submit used it meanwhile; a submit that finds it gone copies it again. Only direct
children of inputs/ are considered, symlinks are never followed or removed, and nothing
outside the results store is touched.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis

from qbench.service.staging import INPUTS

log = logging.getLogger(__name__)
TRASH_PREFIX = ".gc-"
DEFAULT_GRACE_S = 3600.0


def grace_seconds() -> float:
    from qbench.env import env_seconds

    return env_seconds("QBENCH_GC_GRACE", DEFAULT_GRACE_S)


@dataclass
class Entry:
    name: str  # the folder's name under inputs/ (a digest, or a leftover temporary)
    bytes: int
    files: list[str] = field(default_factory=list)


@dataclass
class Collection:
    removed: list[Entry] = field(default_factory=list)
    kept_in_use: int = 0
    kept_recent: int = 0
    restored: list[str] = field(default_factory=list)  # used by a submit while gc ran

    @property
    def freed(self) -> int:
        return sum(e.bytes for e in self.removed)


def _digest_of(staged_path: str) -> str | None:
    parts = staged_path.split("/")
    return parts[1] if len(parts) >= 2 and parts[0] == INPUTS else None


def _staged_digests(unit: dict) -> set[str]:
    staged = unit.get("staged") if isinstance(unit, dict) else None
    if not isinstance(staged, dict):
        return set()
    return {d for v in staged.values() if isinstance(v, str) and (d := _digest_of(v))}


def _unit_of(message: dict) -> dict | None:
    """The unit a Kombu message carries (run_unit's first argument), or None."""
    try:
        body = message["body"]
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return args[0] if args and isinstance(args[0], dict) else None
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _queue_keys(r: redis.Redis) -> list[bytes]:
    keys = []
    for queue in ("cpu", "gpu"):  # and Kombu's priority lists of each, "<queue>\x06\x16<n>"
        keys += [queue.encode(), *r.scan_iter(match=f"{queue}\x06\x16*")]
    return keys


def queued_or_running(r: redis.Redis) -> set[str]:
    """Digests that units waiting on a queue or delivered to a worker reference."""
    digests: set[str] = set()
    for key in _queue_keys(r):
        for raw in r.lrange(key, 0, -1):
            try:
                digests |= _staged_digests(_unit_of(json.loads(raw)) or {})
            except ValueError:
                continue
    for raw in r.hvals("unacked"):
        try:
            digests |= _staged_digests(_unit_of(json.loads(raw)[0]) or {})
        except (ValueError, IndexError, TypeError):
            continue
    return digests


def referenced_by_rows(root: Path) -> set[str]:
    """Digests a `models` row references: its unit's staged inputs, its checkpoint's digest."""
    from qbench.results import read_table

    rows = read_table(root, "models").select(["job_id", "unit_id", "checkpoint_sha256"]).to_pylist()
    with_rows = {(r["job_id"], r["unit_id"]) for r in rows}
    digests = {r["checkpoint_sha256"] for r in rows if r["checkpoint_sha256"]}
    for plan_path in sorted((root / "jobs").glob("*.json")):
        try:
            data = json.loads(plan_path.read_text())
        except (OSError, ValueError):
            continue
        job_id = data.get("job_id") if isinstance(data, dict) else None
        for unit in (data.get("units") or []) if isinstance(data, dict) else []:
            if isinstance(unit, dict) and (job_id, unit.get("unit_id")) in with_rows:
                digests |= _staged_digests(unit)
    return digests


def _size(path: Path) -> tuple[int, list[str]]:
    """Bytes and relative names of the files in a folder, links not followed."""
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size, [path.name]
    total, names = 0, []
    for folder, _dirs, files in os.walk(path):
        for f in files:
            p = Path(folder) / f
            total += p.lstat().st_size
            names.append(str(p.relative_to(path)))
    return total, sorted(names)


def _last_used(path: Path) -> float:
    """When it was staged or last reused: the newest mtime of the entry and its children."""
    times = [path.lstat().st_mtime]
    if path.is_dir() and not path.is_symlink():
        times += [c.lstat().st_mtime for c in path.iterdir()]
    return max(times)


def _inputs_folder(root: Path) -> Path | None:
    inputs = root / INPUTS
    if inputs.is_symlink():
        raise ValueError(f"{inputs} is a symlink: gc removes nothing outside the results store")
    return inputs if inputs.is_dir() else None


def _entries(inputs: Path) -> list[Path]:
    return sorted(p for p in inputs.iterdir() if not p.is_symlink())


def collect(root: Path, r: redis.Redis, *, dry_run: bool = False,
            grace: float | None = None) -> Collection:
    """Remove (or, dry_run, list) what no row and no queued or running unit references."""
    grace = grace_seconds() if grace is None else grace
    done = Collection()
    inputs = _inputs_folder(root)
    if inputs is None:
        return done
    now = time.time()
    entries = _entries(inputs)  # listed first: anything staged later is younger than now
    in_use = referenced_by_rows(root) | queued_or_running(r)
    candidates = []
    for path in entries:
        if path.name in in_use:
            done.kept_in_use += 1
        elif now - _last_used(path) < grace or (
                # another gc's entry, moved aside a moment ago (a rename leaves mtime alone)
                path.name.startswith(TRASH_PREFIX) and now - path.lstat().st_ctime < grace):
            done.kept_recent += 1
        else:
            candidates.append(path)
    if dry_run:
        done.removed = [Entry(p.name, *_size(p)) for p in candidates]
        return done
    moved = []
    for path in candidates:
        trash = inputs / f"{TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, trash)  # atomic: a submit now finds it gone and copies it again
        except FileNotFoundError:
            continue
        moved.append((path, trash))
    # Look again: a submit that reused an entry touched it, and may have queued its units.
    in_use = queued_or_running(r)
    for path, trash in moved:
        if path.name in in_use or time.time() - _last_used(trash) < grace:
            try:
                os.rename(trash, path)
                done.restored.append(path.name)
                continue
            except OSError:  # a submit staged a fresh copy meanwhile: this one is spare
                pass
        entry = Entry(path.name, *_size(trash))
        shutil.rmtree(trash) if trash.is_dir() else trash.unlink()
        done.removed.append(entry)
    return done
