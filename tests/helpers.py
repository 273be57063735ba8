"""Shared test helpers: small manifests, real redis-server and celery worker processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def small_manifest(tmp: Path, name: str = "tiny", **overrides) -> Path:
    """A manifest small enough for the test suite: a classifier at 64 px, two batch sizes."""
    doc = {
        "name": name,
        "models": [{"id": "r18", "source": "torchvision", "arch": "resnet18",
                    "num_classes": 10, "input_size": [64, 64]}],
        "quantization": {"modes": ["fp32", "int8_static"],
                         "calibration": {"images": 4, "method": "minmax"}},
        "benchmark": {"devices": ["cpu"], "batch_sizes": [1, 2], "warmup": 1, "iterations": 2,
                      "threads": 1},
    }
    for key, value in overrides.items():
        doc[key] = value
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class RedisServer:
    """A real redis-server on a free loopback port, in its own folder."""

    def __init__(self, workdir: Path, appendonly: bool = False):
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)

        def ready() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(ready, 15, f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def worker_env(broker: str, results: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(QBENCH_BROKER_URL=broker, QBENCH_RESULTS_DIR=str(results), PYTHONPATH=str(REPO),
               PYTHONUNBUFFERED="1")
    return env


class CeleryWorker:
    """A real `celery worker` subprocess consuming the given queues."""

    def __init__(self, broker: str, results: Path, log: Path, queues: str = "cpu",
                 name: str = "w1", concurrency: int = 1):
        self.args = [str(VENV_BIN / "celery"), "-A", "qbench.service.app", "worker", "-Q", queues,
                     "-c", str(concurrency), "-n", f"{name}@127.0.0.1", "--loglevel", "INFO",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"]
        self.env = worker_env(broker, results)
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.fh = None

    def start(self) -> CeleryWorker:
        self.fh = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=REPO, stdout=self.fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: b"ready." in self.log.read_bytes() or self.proc.poll() is not None,
                 60, "celery worker to be ready")
        if self.proc.poll() is not None:
            raise RuntimeError(f"celery worker exited: {self.log.read_text()[-2000:]}")
        return self

    def stop(self, sig: int | None = None) -> None:
        if self.proc and self.proc.poll() is None:
            import signal

            os.killpg(self.proc.pid, sig or signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.fh:
            self.fh.close()


def qbench(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would."""
    return subprocess.run([str(VENV_BIN / "qbench"), *args], cwd=REPO, env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)
