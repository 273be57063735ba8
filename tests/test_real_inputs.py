"""Real trained models on real inputs: declared preprocessing, label mapping, decoded ONNX mAP."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from qbench.evaluate.synth import generate_dataset
from qbench.measure.stats import proportion_ci
from qbench.orchestrate import plan_job
from qbench.pipeline import run_unit
from qbench.results import read_table
from tests.helpers import qbench, small_manifest
from tests.trained_classifier import (
    LABELS,
    OUTLIER_BLOCK,
    PREPROCESS,
    SIZE,
    classifier_folder,
    with_outlier_channel,
)


def _run(manifest, steps: list[str] | None = None):
    plan = plan_job(manifest)
    results = manifest.parent / "results"
    for unit in plan.units:
        outcome = run_unit(unit, results, (lambda step, done, total: steps.append(step))
                           if steps is not None else None)
        assert outcome.status == "ok", outcome.error
    return {(m["model_id"], m["mode"]): m
            for m in read_table(results, "models", plan.job_id).to_pylist()}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return classifier_folder(tmp_path_factory.mktemp("cls"))


def _model(mid, **extra):
    return {"id": mid, "arch": "resnet18", "num_classes": 3, "input_size": list(SIZE),
            "checkpoint": "models/grey.pt", **extra}


def test_declared_preprocessing_and_labels_give_the_real_accuracy(classifier):
    manifest = small_manifest(
        classifier, name="grey",
        models=[_model("declared", preprocess=PREPROCESS, outputs={"labels": LABELS}),
                _model("unnormalised", preprocess={"resize": "stretch"}, outputs={"labels": LABELS}),
                _model("folder-order", preprocess=PREPROCESS)],
        quantization={"modes": ["fp32", "int8_static"], "calibration": {"images": 6}},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1},
        inspect={"images": 0},
        dataset={"format": "imagefolder", "images": "data/photos"})
    rows = _run(manifest)
    good, good_int8 = rows["declared", "fp32"], rows["declared", "int8_static"]
    assert good["eval_images"] == 18 and good["top1"] >= 0.9
    assert json.loads(good["preprocess"])["origin"] == "manifest"
    assert good_int8["agreement_top1"] >= 0.8 and good_int8["logits_sqnr_db"] > 5
    # 18 images: each fraction with its 95% Wilson interval, which holds it
    for row, name in ((good, "top1"), (good_int8, "top1"), (good_int8, "agreement_top1")):
        lo, hi = row[f"{name}_ci_low"], row[f"{name}_ci_high"]
        assert lo <= row[name] <= hi and (lo, hi) == proportion_ci(round(18 * row[name]), 18)
    from qbench.report.tables import size_accuracy_table

    table = size_accuracy_table(list(rows.values()))
    line = next(r for r in table.rows if r[0] == "declared" and r[1] == "int8_static")
    assert line[11] == f"{good_int8['agreement_top1']:.3f} [{good_int8['agreement_top1_ci_low']:.2f}–" \
        f"{good_int8['agreement_top1_ci_high']:.2f}]"
    # agreement where fp32 decided: over a subset of the images, and at least as high here
    decided = good_int8["decided_images"]
    assert 0 < decided <= 18 and good_int8["agreement_top1_decided"] >= good_int8["agreement_top1"]
    assert line[12] == f"{good_int8['agreement_top1_decided']:.3f} of {decided}"
    # the same checkpoint without its normalisation, or with folders in sorted order, is not
    # that model's accuracy: both are visibly worse
    assert rows["unnormalised", "fp32"]["top1"] <= good["top1"] - 0.3
    assert rows["folder-order", "fp32"]["top1"] <= good["top1"] - 0.3


def test_unlabelled_folder_calibrates_and_says_no_labels(classifier):
    flat = classifier / "data" / "flat"
    flat.mkdir(exist_ok=True)
    for f in (classifier / "data" / "photos").glob("*/*.png"):
        shutil.copy(f, flat / f"{f.parent.name}-{f.name}")
    manifest = small_manifest(
        classifier, name="flat", models=[_model("declared", preprocess=PREPROCESS)],
        quantization={"modes": ["int8_static"], "calibration": {"images": 6}},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1},
        inspect={"images": 0}, dataset={"format": "imagefolder", "images": "data/flat"})
    row = _run(manifest)["declared", "int8_static"]
    assert row["top1"] is None and row["accuracy_note"].startswith("no labels")
    assert row["agreement_top1"] is not None and row["calibration_images"] == 6


@pytest.fixture(scope="module")
def detector_data(tmp_path_factory):
    from qbench.backends.onnxruntime.export import export_onnx
    from qbench.models.torchvision_models import load_fixture

    root = tmp_path_factory.mktemp("det")
    generate_dataset(root / "data", seed=5, images=14, size=(256, 256))
    (root / "models").mkdir()
    export_onnx(load_fixture("fx", (256, 256), None), root / "models" / "fixture.onnx")
    return root


def _det_manifest(root, name, model, modes, **extra):
    return small_manifest(
        root, name=name, models=[model],
        quantization={"modes": modes, "calibration": {"images": 6}},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1},
        inspect={"images": 0},
        dataset={"format": "coco", "images": "data/images", "annotations": "data/annotations.json"},
        **extra)


def test_onnx_export_scored_by_the_torchvision_decoder_matches_torch(detector_data):
    torch_rows = _run(_det_manifest(detector_data, "torchfx",
                                    {"id": "fx", "arch": "fixture", "input_size": [256, 256]},
                                    ["fp32"]))
    onnx_model = {"id": "fxo", "source": "onnx", "path": "models/fixture.onnx",
                  "input_size": [256, 256], "preprocess": {"resize": "stretch"},
                  "outputs": {"decoder": "torchvision"}}
    onnx_rows = _run(_det_manifest(detector_data, "onnxfx", onnx_model, ["ort_fp32"]))
    ref, ours = torch_rows["fx", "fp32"], onnx_rows["fxo", "ort_fp32"]
    assert ref["map"] > 0.3
    assert abs(ours["map"] - ref["map"]) < 0.005, (ours["map"], ref["map"])
    assert ours["agreement_basis"] == "decoded detections (torchvision)"
    assert ours["agreement_recall"] == 1.0 and ours["accuracy_note"] is None


def test_a_decoded_detectors_calibration_map_is_the_torch_fixtures(detector_data):
    """What ort_int8_mixed's max_map_drop scores on an ONNX detector: its outputs decoded and
    mapped back to the calibration pages, the same mAP the torch fixture scores there."""
    from qbench.evaluate.targets import heldout_count
    from qbench.models import load_model
    from qbench.pipeline import UnitInputs

    onnx_model = {"id": "fxo", "source": "onnx", "path": "models/fixture.onnx",
                  "input_size": [256, 256], "preprocess": {"resize": "stretch"},
                  "outputs": {"decoder": "torchvision"}}
    scores = {}
    for model, mode in (({"id": "fx", "arch": "fixture", "input_size": [256, 256]}, "fp32"),
                        (onnx_model, "ort_fp32")):
        unit = plan_job(_det_manifest(detector_data, f"cal-{mode.replace('_', '-')}", model,
                                      [mode])).units[0]
        loaded = load_model(unit)
        searched, held = UnitInputs.of(unit, loaded).dataset.calibration_map_scorers(heldout_count)
        scores[mode] = (searched(loaded.predict_fp32), held(loaded.predict_fp32))
    assert scores["fp32"][0] > 0.3
    for torch_map, onnx_map in zip(scores["fp32"], scores["ort_fp32"], strict=True):
        assert abs(torch_map - onnx_map) < 0.005, scores


def test_validate_warns_without_preprocess_and_refuses_a_mismatched_decoder(detector_data):
    plain = {"id": "fxo", "source": "onnx", "path": "models/fixture.onnx", "input_size": [256, 256]}
    ok = _det_manifest(detector_data, "warn", plain, ["ort_fp32"])
    # COCO boxes need a decoder (refused at validate); the warning is about the inputs alone
    doc = yaml.safe_load(ok.read_text())
    del doc["dataset"]
    ok.write_text(yaml.safe_dump(doc))
    res = qbench("validate", str(ok))
    assert res.returncode == 0, res.stdout + res.stderr
    warnings = [line for line in res.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "accuracy is not reported" in warnings[0]

    bad = _det_manifest(detector_data, "bad", {**plain, "outputs": {"decoder": "ultralytics"}},
                        ["ort_fp32"])
    res = qbench("validate", str(bad))
    assert res.returncode == 2
    assert "models[0].outputs.decoder: decoder ultralytics expects" in res.stdout + res.stderr
    assert not (detector_data / "results").exists() or not list(
        (detector_data / "results").glob("jobs/bad-*"))


def _mixed_row(classifier, name: str, target: dict) -> dict:
    """The models row of int8_mixed on the trained classifier, 8 calibration images."""
    manifest = small_manifest(
        classifier, name=name,
        models=[_model("declared", preprocess=PREPROCESS, outputs={"labels": LABELS})],
        quantization={"modes": ["int8_mixed"], "calibration": {"images": 8}, "target": target},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1},
        inspect={"images": 0}, dataset={"format": "imagefolder", "images": "data/photos"})
    return _run(manifest)["declared", "int8_mixed"]


def test_int8_mixed_refines_its_float_groups_and_checks_held_out_images(classifier):
    row = _mixed_row(classifier, "mixed-cls", {"min_cosine": 0.99999})
    assert row["mixed_target_metric"].startswith("mean cosine similarity of the outputs")
    assert row["mixed_heldout_target"] == 0.99999 and row["mixed_heldout_score"] is not None
    assert row["mixed_heldout_met"] == (row["mixed_heldout_score"] >= 0.99999)
    assert "on held-out images" in row["notes"]
    assert row["mixed_target_met"] and row["mixed_score"] >= 0.99999
    # Refined: fewer layers float than the groups the greedy search kept, each inside one.
    before, after = row["mixed_refined_from"], row["mixed_float_groups"]
    assert before and after != before
    assert all(any(g == f or g.startswith(f + ".") for f in before) for g in after)


def test_int8_mixed_min_agreement_of_a_classifier_is_top1_agreement(classifier):
    """`min_agreement` is the figure the report shows for classifiers, top-1 agreement with
    fp32, not a cosine similarity that a 0.97 target would meet at ~73% top-1 agreement: its
    score is a fraction of the images searched (6 of 8) and of those held out (2)."""
    row = _mixed_row(classifier, "mixed-top1", {"min_agreement": 1.0})
    assert row["mixed_target_metric"] == "top-1 agreement with fp32 on the calibration images"
    assert row["mixed_score"] * 6 == pytest.approx(round(row["mixed_score"] * 6))
    assert row["mixed_heldout_score"] * 2 == pytest.approx(round(row["mixed_heldout_score"] * 2))
    assert row["mixed_target_met"] == (row["mixed_score"] >= 1.0)
    assert "top-1 agreement with fp32 on the calibration images >= 1.000" in row["notes"]


def test_min_cosine_is_refused_for_a_detector(detector_data):
    plain = {"id": "fx", "arch": "fixture", "input_size": [256, 256]}
    path = _det_manifest(detector_data, "cos", plain, ["int8_mixed"])
    doc = yaml.safe_load(path.read_text())
    doc["quantization"]["target"] = {"min_cosine": 0.99}
    path.write_text(yaml.safe_dump(doc))
    res = qbench("validate", str(path))
    assert res.returncode == 2
    assert "quantization.target.min_cosine: models[0] is a detector" in res.stdout + res.stderr


def test_max_map_drop_is_refused_for_a_model_without_detections(classifier):
    """A search aimed at mAP on a classifier would otherwise fall back to agreement unsaid."""
    manifest = small_manifest(
        classifier, name="map-cls",
        models=[_model("declared", preprocess=PREPROCESS, outputs={"labels": LABELS})],
        quantization={"modes": ["int8_mixed"], "target": {"max_map_drop": 1.0}},
        dataset={"format": "imagefolder", "images": "data/photos"})
    res = qbench("validate", str(manifest))
    assert res.returncode == 2
    assert ("quantization.target.max_map_drop: models[0] gives no detections to score"
            in res.stdout + res.stderr)


def test_onnx_classifier_without_decoder_gets_its_accuracy_and_agreement_intervals(classifier):
    """A given ONNX classifier (one [N, C] output, no decoder) is scored as the torch one is:
    top-1 against the folder labels mapped by outputs.labels, or a note saying why not."""
    from qbench.backends.onnxruntime.export import export_onnx
    from qbench.models.torchvision_models import load_torchvision

    loaded = load_torchvision("grey", "resnet18", 3, SIZE, classifier / "models" / "grey.pt")
    export_onnx(loaded, classifier / "models" / "grey.onnx")
    entry = {"source": "onnx", "path": "models/grey.onnx", "input_size": list(SIZE)}
    manifest = small_manifest(
        classifier, name="grey-onnx",
        models=[{"id": "labelled", **entry, "preprocess": PREPROCESS, "outputs": {"labels": LABELS}},
                {"id": "unlabelled", **entry, "preprocess": PREPROCESS},
                {"id": "undeclared", **entry}],
        quantization={"modes": ["ort_fp32", "ort_int8"], "calibration": {"images": 6}},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1,
                   "reference": "ort_fp32"},
        inspect={"images": 0}, dataset={"format": "imagefolder", "images": "data/photos"})
    rows = _run(manifest)
    row, fp32 = rows["labelled", "ort_int8"], rows["labelled", "ort_fp32"]
    n = row["eval_images"]
    assert fp32["top1"] >= 0.9 and row["accuracy_note"] is None  # the torch model's own figure
    for name in ("top1", "agreement_top1"):
        assert (row[f"{name}_ci_low"], row[f"{name}_ci_high"]) == pytest.approx(
            proportion_ci(round(row[name] * n), n))
        assert row[f"{name}_ci_low"] <= row[name] <= row[f"{name}_ci_high"]
    assert rows["unlabelled", "ort_int8"]["top1"] is None
    assert "labels" in rows["unlabelled", "ort_int8"]["accuracy_note"]
    assert rows["undeclared", "ort_int8"]["top1"] is None
    assert "preprocess" in rows["undeclared", "ort_int8"]["accuracy_note"]
    assert rows["undeclared", "ort_int8"]["agreement_top1"] is not None


# The trained classifier is robust to int8 (no layer group kept float moves its logits' cosine
# beyond 0.9998); the searches run on the same function with one sensitive block, layer3.0,
# which only keeping both of its convs float repairs (all-int8 about 0.995, with them 0.9998).
OUTLIER_CONVS = (f"{OUTLIER_BLOCK}.conv1", f"{OUTLIER_BLOCK}.conv2")
MIXED_COSINE = 0.9995


@pytest.fixture(scope="module")
def outlier_classifier(classifier):
    with_outlier_channel(classifier / "models" / "grey.pt", classifier / "models" / "grey-outlier.pt")
    return classifier


@pytest.fixture(scope="module")
def onnx_classifier(outlier_classifier):
    from qbench.backends.onnxruntime.export import export_onnx
    from qbench.models.torchvision_models import load_torchvision

    root = outlier_classifier
    loaded = load_torchvision("grey", "resnet18", 3, SIZE, root / "models" / "grey-outlier.pt")
    export_onnx(loaded, root / "models" / "grey-mixed.onnx")
    return root


def test_ort_int8_mixed_searches_the_nodes_of_an_onnx_file(onnx_classifier):
    """A given ONNX file has no module tree: the search ranks runs of its weight nodes, keeps
    the most sensitive float and refines them by halves down to single nodes; the held-out
    calibration images check the result, and its classifier output is scored by top-1."""
    manifest = small_manifest(
        onnx_classifier, name="ort-mixed",
        models=[{"id": "grey-onnx", "source": "onnx", "path": "models/grey-mixed.onnx",
                 "input_size": list(SIZE), "preprocess": PREPROCESS}],
        quantization={"modes": ["ort_fp32", "ort_int8_mixed"], "calibration": {"images": 8},
                      "target": {"min_cosine": MIXED_COSINE}},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1,
                   "reference": "ort_fp32"},
        inspect={"images": 0}, dataset={"format": "imagefolder", "images": "data/photos"})
    row = _run(manifest)["grey-onnx", "ort_int8_mixed"]
    assert row["mixed_target_metric"].startswith("mean cosine similarity of the outputs")
    assert row["mixed_target_met"] and row["mixed_score"] >= MIXED_COSINE
    assert row["mixed_heldout_score"] is not None
    assert row["mixed_heldout_met"] == (row["mixed_heldout_score"] >= MIXED_COSINE)
    # The greedy search kept runs of nodes ("first..last") float; refinement left fewer nodes
    # float, each one of the file's own nodes inside a run it had kept.
    before, after = row["mixed_refined_from"], row["mixed_float_groups"]
    assert before and all(".." in g for g in before) and after != before
    assert after and all(".." not in g for g in after)
    # ... and they are the sensitive block's two convs, the one spot that needs float
    assert sorted(after) == ["/layer3/layer3.0/conv1/Conv", "/layer3/layer3.0/conv2/Conv"]
    import onnx

    names = [n.name for n in onnx.load(str(onnx_classifier / "models" / "grey-mixed.onnx")).graph.node]
    assert set(after) <= set(names)
    spans = [(names.index(g.split("..")[0]), names.index(g.split("..")[1])) for g in before]
    assert all(any(lo <= names.index(g) <= hi for lo, hi in spans) for g in after)
    assert row["notes"].startswith(f"mixed precision: kept float {', '.join(after)}")
    assert row["size_reduction"] > 0.3  # the rest is int8


def test_ort_int8_mixed_of_a_torch_model_searches_its_module_paths(outlier_classifier):
    """From torch, the exported graph's nodes belong to modules: the groups are int8_mixed's
    module paths (conv1, layer1, ..., fc), refined down to the sensitive block's two convs, and
    the groups kept float are those modules' ONNX nodes."""
    manifest = small_manifest(
        outlier_classifier, name="ort-mixed-torch",
        models=[_model("declared", preprocess=PREPROCESS, outputs={"labels": LABELS},
                       checkpoint="models/grey-outlier.pt")],
        quantization={"modes": ["ort_int8_mixed"], "calibration": {"images": 8},
                      "target": {"min_cosine": MIXED_COSINE}},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1},
        inspect={"images": 0}, dataset={"format": "imagefolder", "images": "data/photos"})
    row = _run(manifest)["declared", "ort_int8_mixed"]
    assert row["mixed_target_met"] and row["mixed_score"] >= MIXED_COSINE
    kept = row["mixed_float_groups"]
    assert row["mixed_refined_from"] == ["layer3"] and sorted(kept) == list(OUTLIER_CONVS)
    assert f"nodes of {', '.join(map(repr, kept))} kept float (keep_float)" in row["notes"]
    # the weight layers of the kept modules are float in the file ORT ran, the rest int8
    assert sorted(row["float_modules"]) == list(OUTLIER_CONVS)
    assert "layer1.0.conv1" in row["int8_modules"]
    assert row["backend"] == "onnxruntime"


def test_ort_int8_mixed_min_agreement_of_an_onnx_classifier_is_top1(onnx_classifier):
    manifest = small_manifest(
        onnx_classifier, name="ort-mixed-top1",
        models=[{"id": "grey-onnx", "source": "onnx", "path": "models/grey-mixed.onnx",
                 "input_size": list(SIZE), "preprocess": PREPROCESS}],
        quantization={"modes": ["ort_int8_mixed"], "calibration": {"images": 8},
                      "target": {"min_agreement": 1.0}},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1},
        inspect={"images": 0}, dataset={"format": "imagefolder", "images": "data/photos"})
    steps: list[str] = []
    row = _run(manifest, steps)["grey-onnx", "ort_int8_mixed"]
    assert row["mixed_target_metric"] == "top-1 agreement with fp32 on the calibration images"
    # the search shows its progress, one line per quantize-and-score trial
    trials = [s for s in steps if s.startswith("quantize ort_int8_mixed: trial ")]
    assert trials[0].startswith("quantize ort_int8_mixed: trial 1: 0 groups float, score ")
    # all-int8, then each run alone (21 weight nodes: 7 runs of 3), then as many refinements
    # as this trained model needs to reach the target; each trial once, numbered in order
    numbers = [int(s.split("trial ")[1].split(":")[0]) for s in trials]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 8
    assert row["mixed_score"] * 6 == pytest.approx(round(row["mixed_score"] * 6))
    assert row["mixed_heldout_score"] * 2 == pytest.approx(round(row["mixed_heldout_score"] * 2))
