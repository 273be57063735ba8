"""YOLO through its decoder: the network and its ONNX file scored alike; offline ultralytics."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from qbench.evaluate.synth import generate_dataset
from qbench.manifest import ManifestError
from qbench.orchestrate import plan_job
from qbench.pipeline import run_unit
from qbench.results import read_table
from tests.helpers import REPO, small_manifest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None,
                                reason="ultralytics (the optional yolo extra) is not installed")
SIZE = 128


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from qbench.backends.onnxruntime.export import export_onnx
    from qbench.models.yolo import build_yolo, load_yolo

    root = tmp_path_factory.mktemp("yolo")
    generate_dataset(root / "data", seed=3, images=8, size=(160, 120))  # letterboxed to 128
    (root / "models").mkdir()
    torch.manual_seed(0)
    torch.save(build_yolo("yolov8n", 4).state_dict(), root / "models" / "y.pt")  # as trained
    # the layout ultralytics' own ONNX export has: one output [B, 4 + classes, anchors]
    export_onnx(load_yolo("y", "yolov8n", 4, (SIZE, SIZE), root / "models" / "y.pt"),
                root / "models" / "y.onnx")
    return root


def _manifest(root, name, model, modes):
    return small_manifest(
        root, name=name, models=[model],
        quantization={"modes": modes, "calibration": {"images": 3}},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1},
        inspect={"images": 0},
        dataset={"format": "coco", "images": "data/images", "annotations": "data/annotations.json"})


def _rows(manifest):
    plan = plan_job(manifest)
    results = manifest.parent / "results"
    for unit in plan.units:
        outcome = run_unit(unit, results)
        assert outcome.status == "ok", outcome.error
    return {m["mode"]: m for m in read_table(results, "models", plan.job_id).to_pylist()}


def test_yolo_state_dict_and_its_onnx_file_decode_alike(root):
    decoder = {"decoder": "ultralytics", "category_map": {0: 1, 1: 2, 2: 3, 3: 4}}
    torch_rows = _rows(_manifest(root, "yt", {
        "id": "y", "source": "yolo", "arch": "yolov8n", "num_classes": 4,
        "checkpoint": "models/y.pt", "input_size": [SIZE, SIZE], "outputs": decoder}, ["fp32"]))
    onnx_rows = _rows(_manifest(root, "yo", {
        "id": "yo", "source": "onnx", "path": "models/y.onnx", "input_size": [SIZE, SIZE],
        "preprocess": {"resize": "letterbox"}, "outputs": decoder}, ["ort_fp32", "ort_int8"]))
    ref = torch_rows["fp32"]
    assert ref["agreement_basis"] == "decoded detections (ultralytics)"
    assert '"letterbox"' in ref["preprocess"] and ref["map"] is not None
    fp32 = onnx_rows["ort_fp32"]
    assert fp32["map"] == pytest.approx(ref["map"], abs=0.005)  # same weights, same decoding
    assert fp32["agreement_recall"] == 1.0
    assert onnx_rows["ort_int8"]["calibration_images"] == 3  # calibrated on the dataset images
    assert onnx_rows["ort_int8"]["map_fp32"] == pytest.approx(fp32["map"])


def test_decoder_that_does_not_fit_the_onnx_file_is_refused(root):
    bad = _manifest(root, "ybad", {"id": "yo", "source": "onnx", "path": "models/y.onnx",
                                   "input_size": [SIZE, SIZE], "preprocess": {"resize": "letterbox"},
                                   "outputs": {"decoder": "gfl"}}, ["ort_fp32"])
    with pytest.raises(ManifestError, match=r"models\[0\]\.outputs\.decoder: decoder gfl expects"):
        plan_job(bad)


def test_category_ids_absent_from_the_mapping_fail_the_unit_naming_the_field(root):
    plan = plan_job(_manifest(root, "ymap", {
        "id": "yo", "source": "onnx", "path": "models/y.onnx", "input_size": [SIZE, SIZE],
        "preprocess": {"resize": "letterbox"},
        "outputs": {"decoder": "ultralytics", "category_map": {0: 1}}}, ["ort_fp32"]))
    outcome = run_unit(plan.units[0], root / "results-map")
    assert outcome.status == "error"
    assert "models[yo].outputs.category_map: dataset category ids [2, 3, 4] are absent" in outcome.error


def test_ultralytics_never_goes_online():
    code = ("from qbench.models.yolo import build_yolo; build_yolo('yolov8n', 3); "
            "import ultralytics.utils as u; print(u.ONLINE)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
