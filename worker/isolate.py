"""Run a unit in a fresh child process, as a Celery worker does with one task per child.

Without it, `qbench run` would measure the second unit's memory on top of everything the
first unit allocated (the allocator rarely gives memory back), and the two front doors would
disagree. The child is forked from a parent that has imported torch but never run a model.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
from pathlib import Path

from worker.manifest import Unit
from worker.pipeline import Progress, UnitOutcome, failed_row, run_unit, write_outcome


def _child(unit_json: str, root: str, messages: mp.Queue) -> None:
    # Ctrl-C reaches the whole foreground group: the parent ends this child and records the
    # unit, so the child leaves it to the parent instead of dying mid-write with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    unit = Unit.model_validate_json(unit_json)
    outcome = run_unit(unit, Path(root), lambda step, done, total: messages.put(
        ("progress", step, done, total)))
    messages.put(("done", outcome.status, outcome.error, outcome.files))


def run_unit_isolated(unit: Unit, root: Path, progress: Progress | None = None) -> UnitOutcome:
    ctx = mp.get_context("fork")
    messages: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(unit.model_dump_json(), str(root), messages),
                       name=f"qbench-unit-{unit.unit_id}")
    proc.start()
    try:
        return _follow(unit, root, proc, messages, progress)
    except KeyboardInterrupt:  # Ctrl-C: the child is ended too, never left running alone
        proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        raise


def _follow(unit: Unit, root: Path, proc, messages: mp.Queue,
            progress: Progress | None) -> UnitOutcome:
    while True:
        try:
            msg = messages.get(timeout=0.5)
        except queue.Empty:
            if proc.is_alive():
                continue
            # Died without a word (killed by the OOM killer, a segfault): record it.
            proc.join()
            error = f"unit process died with exit code {proc.exitcode}"
            return write_outcome(unit, root, [], failed_row(unit, error))
        if msg[0] == "progress" and progress:
            progress(*msg[1:])
        elif msg[0] == "done":
            proc.join()
            _, status, error, files = msg
            return UnitOutcome(unit.unit_id, status, error, files=files)
