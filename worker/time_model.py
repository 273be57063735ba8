"""time_model(root, job_id, model_id, device): a model's variants timed side by side.

Runs once every quantize unit of the model on that device has ended. Each variant is rebuilt
from the artifact its unit saved (the program the unit benchmarked and checked), the reference
is built here as the units' paired pass built it (its float mode; fp32: the eager module), and
all of them are timed round-robin in this one process
(qbench.measure.side_by_side). Memory stays the units' own: each was measured in its own
process, alone.

It writes, under the key `time-<model>-<device>` (a rerun replaces its files):
- `pairs`: every ordered pair of members at every batch size, with its CI;
- `samples`: pass "side_by_side", each variant's timed calls (role unit) and the reference's
  beside it (role reference), iteration i of every member from the same cycle;
and it fills each variant unit's paired `latency` columns (speedup over the reference and its
CI, the two p50s, pairs and rounds) from the side-by-side pass, so those keep their meaning.

A variant without a saved program, or whose unit failed, is left out and its rows say why.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qbench.errors import ManifestError
from qbench.manifest import Unit
from qbench.measure import environment_fingerprint, is_oom
from qbench.measure.machine import LoadSampler
from qbench.measure.paired import round_plan
from qbench.measure.side_by_side import SideBySide, measure_side_by_side
from qbench.measure.unit_latency import bench_batch, choose_reference, sampling_plan
from qbench.orchestrate import load_plan, timing_key

PAIRING = "side_by_side"
PAIRED_COLUMNS = ("paired_iterations", "paired_rounds", "reference_latency_ms_p50",
                  "paired_latency_ms_p50", "speedup", "speedup_ci_low", "speedup_ci_high")
Progress = Callable[[str], None]


@dataclass
class Member:
    mode: str
    predict: Callable[[torch.Tensor], Any]
    unit: Unit | None  # None: the reference, built here (not a unit of the job)
    backend: str | None
    batch_sizes: set[int]  # where its unit's own pass ran ok


@dataclass
class TimingOutcome:
    job_id: str
    model_id: str
    device: str
    status: str  # ok | skipped | error
    members: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)  # mode -> why
    error: str | None = None
    files: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The JSON-safe result the Celery task returns."""
        return {"job_id": self.job_id, "model_id": self.model_id, "device": self.device,
                "status": self.status, "members": self.members, "left_out": self.left_out,
                "error": self.error, "files": self.files}


def model_units(root: Path, job_id: str, model_id: object, device: object) -> list[Unit]:
    """The job's units of this model on this device (ManifestError if there are none)."""
    from qbench.confine import confine_unit

    plan = load_plan(root, job_id)
    units = [u for u in plan.units if u.model.id == model_id and u.device == device]
    if not units:
        raise ManifestError(f"job {job_id}: no units of model {str(model_id)[:100]!r} on "
                            f"device {str(device)[:20]!r}")
    return [confine_unit(u, root) for u in units]  # the checks a unit's own task makes


def time_model(root: Path, job_id: str, model_id: str, device: str,
               progress: Progress | None = None) -> TimingOutcome:
    """Time the model's variants side by side and write the rows; see the module docstring."""
    units = model_units(root, job_id, model_id, device)
    out = TimingOutcome(job_id, model_id, device, "ok")
    bench = units[0].benchmark
    if bench.pairing != PAIRING or not units[0].artifacts:
        out.status = "skipped"
        return out
    say = progress or (lambda text: None)
    from qbench.results import read_table

    models = {r["unit_id"]: r for r in read_table(root, "models", job_id).to_pylist()}
    latency = [r for r in read_table(root, "latency", job_id).to_pylist()
               if r["unit_id"] in {u.unit_id for u in units}]
    if bench.threads:
        torch.set_num_threads(bench.threads)
    env = environment_fingerprint()
    ref_mode = choose_reference(bench.reference, units[0].model.source)
    saved = _saved(units, models, out.left_out)
    members: dict[str, Member] = {}
    timed: dict[int, tuple[SideBySide, LoadSampler]] = {}
    with tempfile.TemporaryDirectory(prefix=f"qbench-time-{model_id}-") as work_dir:
        if any(u.mode != ref_mode for u in saved):  # else nothing to time against anything
            from qbench.models import load_model
            from qbench.pipeline import bench_pool

            say("load model")
            loaded = load_model(units[0])
            variants = [u for u in saved if u.mode != ref_mode]
            members = _members(root, variants, models, latency, out.left_out, loaded)
            say(f"build reference {ref_mode}")
            ref_unit = next((u for u in units if u.mode == ref_mode), None)
            try:
                members[ref_mode] = _built_reference(units[0], loaded, ref_mode, work_dir,
                                                     ref_unit)
            except Exception as exc:
                out.left_out[ref_mode] = f"reference not built: {_one_line(exc)}"
            if len(members) > 1:
                timed = _time(members, bench_pool(units[0], loaded), units[0], device, say)
        out.members = sorted(members)
        out.files = _write(root, units, latency, members, timed, ref_mode, env, out.left_out)
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:400]


def _saved(units: list[Unit], models: dict[str, dict], left_out: dict[str, str]) -> list[Unit]:
    """The units that ended ok with a saved program; why the others are left out."""
    saved = []
    for u in units:
        row = models.get(u.unit_id)
        if row is None or row["status"] != "ok":
            left_out[u.mode] = f"its unit did not end ok ({row['status'] if row else 'no row'})"
        elif not row.get("artifact_path"):
            left_out[u.mode] = f"no saved program ({row.get('error') or 'none recorded'})"
        else:
            saved.append(u)
    return saved


def _members(root: Path, saved: list[Unit], models: dict[str, dict], latency: list[dict],
             left_out: dict[str, str], loaded: Any) -> dict[str, Member]:
    """Each unit's saved program, loaded to run as its unit ran it."""
    from qbench.artifacts.load import load_program
    from qbench.artifacts.store import artifact_file

    members: dict[str, Member] = {}
    for u in saved:
        row = models[u.unit_id]
        ok = {r["batch_size"] for r in latency if r["unit_id"] == u.unit_id and r["status"] == "ok"}
        try:
            # the path from the ids (never the row's text), in the format the unit recorded
            path = artifact_file(root, u.job_id, u.model.id, u.mode, row["artifact_format"])
            predict = load_program(path, row["artifact_format"], row["task"], u.device, u.mode,
                                   loaded)
        except Exception as exc:
            left_out[u.mode] = f"saved program not loaded: {_one_line(exc)}"
            continue
        members[u.mode] = Member(u.mode, predict, u, row.get("backend"), ok)
    return members


def _built_reference(unit: Unit, loaded: Any, ref_mode: str, work_dir: str,
                     ref_unit: Unit | None) -> Member:
    """The reference as the units' paired pass built it: its mode quantized here (a float
    mode: nothing to calibrate; fp32 is the loaded eager module itself), not its saved program.
    The mode is what the speedups are over, and a program is another runnable: the scripted
    fp32 fixture detector ran 10% faster than eager at batch 1 and 4 and 17% slower at 32."""
    from qbench.quantize.registry import QuantizeRequest, quantize

    request = QuantizeRequest(device=unit.device, calibration=unit.quantization.calibration,
                              keep_float=[], calibration_batches=lambda: [], work_dir=work_dir)
    q = quantize(loaded, ref_mode, request)
    return Member(ref_mode, q.predict, ref_unit, q.backend, set(unit.benchmark.batch_sizes))


def _time(members: dict[str, Member], pool: torch.Tensor, unit: Unit, device: str,
          say: Progress) -> dict[int, tuple[SideBySide, LoadSampler]]:
    """Rounds over the batch sizes; at each, the members whose own pass ran ok there."""
    bench = unit.benchmark
    rounds = max(1, bench.rounds)
    plan = round_plan(sampling_plan(bench), rounds)
    timed: dict[int, tuple[SideBySide, LoadSampler]] = {}
    for r in range(rounds):
        for bs in bench.batch_sizes:
            names = sorted(m for m, member in members.items() if bs in member.batch_sizes)
            if len(names) < 2:
                continue
            say(f"side by side batch {bs}" + (f", round {r + 1}/{rounds}" if rounds > 1 else ""))
            result, load = timed.get(bs) or (None, LoadSampler())
            try:
                batch = bench_batch(pool, bs, device)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                continue
            steps = {n: (lambda p=members[n].predict, b=batch: p(b)) for n in names}
            warmup = bench.warmup if r == 0 else min(1, bench.warmup)
            result = measure_side_by_side(steps, device, warmup, plan, round_index=r,
                                          into=result, load=load, is_oom=is_oom)
            timed[bs] = (result, load)
            del batch, steps
    return timed


def _identity(member: Member, first: Unit) -> dict[str, Any]:
    """The `IDENTITY` columns of a member (a reference built here: its model's, no unit)."""
    u = member.unit or first
    return {"job_id": u.job_id, "job_name": u.job_name,
            "unit_id": member.unit.unit_id if member.unit else None, "model_id": u.model.id,
            "arch": u.model.arch or Path(u.model.path or "").name, "mode": member.mode,
            "backend": member.backend, "device": u.device}


def _write(root: Path, units: list[Unit], latency: list[dict], members: dict[str, Member],
           timed: dict[int, tuple[SideBySide, LoadSampler]], ref_mode: str, env: dict[str, Any],
           left_out: dict[str, str]) -> list[str]:
    from qbench.results import unit_file, write_rows

    first = units[0]
    key = timing_key(first.model.id, first.device)
    now = dt.datetime.now(dt.UTC)
    pairs: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for bs, (result, load) in sorted(timed.items()):
        for a in result.members:
            for b in result.members:
                if a != b:
                    pairs.append(_pair_row(result, a, b, members, bs, ref_mode, env, first,
                                           load, now))
        samples += _sample_rows(result, members, bs, ref_mode, env, first)
    files = []
    for table, rows in (("pairs", pairs), ("samples", samples)):
        target = unit_file(root, table, first.job_date, first.job_id, key)
        if rows:
            files.append(str(write_rows(root, table, first.job_date, first.job_id, key, rows)))
        else:
            target.unlink(missing_ok=True)
    files += _fill_latency(root, units, latency, timed, ref_mode, left_out)
    return files


def _pair_row(result: SideBySide, a: str, b: str, members: dict[str, Member], bs: int,
              ref_mode: str, env: dict[str, Any], first: Unit, load: LoadSampler,
              now: dt.datetime) -> dict[str, Any]:
    ma, mb = result.members[a], result.members[b]
    ci = result.ratio(a, b)
    bad = next((m for m in (ma, mb) if m.status != "ok"), None)
    la, lb = ma.latency(), mb.latency()
    return {
        **_identity(members[a], first), **env, "batch_size": bs, "over_mode": b,
        "over_backend": members[b].backend,
        "over_unit_id": members[b].unit.unit_id if members[b].unit else None,
        "reference_mode": ref_mode, "members": len(result.members),
        "pairs": len(ma.values_s) if ci else None,
        "rounds": len(set(ma.rounds)) if ci else None,
        "latency_ms_p50": la.p50_ms if la and ci else None,
        "over_latency_ms_p50": lb.p50_ms if lb and ci else None,
        "speedup": ci.estimate if ci else None,
        "speedup_ci_low": ci.low if ci else None, "speedup_ci_high": ci.high if ci else None,
        "status": "ok" if bad is None else bad.status,
        "error": None if bad is None else f"{a if bad is ma else b}: {bad.error}",
        "measured_at": now, **load.columns(),
    }


def _sample_rows(result: SideBySide, members: dict[str, Member], bs: int, ref_mode: str,
                 env: dict[str, Any], first: Unit) -> list[dict[str, Any]]:
    ok = result.ok()
    if ref_mode not in ok:
        return []
    ref = result.members[ref_mode]
    rows = []
    for name in ok:
        member = members[name]
        if member.unit is None:
            continue  # a reference built here has no unit: it appears beside each variant
        who = {**_identity(member, first), "threads": env.get("threads"),
               "env_fingerprint": env.get("env_fingerprint"), "host": env.get("host")}
        sides = [("unit", result.members[name])]
        if name != ref_mode:
            sides.append(("reference", ref))
        for role, m in sides:
            rows += [{**who, "batch_size": bs, "pass": PAIRING, "role": role,
                      "reference_mode": ref_mode, "iteration": i, "ran_first": m.first[i],
                      "round": m.rounds[i], "latency_ms": v * 1000.0}
                     for i, v in enumerate(m.values_s)]
    return rows


def _fill_latency(root: Path, units: list[Unit], latency: list[dict],
                  timed: dict[int, tuple[SideBySide, LoadSampler]], ref_mode: str,
                  left_out: dict[str, str]) -> list[str]:
    """Each variant unit's paired columns, from the side-by-side pass; rows rewritten."""
    from qbench.results import write_rows

    files = []
    for u in units:
        rows = [r for r in latency if r["unit_id"] == u.unit_id]
        if not rows or u.mode == ref_mode:
            continue
        for row in rows:
            _fill_row(row, timed.get(row["batch_size"]), u.mode, ref_mode, left_out)
        files.append(str(write_rows(root, "latency", u.job_date, u.job_id, u.unit_id, rows)))
    return files


def _fill_row(row: dict[str, Any], timed: tuple[SideBySide, LoadSampler] | None, mode: str,
              ref_mode: str, left_out: dict[str, str]) -> None:
    row["reference_mode"] = ref_mode
    row.update(dict.fromkeys(PAIRED_COLUMNS))  # nothing of an earlier run of this step stays
    if row["status"] != "ok":
        return
    why = left_out.get(mode) or left_out.get(ref_mode)
    result = timed[0] if timed else None
    ci = result.ratio(mode, ref_mode) if result else None
    if ci is None:
        member = result.members.get(mode) if result else None
        why = why or (member.error if member and member.error else "not timed")
        row["pairing"] = f"failed: side by side: {why}"[:500]
        return
    own, ref = result.members[mode], result.members[ref_mode]
    row.update(pairing=PAIRING, paired_iterations=len(own.values_s),
               paired_rounds=len(set(own.rounds)),
               reference_latency_ms_p50=ref.latency().p50_ms,
               paired_latency_ms_p50=own.latency().p50_ms,
               speedup=ci.estimate, speedup_ci_low=ci.low, speedup_ci_high=ci.high)
