"""Paired timing, the sampling plan, load and ISA readings, and a unit's latency rows."""

from __future__ import annotations

import types

import pytest
import torch

from qbench.measure.machine import LoadSampler, parse_cpuinfo, read_load
from qbench.measure.paired import REFERENCE, UNIT, measure_paired
from qbench.measure.sampling import SamplingPlan
from qbench.measure.unit_latency import LatencyJob, measure_unit_latency
from qbench.quantize.ort_int8 import reduce_range_for

CPUINFO_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx avx2 fma bmi2

processor\t: 1
cpu family\t: 99
flags\t\t: avx512_vnni
"""
CPUINFO_VNNI = CPUINFO_AVX2.replace("cpu family\t: 23\nmodel\t\t: 49", "cpu family\t: 25\nmodel\t\t: 17"
                                    ).replace("fma bmi2", "fma avx512f avx512bw avx512_vnni")


def test_pairs_interleave_in_settled_blocks_and_alternate_who_goes_first():
    calls: list[str] = []
    result = measure_paired(lambda: calls.append(UNIT), lambda: calls.append(REFERENCE), "cpu",
                            warmup=2, plan=SamplingPlan(5))
    block = ["settle:{0}", "{0}", "{0}"]
    ref, unit = ([c.format(s) for c in block] for s in (REFERENCE, UNIT))
    last_ref, last_unit = ([c.format(s) for c in block[:2]] for s in (REFERENCE, UNIT))
    assert result.calls == ["warmup:reference", "warmup:unit", "warmup:unit", "warmup:reference",
                            *ref, *unit, *unit, *ref, *last_ref, *last_unit], \
        "two timed calls per block after a settle call; the last block cut to the plan's count"
    assert calls == [c.split(":")[-1] for c in result.calls]
    assert result.first == (REFERENCE, REFERENCE, UNIT, UNIT, REFERENCE)
    assert result.pairs == 5 and len(result.reference_s) == 5


def test_paired_blocks_stop_at_the_iteration_cap():
    result = measure_paired(lambda: None, lambda: None, "cpu", warmup=0,
                            plan=SamplingPlan(iterations=9, max_iterations=3))
    assert result.pairs == 3 and [c for c in result.calls if c == UNIT] == [UNIT] * 3


def test_paired_speedup_of_a_known_slower_reference():
    # The reference does four times the work of the unit, on the same data.
    x = torch.rand(256, 256)
    result = measure_paired(lambda: x @ x, lambda: [x @ x for _ in range(4)], "cpu", warmup=1,
                            plan=SamplingPlan(15))
    ci = result.speedup()
    assert ci.low <= ci.estimate <= ci.high
    assert 2.0 < ci.estimate < 8.0


def test_sampling_plan_minimum_time_and_caps():
    plan = SamplingPlan(iterations=3, min_seconds=1.0, max_iterations=10)
    assert plan.more(2, 5.0) and not plan.more(3, 5.0)  # count reached, time reached
    assert plan.more(5, 0.5) and not plan.more(10, 0.5)  # time not reached, but capped at 10
    capped = SamplingPlan(iterations=100, max_seconds=2.0)
    assert capped.more(1, 1.9) and not capped.more(1, 2.0), "the time cap wins over the count"
    assert SamplingPlan(1).more(0, 99.0), "at least one iteration"
    with pytest.raises(ValueError):
        SamplingPlan(0)


def test_cpuinfo_flags_family_model():
    avx2 = parse_cpuinfo(CPUINFO_AVX2)
    assert avx2.flags == ("avx2",) and (avx2.family, avx2.model) == (23, 49)
    assert not avx2.vnni, "only the first processor counts"
    vnni = parse_cpuinfo(CPUINFO_VNNI)
    assert vnni.flags == ("avx2", "avx512f", "avx512bw", "avx512_vnni") and vnni.vnni
    assert "family 25 model 17" in vnni.summary()


def test_ort_reduce_range_follows_vnni(monkeypatch):
    import qbench.quantize.ort_int8 as ort_int8

    monkeypatch.setattr(ort_int8, "cpu_isa", lambda: parse_cpuinfo(CPUINFO_AVX2))
    assert reduce_range_for("cpu") == (True, "no VNNI (avx2 only): reduce_range, 7-bit weights")
    monkeypatch.setattr(ort_int8, "cpu_isa", lambda: parse_cpuinfo(CPUINFO_VNNI))
    assert reduce_range_for("cpu") == (False, "VNNI (avx512_vnni) detected: no reduce_range")


def test_load_reading_and_sampler():
    load, busy = read_load()
    assert load is not None and load >= 0 and busy is not None and busy >= 0
    sampler = LoadSampler(interval_s=60)
    sampler.sample()
    sampler.maybe_sample()  # within the interval: no second sample
    cols = sampler.columns()
    assert len(sampler.loads) == 1 and cols["load_avg_1m"] == sampler.loads[0]


def _bench(**kw):
    spec = dict(batch_sizes=[1, 2], warmup=1, iterations=3, min_seconds=0.0, max_iterations=None,
                max_seconds=None, pairing="interleaved", reference="fp32")
    spec.update(kw)
    return types.SimpleNamespace(**spec)


def recording_pair(events: list[str]):
    """A unit and a reference builder that log every call in `events`."""

    def unit(batch):
        events.append(f"unit:{batch.shape[0]}")
        return batch.sum()

    def build():
        events.append("build reference")
        return lambda batch: (events.append(f"ref:{batch.shape[0]}"), batch.sum())

    return unit, build


def test_unit_rows_memory_pass_before_reference_is_built():
    events: list[str] = []
    pool = torch.rand(2, 3, 8, 8)
    unit, build = recording_pair(events)
    out = measure_unit_latency(unit, build, pool, LatencyJob("int8_static", "cpu", _bench(), (8, 8),
                                                                {"mode": "int8_static"}))
    built = events.index("build reference")
    assert events[:built] == ["unit:1"] * 4 + ["unit:2"] * 4, "both unpaired passes come first"
    assert "ref:1" in events[built:] and events.count("build reference") == 1
    assert [r["pairing"] for r in out.rows] == ["interleaved", "interleaved"]
    for r in out.rows:
        assert r["iterations_run"] == 3 and r["paired_iterations"] == 3
        assert r["speedup_ci_low"] <= r["speedup"] <= r["speedup_ci_high"]
        assert r["rss_peak_bytes"] > 0 and r["load_avg_1m"] is not None
    kinds = {(s["pass"], s["role"], s["batch_size"]) for s in out.samples}
    assert ("paired", "reference", 2) in kinds and ("unpaired", "unit", 1) in kinds
    assert len(out.samples) == 2 * 3 + 2 * 2 * 3


def test_pairing_off_and_the_reference_itself_build_nothing():
    pool = torch.rand(2, 3, 8, 8)

    def never():
        raise AssertionError("no reference may be built")

    off = measure_unit_latency(lambda b: b, never, pool,
                               LatencyJob("int8_static", "cpu", _bench(pairing="off"), (8, 8), {}))
    ref = measure_unit_latency(lambda b: b, never, pool, LatencyJob("fp32", "cpu", _bench(), (8, 8), {}))
    assert {r["pairing"] for r in off.rows} == {"off"} and off.rows[0].get("speedup") is None
    assert {r["pairing"] for r in ref.rows} == {"reference"}


def test_reference_that_fails_is_a_note_not_a_failed_row():
    def broken():
        raise RuntimeError("no compiler")

    out = measure_unit_latency(lambda b: b, broken, torch.rand(1, 3, 8, 8),
                               LatencyJob("int8_static", "cpu", _bench(batch_sizes=[1]), (8, 8), {}))
    row = out.rows[0]
    assert row["status"] == "ok" and row["pairing"].startswith("failed: reference fp32: RuntimeError")


def test_rounds_rotate_over_the_batch_sizes_and_label_their_pairs():
    events: list[str] = []
    pool = torch.rand(2, 3, 8, 8)
    unit, build = recording_pair(events)
    out = measure_unit_latency(unit, build, pool, LatencyJob("int8_static", "cpu",
                               _bench(rounds=3, iterations=6), (8, 8), {"mode": "int8_static"}))
    after = events[events.index("build reference") + 1:]
    # the batch size changes between consecutive stretches: 1, 2, 1, 2, 1, 2
    stretches = [after[0].split(":")[1]]
    for e in after[1:]:
        if e.split(":")[1] != stretches[-1]:
            stretches.append(e.split(":")[1])
    assert stretches == ["1", "2"] * 3
    for r in out.rows:
        assert r["paired_rounds"] == 3 and r["paired_iterations"] == 6  # 2 pairs per round
    paired = [s for s in out.samples if s["pass"] == "paired" and s["role"] == "unit"
              and s["batch_size"] == 1]
    assert [s["round"] for s in paired] == [0, 0, 1, 1, 2, 2]
    assert [s["iteration"] for s in paired] == list(range(6))
    assert all(s["round"] is None for s in out.samples if s["pass"] == "unpaired")


def test_round_plan_shares_and_combined_rounds():
    from qbench.measure.paired import PairedResult, combine_rounds, round_plan

    plan = SamplingPlan(iterations=10, min_seconds=3.0, max_iterations=31, max_seconds=9.0)
    share = round_plan(plan, 3)
    assert (share.iterations, share.min_seconds, share.max_iterations, share.max_seconds) == \
        (4, 1.0, 11, 3.0)
    assert round_plan(plan, 1) is plan
    a = PairedResult("ok", (2.0, 2.0), (1.0, 1.0), ("reference", "unit"))
    b = PairedResult("ok", (3.0,), (1.0,), ("reference",))
    both = combine_rounds([a, b])
    assert both.rounds == (0, 0, 1) and both.reference_s == (2.0, 2.0, 3.0)
    assert combine_rounds([a]).rounds == ()
    oom = PairedResult("oom", error="out of memory")
    assert combine_rounds([a, oom]).status == "oom"
