"""What the machine is and how busy it was: int8-relevant ISA features and load samples.

Two CPUs with the same model name can differ in what decides int8 speed (AVX-512 VNNI, AVX-VNNI,
AMX), so the flags go into every row and into the environment fingerprint.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import lru_cache

# The flags (as /proc/cpuinfo names them) that pick the int8 and bf16 kernels of oneDNN/FBGEMM
# and ONNX Runtime: u8s8 dot products without VNNI go through vpmaddubsw, which can saturate.
INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "amx_tile", "amx_int8", "amx_bf16")


@dataclass(frozen=True)
class CpuIsa:
    flags: tuple[str, ...]  # the INT8_FLAGS this CPU has, in INT8_FLAGS order
    family: int | None
    model: int | None

    @property
    def vnni(self) -> bool:
        return "avx512_vnni" in self.flags or "avx_vnni" in self.flags

    def summary(self) -> str:
        """e.g. 'avx2 avx512f avx512_vnni amx_int8 (family 25 model 17)'."""
        where = (f" (family {self.family} model {self.model})"
                 if self.family is not None else "")
        return (" ".join(self.flags) or "none of " + "/".join(INT8_FLAGS[:2])) + where


def parse_cpuinfo(text: str) -> CpuIsa:
    """The first processor's int8 flags and family/model numbers."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # one processor is enough: the flags are the same on every core
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())

    def number(key: str) -> int | None:
        value = fields.get(key, "")
        return int(value) if value.isdigit() else None

    return CpuIsa(tuple(f for f in INT8_FLAGS if f in flags), number("cpu family"),
                  number("model"))


@lru_cache(maxsize=1)
def cpu_isa() -> CpuIsa:
    try:
        with open("/proc/cpuinfo") as f:
            return parse_cpuinfo(f.read())
    except OSError:
        return CpuIsa((), None, None)


def isa_columns() -> dict[str, object]:
    isa = cpu_isa()
    return {"cpu_isa": " ".join(isa.flags), "cpu_family": isa.family, "cpu_model_number": isa.model}


def _own_runnable_threads() -> int:
    """This process's runnable threads (the reader, and intra-op threads still spinning after
    an iteration): they are not "other" load."""
    count = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if stat[stat.rfind(")") + 2:].startswith("R"):
                count += 1
    except OSError:
        return 1
    return max(count, 1)


def read_load() -> tuple[float | None, int | None]:
    """(1-minute load average, runnable tasks other than the reader), from /proc/loadavg.

    Its fourth field counts runnable scheduling entities (threads) system-wide; this process's
    own runnable threads are subtracted. One small file read, cheap enough to take between iterations.
    """
    try:
        with open("/proc/loadavg") as f:
            parts = f.read().split()
        running = int(parts[3].split("/")[0])
        return float(parts[0]), max(running - _own_runnable_threads(), 0)
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0], None
        except OSError:
            return None, None


@dataclass
class LoadSampler:
    """Takes a load sample at most every `interval_s`, when `maybe_sample()` is called between
    timed iterations (never inside one, and no thread competing with the model)."""

    interval_s: float = 0.5
    loads: list[float] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)
    _last: float = -1e9

    def sample(self) -> None:
        load, busy = read_load()
        if load is not None:
            self.loads.append(load)
        if busy is not None:
            self.busy.append(busy)
        self._last = time.monotonic()

    def maybe_sample(self) -> None:
        if time.monotonic() - self._last >= self.interval_s:
            self.sample()

    def columns(self) -> dict[str, object]:
        return {
            "load_avg_1m": max(self.loads) if self.loads else None,
            "busy_processes_max": max(self.busy) if self.busy else None,
            "busy_processes_mean": sum(self.busy) / len(self.busy) if self.busy else None,
        }
