"""OpenVINO modes: real OpenVINO and NNCF on the fixture detector, a trained classifier and an
ONNX file; the precision read off the compiled model; the work a detector does."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qbench import modes
from qbench.backends.openvino.backend import cpu_has_bf16
from qbench.evaluate.agreement import detection_agreement
from qbench.evaluate.synth import synth_images
from qbench.manifest import CalibrationSpec
from qbench.models.base import LoadedModel
from qbench.models.onnx_models import load_onnx
from qbench.models.torchvision_models import load_torchvision
from qbench.pipeline import run_unit
from qbench.quantize.registry import QuantizeRequest, quantize
from qbench.results import read_table
from tests.helpers import small_manifest
from tests.test_real_inputs import _model
from tests.trained_classifier import LABELS, PREPROCESS, classifier_folder

HAS_BF16, CAPABILITIES = cpu_has_bf16()


def request(tmp_path, batches, method="minmax", keep_float=(), bias_correction=False):
    spec = CalibrationSpec(images=max(1, sum(b.shape[0] for b in batches)), method=method,
                           bias_correction=bias_correction)
    return QuantizeRequest(device="cpu", calibration=spec, keep_float=list(keep_float),
                           calibration_batches=lambda: iter(batches), work_dir=str(tmp_path))


def small_net(size: int = 16) -> LoadedModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    return LoadedModel("small", "custom", "classification", net, (size, size), 5)


def test_mode_table_rows():
    for name, precision in (("ov_fp32", "fp32"), ("ov_bf16", "bf16"), ("ov_int8", "int8")):
        mode = modes.get_mode(name)
        assert mode.backend == "openvino" and mode.precision == precision
        assert mode.devices == frozenset({"cpu"})
        assert mode.sources == frozenset({"torchvision", "yolo", "onnx"})
    assert modes.get_mode("ov_int8").needs_calibration and modes.get_mode("ov_int8").bias_correction
    assert modes.mode_device_problem("ov_fp32", "cuda") is not None


def test_a_detector_row_carries_its_work_beside_its_references(fixture_detector, tmp_path):
    """run_unit on the fixture detector: the row counts detections and proposals per image
    beside fp32's on the same images; the report flags a row that does 5% less."""
    from qbench.orchestrate import plan_job
    from qbench.report.verdict import flag_lines

    manifest = small_manifest(
        tmp_path, name="work", models=[{"id": "fix", "arch": "fixture", "input_size": [256, 256]}],
        quantization={"modes": ["int8_dynamic"]},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1})
    plan = plan_job(manifest)
    assert run_unit(plan.units[0], tmp_path / "results").status == "ok"
    row = read_table(tmp_path / "results", "models", plan.job_id).to_pylist()[0]
    assert row["work_reference_mode"] == "fp32" and row["work_images"] == 4
    assert row["reference_proposals_per_image"] == 100 == row["proposals_per_image"]
    assert row["detections_per_image"] > 1 and row["reference_detections_per_image"] > 1
    assert not [f for f in flag_lines([row], [], [], None) if "different work" in f]
    fewer = {**row, "proposals_per_image": 72.8}
    assert flag_lines([fewer], [], [], None)[-1] == (
        "fix int8_dynamic cpu: does different work than fp32: 72.8 proposals into the box head "
        "per image vs 100.0 (-27%): a speedup that does less is not a speedup")
    # the same proposals, fewer detections past the score threshold: accuracy, not work
    scored_fewer = {**row, "detections_per_image": row["reference_detections_per_image"] * 0.8}
    assert not [f for f in flag_lines([scored_fewer], [], [], None) if "different work" in f]
    one_stage = {**scored_fewer, "proposals_per_image": None,
                 "reference_proposals_per_image": None}
    assert "different work" in flag_lines([one_stage], [], [], None)[-1]


def test_an_fp32_mode_run_in_bf16_is_flagged():
    """The flag reads the row's read-out against the mode table: OpenVINO's default on a CPU
    with AMX (bf16) under an fp32 name is flagged; a row without the read-out says nothing."""
    from qbench.report.verdict import ran_other_precision

    row = {"model_id": "m", "mode": "ov_fp32", "device": "cpu", "status": "ok",
           "executed_precision": "bfloat16", "executed_ops_by_precision": '{"bfloat16": 52}'}
    assert ran_other_precision(row) == ("ran in bfloat16 (52 of 52 conv/matmul operators), "
                                        "not the float32 its name says")
    assert ran_other_precision({**row, "executed_precision": None}) is None
    assert ran_other_precision({**row, "mode": "ort_int8_mixed"}) is None  # mixed: no claim


def test_fp32_is_forced_and_the_precision_is_read_from_the_compiled_model(tmp_path):
    """Without the hint OpenVINO picks bf16 on a CPU that has it; qbench's fp32 says f32, and
    the runtime graph confirms every conv/matmul ran in float32."""
    loaded = small_net()
    x = synth_images(3, (16, 16), seed=2)
    q = quantize(loaded, "ov_fp32", request(tmp_path, []))
    assert q.runtime.executed_precision() == {"float32": 3}
    config = q.runtime.runtime_config()
    assert config["INFERENCE_PRECISION_HINT"] == "f32"
    assert config["INFERENCE_NUM_THREADS"] == torch.get_num_threads()
    assert config["ENABLE_CPU_PINNING"] is False and config["NUM_STREAMS"] == 1
    assert torch.allclose(q.predict(x), loaded.module(x), atol=1e-5)
    assert q.backend == "openvino" and q.float_modules == ["0", "2", "6"] and not q.int8_modules


@pytest.mark.skipif(not HAS_BF16, reason=f"this CPU offers no bf16 to OpenVINO ({CAPABILITIES})")
def test_bf16_compiles_in_bf16(tmp_path):
    loaded = small_net()
    q = quantize(loaded, "ov_bf16", request(tmp_path, []))
    assert q.runtime.executed_precision() == {"bfloat16": 3}
    assert q.runtime.runtime_config()["INFERENCE_PRECISION_HINT"] == "bf16"
    x = synth_images(3, (16, 16), seed=2)
    assert F.cosine_similarity(q.predict(x), loaded.module(x)).min() > 0.99


@pytest.mark.skipif(HAS_BF16, reason="this CPU has bf16: the refusal is for CPUs without it")
def test_bf16_refused_without_bf16(tmp_path):
    with pytest.raises(ValueError, match="ov_bf16: this CPU has no bf16 support"):
        quantize(small_net(), "ov_bf16", request(tmp_path, []))


def test_int8_runs_int8_and_keep_float_is_an_ignored_scope(tmp_path):
    loaded = small_net()
    calib = [synth_images(4, (16, 16), seed=1)]
    q = quantize(loaded, "ov_int8", request(tmp_path / "a", calib))
    assert q.runtime.executed_precision() == {"int8": 3}
    assert q.int8_modules == ["0", "2", "6"] and q.params_by_dtype["int8"] > 0
    kept = quantize(loaded, "ov_int8", request(tmp_path / "b", calib, keep_float=["6"]))
    assert kept.int8_modules == ["0", "2"] and kept.float_modules == ["6"]
    assert kept.runtime.executed_precision() == {"float32": 1, "int8": 2}
    # inspection: the final outputs against fp32's, no layer rows
    from qbench.inspect import inspect_unit

    rows, pictures = inspect_unit(loaded, q, synth_images(2, (16, 16), seed=3), "conv",
                                  tmp_path / "inspect", label="ov_int8")
    assert rows == [] and [p.name for p in pictures] == ["hexbin_outputs.png"]
    assert "'6'" in kept.notes and "min/max ranges" in kept.notes


@pytest.fixture(scope="module")
def fixture_detector() -> LoadedModel:
    return load_torchvision("fix", "fixture", None, (256, 256), None)


def test_detector_int8_keeps_its_post_processing_float(fixture_detector, tmp_path):
    det = fixture_detector
    x = synth_images(3, (256, 256), seed=5)
    ref = det.predict(det.module, x)
    assert sum(len(d["boxes"]) for d in ref) > 6  # a trained detector: there is work to do
    calib = list(synth_images(8, (256, 256), seed=1).split(4))
    q = quantize(det, "ov_int8", request(tmp_path, calib, method="histogram"))
    out = q.predict(x)
    assert len(out) == 3 and set(out[0]) == {"boxes", "labels", "scores"}
    # converted through DetectorTensors: the proposals the box head pooled are an output too
    assert q.runtime.converted.output_names == ["boxes", "labels", "scores", "proposals"]
    assert out[0]["labels"].dtype == torch.int64 and out[0]["boxes"].dtype == torch.float32
    assert detection_agreement(ref, out)["f1"] >= 0.8
    assert "roi_heads.box_head.fc6" in q.int8_modules and "rpn.head.cls_logits" in q.int8_modules
    assert "box decoding and NMS stay float" in q.notes and "histogram" in q.notes
    ran = q.runtime.executed_precision()
    assert ran.get("int8", 0) > 0.9 * sum(ran.values()), ran
    # every quantizer feeds a weight-carrying part (or only lends its shape to the anchor
    # generator): decoding and level mapping stay float
    converted = q.runtime.converted
    users = {converted.op_module(t.get_node())
             for op in converted.model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
             for t in op.output(0).get_target_inputs()
             if t.get_node().get_type_name() not in ("ShapeOf",)}
    outside = {u for u in users if not (u or "").startswith(("backbone", "rpn.head",
                                                               "roi_heads.box_"))}
    assert users and not outside, outside
    # so it does fp32's work: the same proposals into the box head, read from each runtime
    from qbench.evaluate.work import compare_work

    fp32 = quantize(det, "fp32", request(tmp_path / "fp32", []))
    work = compare_work(q, fp32, "fp32", x)
    assert work.reference.proposals == 100  # the fixture's rpn_post_nms_top_n_test
    assert work.work.proposals == work.reference.proposals
    assert abs(work.work.detections / work.reference.detections - 1) <= 0.05


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    from qbench.backends.onnxruntime.export import export_onnx

    loaded = small_net(32)  # a manifest's input is at least 32 px
    with torch.no_grad():  # an outlier channel: all-int8 misses a strict cosine target
        loaded.module[2].weight[0] *= 100
        loaded.module[2].bias[0] *= 100
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    export_onnx(loaded, path)
    return path, loaded


def test_an_onnx_file_is_read_directly(onnx_file, tmp_path):
    path, torch_model = onnx_file
    loaded = load_onnx("small", path, (32, 32))
    x = synth_images(3, (32, 32), seed=2)
    q = quantize(loaded, "ov_fp32", request(tmp_path / "f", []))
    out = q.predict(x)
    assert isinstance(out, list) and torch.allclose(out[0], torch_model.module(x), atol=1e-5)
    assert "converted by OpenVINO" in q.notes
    q8 = quantize(loaded, "ov_int8", request(tmp_path / "q", [synth_images(4, (32, 32), seed=1)],
                                              keep_float=["/2/Conv"]))
    assert q8.float_modules == ["/2/Conv"] and len(q8.int8_modules) == 2
    assert F.cosine_similarity(q8.predict(x)[0], out[0]).min() > 0.9


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return classifier_folder(tmp_path_factory.mktemp("cls"))


def test_pipeline_rows_of_a_trained_classifier(classifier):
    """The model's own preprocessing feeds calibration and evaluation; the rows carry the
    OpenVINO version, the compile properties and a loadable IR artifact."""
    from qbench.orchestrate import plan_job

    manifest = small_manifest(
        classifier, name="ov", models=[_model("grey", preprocess=PREPROCESS,
                                              outputs={"labels": LABELS})],
        quantization={"modes": ["ov_fp32", "ov_int8", "int8_dynamic"],
                      "calibration": {"images": 6}},
        benchmark={"batch_sizes": [2], "warmup": 0, "iterations": 1, "threads": 1},
        inspect={"images": 0}, dataset={"format": "imagefolder", "images": "data/photos"})
    plan = plan_job(manifest)
    results = classifier / "results"
    for unit in plan.units:
        assert run_unit(unit, results).status == "ok"
    rows = {m["mode"]: m for m in read_table(results, "models", plan.job_id).to_pylist()}
    fp32, int8 = rows["ov_fp32"], rows["ov_int8"]
    assert fp32["top1"] >= 0.9 and fp32["agreement_top1"] == 1.0
    assert int8["agreement_top1"] >= 0.8 and int8["calibration_method"] == "histogram"
    for row in (fp32, int8):
        assert row["backend"] == "openvino" and row["openvino_version"] == "2026.4.1"
        config = json.loads(row["runtime_config"])
        assert config["INFERENCE_NUM_THREADS"] == 1 and config["INFERENCE_PRECISION_HINT"] == "f32"
        assert row["artifact_format"] == "openvino-ir"
    with tarfile.open(results / int8["artifact_path"]) as tar:
        assert sorted(tar.getnames()) == ["model.bin", "model.xml"]
    assert int8["size_bytes"] < 0.4 * fp32["size_bytes"]
    # what ran, read from each runtime, and the report's flag where it is not what the name says
    assert json.loads(fp32["executed_ops_by_precision"]) == {"float32": 21}  # 20 convs + fc
    # OpenVINO folds each BatchNorm into its conv at conversion; the conv keeps its name
    assert len(int8["int8_modules"]) == 21 and "layer3.0.conv1" in int8["int8_modules"]
    assert not any("bn" in name for name in int8["int8_modules"] + fp32["float_modules"])
    assert int8["executed_precision"] == "int8" and int8["executed_int8_fraction"] == 1.0
    dynamic = rows["int8_dynamic"]  # torch.ao: only the fc is int8, the convs run float
    assert json.loads(dynamic["executed_ops_by_precision"]) == {"float32": 20, "int8": 1}
    from qbench.report.tables import size_accuracy_table
    from qbench.report.verdict import flag_lines

    flags = [f for f in flag_lines(list(rows.values()), [], [], None) if "its name says" in f]
    assert flags == ["grey int8_dynamic cpu: ran in float32 (20 of 21 conv/matmul operators), "
                     "not the int8 its name says"]
    cells = {r[1]: r[3] for r in size_accuracy_table(list(rows.values())).rows}
    assert cells["ov_int8"] == "openvino: int8 21/21"
    assert cells["int8_dynamic"] == "torch-dynamic-x86: float32 20/21"
    # the job's side-by-side timing (after the units, as the chord and qbench run do it)
    from qbench.orchestrate import save_plan
    from qbench.time_model import time_model

    save_plan(plan, results)  # the step finds the model's units in the job's plan
    timing = time_model(results, plan.job_id, "grey", "cpu")
    assert timing.status == "ok" and timing.members == ["fp32", "int8_dynamic", "ov_fp32",
                                                         "ov_int8"], timing
    latency = read_table(results, "latency", plan.job_id).to_pylist()
    from qbench.report.method import how_measured

    method = how_measured(list(rows.values()), latency).items
    assert any(i.startswith("Calibration: NNCF histogram ranges (OpenVINO modes), 6 images")
               for i in method)
    assert any(i.startswith("ov_fp32, ov_int8: compiled by OpenVINO's CPU plugin with "
                            "ENABLE_CPU_PINNING False") for i in method)
    assert {r["reference_mode"] for r in latency} == {"fp32"}  # paired against the job's reference
    assert all(r["speedup"] is not None for r in latency)


def mixed_onnx_row(onnx_file, tmp_path, monkeypatch, target: dict) -> dict:
    """The models row of ov_int8_mixed run on the small ONNX file toward `target`."""
    from qbench.orchestrate import plan_job

    monkeypatch.setenv("QBENCH_DATA_ROOTS", str(tmp_path))
    (tmp_path / "small.onnx").write_bytes(onnx_file[0].read_bytes())
    manifest = small_manifest(
        tmp_path, name="ov-mixed",
        models=[{"id": "small", "source": "onnx", "path": "small.onnx", "input_size": [32, 32]}],
        quantization={"modes": ["ov_int8_mixed"], "calibration": {"images": 8},
                      "target": target},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1})
    plan = plan_job(manifest)
    assert run_unit(plan.units[0], tmp_path / "results").status == "ok"
    return read_table(tmp_path / "results", "models", plan.job_id).to_pylist()[0]


def test_mixed_search_on_an_onnx_file_reaches_its_target(onnx_file, tmp_path, monkeypatch):
    """qbench's search with NNCF as the quantizer, on a given ONNX file: it keeps the most
    sensitive of the file's weight nodes float (NNCF's ignored scope) until the outputs'
    cosine with fp32 reaches a target all-int8 misses (0.99992 here; with the Gemm that reads
    the outlier channel float, 0.999998)."""
    target = 0.99999
    row = mixed_onnx_row(onnx_file, tmp_path, monkeypatch, {"min_cosine": target})
    assert row["mixed_target_met"] and row["mixed_score"] >= target
    assert row["mixed_heldout_score"] is not None and row["backend"] == "openvino"
    floats = row["mixed_float_groups"]
    assert "/6/Gemm" in floats and set(floats) <= {"/0/Conv", "/2/Conv", "/6/Gemm"}
    assert sorted(row["float_modules"]) == sorted(floats)  # what the search kept float ran so
    assert json.loads(row["executed_ops_by_precision"]) == {"float32": len(floats),
                                                            "int8": 3 - len(floats)}


def test_a_decoded_onnx_detector_counts_its_work_after_decoding(tmp_path, monkeypatch):
    """An ONNX detector read by OpenVINO and scored through outputs.decoder: its detections per
    image are counted after decoding, beside its reference's (ort_fp32 for an ONNX file).
    ov_int8 refuses the file in one line: its batched NMS is an If operator, on whose bodies
    NNCF crashed the process."""
    from qbench.backends.onnxruntime.export import export_onnx
    from qbench.models.torchvision_models import load_fixture
    from qbench.orchestrate import plan_job

    monkeypatch.setenv("QBENCH_DATA_ROOTS", str(tmp_path))
    export_onnx(load_fixture("fx", (256, 256), None), tmp_path / "fixture.onnx")
    manifest = small_manifest(
        tmp_path, name="decoded",
        models=[{"id": "fxo", "source": "onnx", "path": "fixture.onnx", "input_size": [256, 256],
                 "preprocess": {"resize": "stretch"}, "outputs": {"decoder": "torchvision"}}],
        quantization={"modes": ["ov_fp32", "ov_int8"],
                      "calibration": {"images": 4, "method": "minmax"}},
        benchmark={"batch_sizes": [1], "warmup": 0, "iterations": 1, "threads": 1},
        inspect={"images": 0})
    plan = plan_job(manifest)
    fp32_unit, int8_unit = sorted(plan.units, key=lambda u: u.mode)
    assert run_unit(fp32_unit, tmp_path / "results").status == "ok"
    row = read_table(tmp_path / "results", "models", plan.job_id).to_pylist()[0]
    assert row["work_reference_mode"] == "ort_fp32" and row["work_images"] == 4
    assert row["reference_detections_per_image"] > 1
    assert row["detections_per_image"] == row["reference_detections_per_image"]
    assert row["proposals_per_image"] is None  # a file read as is: no proposals output
    refused = run_unit(int8_unit, tmp_path / "results")
    assert refused.status == "error" and refused.error == (
        "ModelError: fixture.onnx: ov_int8 does not quantize ONNX files with If operators (NNCF "
        "crashed on them); use ort_int8, or export the model without its post-processing")


def test_nncf_accuracy_control_on_an_onnx_file(onnx_file, tmp_path, monkeypatch):
    """target.search: nncf: NNCF's accuracy control with qbench's scorer reaches the cosine
    target all-int8 misses by putting layers back in float; the row says which, the plot is
    drawn from the models NNCF scored, and the held-out images are checked."""
    target = 0.99999
    row = mixed_onnx_row(onnx_file, tmp_path, monkeypatch,
                         {"min_cosine": target, "search": "nncf"})
    assert row["mixed_target_met"] and row["mixed_score"] >= target, row["notes"]
    assert "NNCF's accuracy control" in row["notes"]
    floats = row["mixed_float_groups"]
    assert floats and set(floats) <= {"/0/Conv", "/2/Conv", "/6/Gemm"}
    assert sorted(row["float_modules"]) == sorted(floats)
    assert row["mixed_heldout_score"] is not None
    assert json.loads(row["executed_ops_by_precision"]).get("float32") == len(floats)
    plots = list((tmp_path / "results").rglob("mixed_precision_tradeoff.png"))
    assert len(plots) == 1 and plots[0].stat().st_size > 10_000


@pytest.mark.parametrize("modes, says", [
    (["ov_int8_mixed", "ort_int8_mixed"], "not ort_int8_mixed"),
    (["ov_int8"], "add ov_int8_mixed"),
])
def test_nncf_search_is_for_ov_int8_mixed_only(tmp_path, modes, says):
    from qbench.errors import ManifestError
    from qbench.orchestrate import plan_job

    manifest = small_manifest(tmp_path, name="ov-nncf-bad",
                              quantization={"modes": modes, "target": {"search": "nncf"}})
    with pytest.raises(ManifestError, match=f"quantization.target.search.*{says}"):
        plan_job(manifest)


def test_an_onnx_conv_folded_with_its_batchnorm_keeps_its_name(tmp_path):
    """convert_model folds an ONNX file's BatchNorm into its conv and names the result after the
    new weight; the conv gets its ONNX node's name back, so rows and keep_float still name it."""
    import onnx

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    path = tmp_path / "bn.onnx"
    with torch.no_grad():
        torch.onnx.export(net, (torch.rand(1, 3, 32, 32),), str(path), input_names=["input"],
                          opset_version=17, dynamo=False, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.PRESERVE,
                          dynamic_axes={"input": {0: "b"}})
    graph = onnx.load(str(path)).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 and sum(n.op_type == "BatchNormalization" for n in graph.node) == 2
    loaded = load_onnx("bn", path, (32, 32))
    batches = [synth_images(4, (32, 32), seed=1)]
    q = quantize(loaded, "ov_int8", request(tmp_path / "q", batches, keep_float=[convs[1]]))
    assert q.int8_modules == [convs[0]] and q.float_modules == [convs[1]]
