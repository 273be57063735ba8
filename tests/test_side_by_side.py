"""Side-by-side timing: the round-robin order, pairs between every two members, and a model's
timing step over the programs its units saved (real resnet18 units, real Parquet)."""

from __future__ import annotations

import shutil
from collections import Counter

import torch

from qbench.measure.sampling import SamplingPlan
from qbench.measure.side_by_side import cycle_order, measure_side_by_side
from qbench.report.compare import paired_ratios
from qbench.results import read_table
from qbench.time_model import time_model


def test_cycle_order_rotates_and_reverses_so_each_member_takes_each_place():
    assert [cycle_order(["a", "b"], c) for c in range(4)] == [
        ["a", "b"], ["b", "a"], ["b", "a"], ["a", "b"]]
    orders = [cycle_order(["a", "b", "c"], c) for c in range(6)]
    for place in range(3):
        assert Counter(o[place] for o in orders) == {"a": 2, "b": 2, "c": 2}
    followers = Counter((o[i], o[i + 1]) for o in orders for i in range(2))
    assert followers[("a", "b")] and followers[("b", "a")]  # neighbours in both directions


def test_every_member_settles_then_times_and_the_pairs_line_up_over_rounds():
    calls: list[str] = []
    steps = {n: (lambda n=n: calls.append(n)) for n in ("ref", "x", "y")}
    plan = SamplingPlan(3)
    result = measure_side_by_side(steps, "cpu", 1, plan, round_index=0)
    result = measure_side_by_side(steps, "cpu", 1, plan, round_index=1, into=result)
    first_cycle = result.calls[3:12]
    assert result.calls[:3] == ["warmup:ref", "warmup:x", "warmup:y"]
    assert first_cycle == ["settle:ref", "ref", "ref", "settle:x", "x", "x", "settle:y", "y", "y"]
    assert calls == [c.split(":")[-1] for c in result.calls]
    for m in result.members.values():  # 3 timed calls per round, labelled by round
        assert m.rounds == [0, 0, 0, 1, 1, 1] and m.status == "ok"
    assert result.pairs() == 6
    # round 1 opens with another member than round 0; every member opened some cycle
    second_round = [c for c in result.calls if c.startswith("warmup:")][3:]
    assert second_round[0] != "warmup:ref"
    assert all(any(m.first) for m in result.members.values())


def test_pair_ratios_of_known_work_and_their_intervals():
    x = torch.rand(192, 192)
    steps = {"one": lambda: x @ x, "two": lambda: [x @ x for _ in range(2)],
             "four": lambda: [x @ x for _ in range(4)]}
    result = measure_side_by_side(steps, "cpu", 1, SamplingPlan(12))
    four_over_one = result.ratio("one", "four")
    assert four_over_one.low <= four_over_one.estimate <= four_over_one.high
    assert 2.0 < four_over_one.estimate < 8.0
    assert 1.2 < result.ratio("two", "four").estimate < 3.5  # measured, not derived via "one"
    assert result.ratio("four", "one").estimate < 1.0


def test_a_member_that_fails_leaves_and_the_others_go_on():
    x = torch.rand(32, 32)
    state = {"calls": 0}

    def flaky():
        state["calls"] += 1
        if state["calls"] > 3:
            raise RuntimeError("kernel fault")
        return x @ x

    steps = {"ref": lambda: x @ x, "x": lambda: x + 1, "bad": flaky}
    result = measure_side_by_side(steps, "cpu", 0, SamplingPlan(6))
    assert result.members["bad"].status == "error" and "kernel fault" in result.members["bad"].error
    assert result.ok() == [] or "bad" not in result.ok()
    result = measure_side_by_side(steps, "cpu", 0, SamplingPlan(6), round_index=1, into=result)
    assert result.ok() == ["ref", "x"] and result.pairs() == 6  # round 0's samples were dropped
    assert result.ratio("x", "bad") is None and result.ratio("x", "ref") is not None


def test_time_model_times_the_saved_programs_and_fills_the_variant_rows(small_job, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(small_job[0], root)
    job_id = small_job[1]
    before = read_table(root, "latency", job_id).to_pylist()
    assert {r["pairing"] for r in before if r["mode"] == "int8_dynamic"} == {"side_by_side"}
    assert all(r["speedup"] is None for r in before)

    out = time_model(root, job_id, "r18", "cpu")
    assert out.status == "ok" and out.members == ["fp32", "int8_dynamic"] and not out.left_out
    pairs = read_table(root, "pairs", job_id).to_pylist()
    assert sorted((p["mode"], p["over_mode"]) for p in pairs) == [
        ("fp32", "int8_dynamic"), ("int8_dynamic", "fp32")]
    for p in pairs:
        assert p["status"] == "ok" and p["members"] == 2 and p["pairs"] >= 1
        assert p["speedup_ci_low"] <= p["speedup"] <= p["speedup_ci_high"]
        assert p["cpu_model"] and p["env_fingerprint"] and p["reference_mode"] == "fp32"
    latency = {r["mode"]: r for r in read_table(root, "latency", job_id).to_pylist()}
    variant = latency["int8_dynamic"]
    mine = next(p for p in pairs if p["mode"] == "int8_dynamic")
    assert variant["pairing"] == "side_by_side" and variant["speedup"] == mine["speedup"]
    assert variant["reference_latency_ms_p50"] == mine["over_latency_ms_p50"]
    assert latency["fp32"]["pairing"] == "reference"
    samples = [s for s in read_table(root, "samples", job_id).to_pylist()
               if s["pass"] == "side_by_side"]
    assert Counter((s["mode"], s["role"]) for s in samples) == {
        ("fp32", "unit"): mine["pairs"], ("int8_dynamic", "unit"): mine["pairs"],
        ("int8_dynamic", "reference"): mine["pairs"]}

    # The report's job line counts the timing step the job waited for.
    from qbench.report import build_report

    models = read_table(root, "models", job_id).to_pylist()
    secs = (max(p["measured_at"] for p in pairs)
            - min(m["started_at"] for m in models)).total_seconds()
    line = build_report(root, job_id).blocks[1].text
    assert (f"took {secs:.0f} s" if secs < 90 else f"took {secs / 60:.1f} min") in line, line

    # A nightly comparison reads the side-by-side samples as it read paired ones.
    ratios = paired_ratios(root, job_id)[("r18", "int8_dynamic", "cpu", 1)]
    assert ratios.reference == "fp32" and len(ratios.ratios) == mine["pairs"]

    # Rerun: the same files, replaced, not added to.
    again = time_model(root, job_id, "r18", "cpu")
    assert sorted(again.files) == sorted(out.files)
    assert len(read_table(root, "pairs", job_id)) == 2

    # A variant whose program is gone is left out, and its rows say why.
    next((root / "artifacts" / job_id / "r18").glob("int8_dynamic.*")).unlink()
    gone = time_model(root, job_id, "r18", "cpu")
    assert "int8_dynamic" in gone.left_out and gone.members == ["fp32"]
    row = next(r for r in read_table(root, "latency", job_id).to_pylist()
               if r["mode"] == "int8_dynamic")
    assert row["pairing"].startswith("failed: side by side: saved program not loaded")
    assert read_table(root, "pairs", job_id).num_rows == 0


def test_openvino_variants_join_from_their_saved_ir(tmp_path):
    """An OpenVINO unit's artifact (its IR in a tar) is read back and compiled with the mode's
    properties, then timed beside the torch reference like any other variant."""
    import datetime as dt

    from qbench.manifest import Manifest
    from qbench.orchestrate import plan_from, save_plan
    from qbench.pipeline import run_unit

    manifest = Manifest.model_validate({
        "name": "ovjob", "models": [{"id": "r18", "arch": "resnet18", "num_classes": 10,
                                     "input_size": [64, 64]}],
        "quantization": {"modes": ["fp32", "ov_fp32"]},
        "benchmark": {"batch_sizes": [1], "warmup": 0, "iterations": 2, "threads": 1,
                      "rounds": 1},
        "inspect": {"images": 0}})
    plan = plan_from(manifest, tmp_path, "ovjob", now=dt.datetime(2026, 1, 3))
    root = tmp_path / "results"
    save_plan(plan, root)
    for unit in plan.units:
        assert run_unit(unit, root).status == "ok"
    out = time_model(root, plan.job_id, "r18", "cpu")
    assert out.members == ["fp32", "ov_fp32"] and not out.left_out, out
    pair = next(p for p in read_table(root, "pairs", plan.job_id).to_pylist()
                if p["mode"] == "ov_fp32")
    assert pair["backend"] == "openvino" and pair["over_mode"] == "fp32" and pair["status"] == "ok"
    assert pair["speedup_ci_low"] <= pair["speedup"] <= pair["speedup_ci_high"]
