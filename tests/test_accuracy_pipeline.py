"""A unit with a dataset: real mAP on held-out images, agreement with fp32, bad datasets."""

from __future__ import annotations

import json

import pytest

from qbench.errors import ManifestError
from qbench.evaluate.synth import generate_dataset
from qbench.orchestrate import plan_job
from qbench.pipeline import run_unit
from qbench.report.tables import drop_with_interval, size_accuracy_table
from qbench.results import read_table
from tests.helpers import small_manifest


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("acc")
    generate_dataset(root / "data", seed=5, images=20, size=(256, 256))
    return root


def _fixture_manifest(root, **dataset):
    return small_manifest(
        root, name="acc",
        models=[{"id": "fixture", "arch": "fixture", "input_size": [256, 256]}],
        quantization={"modes": ["fp32", "int8_static"],
                      "calibration": {"images": 8, "method": "histogram"}},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1},
        dataset={"format": "coco", "images": "data/images",
                 "annotations": "data/annotations.json", **dataset})


def test_fixture_accuracy_and_agreement(synth):
    plan = plan_job(_fixture_manifest(synth))
    results = synth / "results"
    for unit in plan.units:
        outcome = run_unit(unit, results)
        assert outcome.status == "ok", outcome.error
    rows = {m["mode"]: m for m in read_table(results, "models", plan.job_id).to_pylist()}
    fp32, int8 = rows["fp32"], rows["int8_static"]
    assert fp32["trained_weights"] and fp32["eval_images"] == 12  # 20 images - 8 calibration
    assert fp32["map50"] >= 0.7 and fp32["map"] == pytest.approx(fp32["map_fp32"])
    assert fp32["agreement_recall"] == 1.0 and fp32["count_error_mean"] == 0.0
    assert int8["map_fp32"] == pytest.approx(fp32["map"])
    assert fp32["map"] - int8["map"] < 0.03, "int8 keeps the fixture's accuracy"
    # the drop's paired interval holds the drop; fp32 against itself is exactly no drop
    drop = 100 * (int8["map_fp32"] - int8["map"])
    assert int8["map_drop_pts_ci_low"] <= drop <= int8["map_drop_pts_ci_high"]
    assert fp32["map_drop_pts_ci_low"] == fp32["map_drop_pts_ci_high"] == 0.0
    table = size_accuracy_table(list(rows.values()))
    int8_cells = next(r for r in table.rows if r[1] == "int8_static")
    assert int8_cells[9] == drop_with_interval(int8, drop) and " to " in int8_cells[9]
    assert int8["agreement_recall"] > 0.9 and int8["count_error_mean"] < 0.1
    assert int8["calibration_method"] == "histogram" and int8["calibration_images"] == 8

    layers = read_table(results, "layers", plan.job_id).to_pylist()
    assert layers and {r["mode"] for r in layers} == {"int8_static"}, "fp32 is the reference"
    names = [r["layer"] for r in sorted(layers, key=lambda r: r["layer_index"])]
    assert names[0].startswith("backbone.body") and any(n.startswith("rpn.head") for n in names)
    assert all(r["sqnr_db"] > 5 and r["cosine"] > 0.5 for r in layers)
    pictures = list((results / "reports" / plan.job_id / "inspect").glob("*/*.png"))
    assert len(pictures) >= 5


def test_random_weights_report_no_accuracy(synth):
    manifest = small_manifest(
        synth, name="rand",
        models=[{"id": "mnv3", "arch": "fasterrcnn_mobilenet_v3_large_320_fpn", "num_classes": 5,
                 "input_size": [128, 128]}],
        quantization={"modes": ["fp32"]},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1},
        dataset={"format": "coco", "images": "data/images", "annotations": "data/annotations.json"})
    outcome = run_unit(plan_job(manifest).units[0], synth / "rand")
    assert outcome.status == "ok", outcome.error
    row = outcome.model_row
    assert row["trained_weights"] is False
    assert row.get("map") is None and row.get("map50") is None
    assert row["agreement_recall"] is not None  # agreement is not accuracy: still reported


@pytest.mark.parametrize("breakage, needle", [
    ("not_coco", "annotations.json"),
    ("bad_class", "category"),
    ("bad_image", ".png"),
])
def test_bad_datasets_fail_the_unit_with_the_file_named(tmp_path, breakage, needle):
    generate_dataset(tmp_path / "data", seed=6, images=12, size=(256, 256))
    ann = tmp_path / "data" / "annotations.json"
    doc = json.loads(ann.read_text())
    if breakage == "not_coco":
        ann.write_text(json.dumps({"hello": "world"}))
    elif breakage == "bad_class":
        doc["annotations"][0]["category_id"] = 42
        ann.write_text(json.dumps(doc))
    else:
        (tmp_path / "data" / "images" / doc["images"][-1]["file_name"]).write_bytes(b"not a png")
    if breakage != "bad_image":  # what the JSON alone shows is refused before anything runs
        with pytest.raises(ManifestError) as refused:
            plan_job(_fixture_manifest(tmp_path))
        assert needle in str(refused.value) and "\n" not in str(refused.value)
        assert not (tmp_path / "results").exists()
        return
    plan = plan_job(_fixture_manifest(tmp_path))
    int8 = next(u for u in plan.units if u.mode == "int8_static")  # reads every image
    outcome = run_unit(int8, tmp_path / "results")
    assert outcome.status == "error"
    assert needle in outcome.error and "\n" not in outcome.error
    row = read_table(tmp_path / "results", "models").to_pylist()[0]
    assert row["status"] == "error" and needle in row["error"]


def test_mixed_precision_reaches_a_map_target(synth):
    manifest = small_manifest(
        synth, name="mixed",
        models=[{"id": "fixture", "arch": "fixture", "input_size": [256, 256]}],
        quantization={"modes": ["int8_mixed"], "calibration": {"images": 8, "method": "minmax"},
                      "target": {"max_map_drop": 0.0}},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1},
        inspect={"images": 0},
        dataset={"format": "coco", "images": "data/images", "annotations": "data/annotations.json"})
    plan = plan_job(manifest)
    outcome = run_unit(plan.units[0], synth / "mixed-results")
    assert outcome.status == "ok", outcome.error
    row = outcome.model_row
    assert row["mixed_target_metric"] == "mAP on the calibration split"
    assert row["mixed_target_met"] == (row["mixed_score"] >= row["mixed_target"])
    # A quarter of the calibration split held out: mAP there against fp32's there.
    assert row["mixed_heldout_score"] is not None and row["mixed_heldout_target"] is not None
    assert row["mixed_heldout_met"] == (row["mixed_heldout_score"] >= row["mixed_heldout_target"])
    if row["mixed_float_groups"]:
        kept = row["mixed_float_groups"]
        assert any(m.startswith(tuple(kept)) for m in row["float_modules"])
    assert 0 < row["params_int8_fraction"] <= 1
    assert "mixed precision: kept float" in row["notes"]
    plot = synth / "mixed-results" / "reports" / plan.job_id / "inspect" / "fixture-int8_mixed-cpu"
    assert (plot / "mixed_precision_tradeoff.png").stat().st_size > 10_000


def test_mixed_precision_target_needs_a_dataset_for_map(tmp_path):
    from qbench.manifest import ManifestError

    with pytest.raises(ManifestError, match="max_map_drop needs a dataset"):
        plan_job(small_manifest(tmp_path, quantization={"modes": ["int8_mixed"],
                                                        "target": {"max_map_drop": 1.0}}))
