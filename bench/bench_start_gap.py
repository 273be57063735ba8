"""How long a busy worker's next unit waits to start: real redis-server, real celery worker.

One worker (concurrency 1) is given a job of N small units at once, so it is never idle for
want of work. For each unit after the first, two gaps are measured from what the code records:

- end to start: the previous unit's `ended_at` to this unit's `started_at` (models rows). It
  spans writing the previous unit's rows, the acknowledgement, fetching the next message and
  starting the process the unit runs in;
- taken to start: the worker's "Task ... received" log line (its main process took the message
  from Redis) to the unit's `started_at`.

Run it against any checkout to compare code side by side on one machine, e.g. the code before
a change in a temporary worktree:

    git worktree add /tmp/qbench-before <commit>
    .venv/bin/python bench/bench_start_gap.py --units 12 --code /tmp/qbench-before
    .venv/bin/python bench/bench_start_gap.py --units 12

The worker and the submit run that checkout's code (PYTHONPATH) with this virtualenv; a
checkout from before the import name qbench runs as `worker`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _manifest(folder: Path, units: int) -> Path:
    doc = {"name": "gap", "artifacts": False,
           "models": [{"id": f"m{i:02d}", "source": "torchvision", "arch": "resnet18",
                       "num_classes": 10, "input_size": [32, 32]} for i in range(units)],
           "quantization": {"modes": ["fp32"]},
           "benchmark": {"devices": ["cpu"], "batch_sizes": [1], "warmup": 0, "iterations": 2,
                         "threads": 1, "pairing": "off"}}
    path = folder / "gap.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _rows(results: Path) -> list[dict]:
    rows = []
    for f in sorted((results / "models").glob("date=*/job=*/*.parquet")):
        rows += pq.read_table(f, columns=["unit_id", "started_at", "ended_at", "status"]).to_pylist()
    return rows


def _received(log: str) -> dict[str, float]:
    """unit id -> when the worker's main process took it (its log's local time)."""
    taken = {}
    for stamp, unit_id in re.findall(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] "
                                     r"Task qbench\.run_unit\[([0-9a-f]+)\] received", log):
        taken[unit_id] = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return taken


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


def _layout(code: Path, folder: Path) -> tuple[str, str, str]:
    """(PYTHONPATH, Celery app, CLI module) of a checkout: the package is imported as qbench
    from worker/ (linked under that name here, ahead of this venv's own install), or, in
    checkouts from before that, as worker."""
    if (code / "worker" / "service" / "app.py").is_file():
        names = folder / "import"
        names.mkdir()
        (names / "qbench").symlink_to(code / "worker")
        return str(names), "qbench.service.app", "qbench.cli"
    return str(code), "worker.app", "worker.cli"


def measure(code: Path, units: int) -> dict[str, list[float]]:
    folder = Path(tempfile.mkdtemp(prefix="qbench-gap-"))
    port = _port()
    path, app, cli = _layout(code, folder)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1",
           "QBENCH_BROKER_URL": f"redis://127.0.0.1:{port}/0",
           "QBENCH_RESULTS_DIR": str(folder / "results"), "QBENCH_DATA_ROOTS": str(folder)}
    redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port),
                              "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                              "--dir", str(folder)], stdout=subprocess.DEVNULL)
    log = folder / "worker.log"
    with log.open("ab") as fh:
        worker = subprocess.Popen([str(BIN / "celery"), "-A", app, "worker", "-Q", "cpu",
                                   "-c", "1", "-n", "gap@127.0.0.1", "--loglevel", "INFO",
                                   "--without-gossip", "--without-mingle", "--without-heartbeat"],
                                  cwd=code, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        _wait(lambda: b"ready." in log.read_bytes(), 120, "the worker")
        submit = subprocess.run([sys.executable, "-c", f"from {cli} import main; main()",
                                 "submit", str(_manifest(folder, units)), "--results",
                                 str(folder / "results")], cwd=code, env=env,
                                capture_output=True, text=True, timeout=300)
        if submit.returncode != 0:
            raise SystemExit(f"submit failed: {submit.stderr}")
        _wait(lambda: len(_rows(folder / "results")) == units, 120 + 60 * units, "the units")
        rows = sorted(_rows(folder / "results"), key=lambda r: r["started_at"])
        taken = _received(log.read_text())
        end_to_start = [(b["started_at"] - a["ended_at"]).total_seconds()
                        for a, b in zip(rows, rows[1:], strict=False)]
        taken_to_start = [b["started_at"].timestamp() - taken[b["unit_id"]] for b in rows[1:]
                          if b["unit_id"] in taken]
        unit_s = [(r["ended_at"] - r["started_at"]).total_seconds() for r in rows]
        return {"end_to_start": end_to_start, "taken_to_start": taken_to_start, "unit": unit_s}
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(60)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=12)
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose code runs")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(args.code), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    got = measure(args.code.resolve(), args.units)
    print(f"code {args.code} ({commit}), {args.units} units on one busy worker (concurrency 1):")
    for key, label in (("end_to_start", "previous unit's end -> start"),
                       ("taken_to_start", "taken from Redis -> start"),
                       ("unit", "unit duration (start -> end)")):
        values = got[key]
        print(f"  {label:32s} p50 {_pct(values, 50):6.2f} s  p90 {_pct(values, 90):6.2f} s  "
              f"max {max(values):6.2f} s  (n={len(values)})")


if __name__ == "__main__":
    main()
