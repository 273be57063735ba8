"""Run a unit in a fresh child process, under a wall-clock limit.

Both front doors run every unit this way: `qbench run` from the CLI's process, a Celery worker
from its long-lived pool process. A fresh process per unit keeps one unit's memory peaks out
of the next (the allocator rarely gives memory back); forking it from a parent that has
imported torch but never run a model costs milliseconds, where replacing a Celery pool child
costs seconds.

The parent only waits: for progress, for the child's word that it finished, and for the
unit's limit (max_unit_seconds, or QBENCH_MAX_UNIT_SECONDS if lower). A child past it (stuck
in C code, stopped, deadlocked) is killed and the unit gets a `models` row with status
`timeout` and how long it ran; the parent goes on to the next unit.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qbench.artifacts.save import discard_artifact
from qbench.env import env_seconds
from qbench.manifest import Unit
from qbench.phases import LABELS, phase_of
from qbench.pipeline import Progress, UnitOutcome, failed_row, run_unit, write_outcome

LIMIT_ENV = "QBENCH_MAX_UNIT_SECONDS"
_PR_SET_PDEATHSIG = 1


def worker_ceiling() -> float | None:
    """QBENCH_MAX_UNIT_SECONDS, the most any unit may run on this worker; None when unset."""
    if not os.environ.get(LIMIT_ENV, "").strip():
        return None
    return env_seconds(LIMIT_ENV, 0.0)  # ConfigError, naming it, unless a positive number


def unit_limit(unit: Unit) -> float:
    """The unit's wall-clock limit: its manifest's max_unit_seconds or the worker's ceiling,
    whichever is lower."""
    ceiling = worker_ceiling()
    limit = float(unit.benchmark.max_unit_seconds)
    return min(limit, ceiling) if ceiling is not None else limit


def prepare_parent() -> None:
    """Import, once in the parent, what every unit imports first: the mode registry pulls in
    each backend (onnx, onnxruntime, ...), half a second a unit would otherwise pay after its
    fork. Imports only: no model runs here, so no unit's memory peak is inherited."""
    from qbench.quantize.registry import handlers

    handlers()


def _die_with_parent() -> None:
    # A parent killed outright (OOM killer) must not leave its unit running unsupervised.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _child(unit_json: str, root: str, timing: dict[str, Any], messages: mp.Queue) -> None:
    _die_with_parent()
    # Ctrl-C reaches the whole foreground group: the parent ends this child and records the
    # unit, so the child leaves it to the parent instead of dying mid-write with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    unit = Unit.model_validate_json(unit_json)
    try:
        outcome = run_unit(unit, Path(root), lambda step, done, total: messages.put(
            ("progress", step, done, total)), timing)
    except OSError as exc:  # the results store itself failed: the parent says where
        messages.put(("oserror", exc.errno, exc.strerror, exc.filename))
        return
    messages.put(("done", outcome.status, outcome.error, outcome.files))


def run_unit_isolated(unit: Unit, root: Path, progress: Progress | None = None,
                      queued_at: dt.datetime | None = None) -> UnitOutcome:
    """Run the unit in a forked child; its outcome, or a timeout/died row written for it."""
    prepare_parent()
    limit = unit_limit(unit)
    timing = {"queued_at": queued_at, "max_unit_seconds": limit}
    ctx = mp.get_context("fork")
    messages: mp.Queue = ctx.Queue()
    started_at = dt.datetime.now(dt.UTC)
    began = time.monotonic()
    proc = ctx.Process(target=_child, args=(unit.model_dump_json(), str(root), timing, messages),
                       name=f"qbench-unit-{unit.unit_id}")
    _start(proc)
    step = "starting"
    try:
        while True:
            left = limit - (time.monotonic() - began)
            if left <= 0:
                return _timed_out(unit, root, proc, limit, time.monotonic() - began, step,
                                  {**timing, "started_at": started_at})
            try:
                msg = messages.get(timeout=min(0.5, left))
            except queue.Empty:
                if proc.is_alive():
                    continue
                # Died without a word (killed by the OOM killer, a segfault): record it.
                proc.join()
                error = f"unit process died with exit code {proc.exitcode}"
                row = failed_row(unit, error)
                row.update(timing, started_at=started_at,
                           run_seconds=round(time.monotonic() - began, 3))
                return write_outcome(unit, root, [], row)
            if msg[0] == "progress":
                step = msg[1]
                if progress:
                    progress(*msg[1:])
            elif msg[0] == "oserror":
                proc.join()
                raise OSError(msg[1] or errno.EIO, msg[2], msg[3])
            elif msg[0] == "done":
                proc.join()
                _, status, error, files = msg
                return UnitOutcome(unit.unit_id, status, error, files=files)
    finally:
        if proc.is_alive():  # the parent itself is being stopped: take the child along
            proc.kill()
            proc.join()
        messages.close()


def _start(proc: Any) -> None:
    """Start the child, also from a Celery pool process: billiard marks those daemonic, and
    multiprocessing refuses children to a daemon lest they outlive it. This child cannot: it
    dies with its parent (PR_SET_PDEATHSIG) and the parent kills it on its way out."""
    config = mp.current_process()._config
    daemon = config.pop("daemon", None)
    try:
        proc.start()
    finally:
        if daemon is not None:
            config["daemon"] = daemon


def _timed_out(unit: Unit, root: Path, proc: Any, limit: float, ran: float, step: str,
               timing: dict[str, Any]) -> UnitOutcome:
    proc.kill()  # SIGKILL: ends a stopped or stuck child too
    proc.join()
    phase = phase_of(step)
    where = LABELS[phase] if phase else step
    error = (f"timeout: ran {ran:.1f} s, past its limit of {limit:g} s (max_unit_seconds or "
             f"{LIMIT_ENV}), in {where}; its process was killed")
    discard_artifact(unit, root)  # a half-saved artifact of the killed run is not kept
    row = failed_row(unit, error)
    row.update(timing, status="timeout", run_seconds=round(ran, 3))
    return write_outcome(unit, root, [], row)


def _timing_child(root: str, job_id: str, model_id: str, device: str,
                  messages: mp.Queue) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from qbench.time_model import time_model

    try:
        outcome = time_model(Path(root), job_id, model_id, device,
                             lambda step: messages.put(("progress", step)))
    except Exception as exc:  # the units' rows stand; the job's report goes on without it
        text = str(exc).strip().splitlines()
        messages.put(("error", f"{type(exc).__name__}: {text[0] if text else ''}"[:500]))
        return
    messages.put(("done", outcome.summary()))


def time_model_isolated(root: Path, job_id: str, model_id: str, device: str, limit: float,
                        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """A model's side-by-side timing (worker/time_model.py) in a forked child, as a unit runs:
    the models it loads never stay in the parent, whose later units fork from it and would
    count them in their memory peaks. Its summary; status error or timeout when it failed."""
    prepare_parent()
    ctx = mp.get_context("fork")
    messages: mp.Queue = ctx.Queue()
    began = time.monotonic()
    proc = ctx.Process(target=_timing_child, args=(str(root), job_id, model_id, device, messages),
                       name=f"qbench-time-{model_id}-{device}")
    _start(proc)
    failed = {"job_id": job_id, "model_id": model_id, "device": device, "members": [],
              "left_out": {}, "files": []}
    try:
        while True:
            left = limit - (time.monotonic() - began)
            if left <= 0:
                return {**failed, "status": "timeout",
                        "error": f"timeout: side-by-side timing ran past {limit:g} s"}
            try:
                msg = messages.get(timeout=min(0.5, left))
            except queue.Empty:
                if proc.is_alive():
                    continue
                proc.join()
                return {**failed, "status": "error",
                        "error": f"timing process died with exit code {proc.exitcode}"}
            if msg[0] == "progress":
                if progress:
                    progress(msg[1])
            elif msg[0] == "error":
                proc.join()
                return {**failed, "status": "error", "error": msg[1]}
            elif msg[0] == "done":
                proc.join()
                return msg[1]
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        messages.close()
