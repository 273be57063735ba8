"""Model families beyond Faster R-CNN: ONNX files (source: onnx), RetinaNet/SSD, refusals."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision
import yaml
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from qbench.backends.onnxruntime.export import export_onnx
from qbench.manifest import CalibrationSpec, ManifestError, expand, parse_manifest
from qbench.models import ModelError
from qbench.models.base import LoadedModel
from qbench.models.onnx_models import load_onnx
from qbench.models.torchvision_models import build_torchvision, check_arch
from qbench.pipeline import run_unit
from qbench.quantize.common import serialized_size_bytes
from qbench.quantize.registry import QuantizeRequest, quantize
from tests.test_quantize import recalibrate_bn, structured_images


def request(tmp_path, batches=(), method="minmax"):
    spec = CalibrationSpec(images=max(1, sum(b.shape[0] for b in batches)), method=method)
    return QuantizeRequest(device="cpu", calibration=spec, keep_float=[],
                           calibration_batches=lambda: iter(batches), work_dir=str(tmp_path))


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    """A resnet18 with real BN statistics, exported with a dynamic batch; and its torch logits."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    recalibrate_bn(net, [structured_images(16, 64, seed=1)])
    path = tmp_path_factory.mktemp("onnx") / "r18.onnx"
    export_onnx(LoadedModel("r18", "resnet18", "classification", net, (64, 64), 10), path)
    x = structured_images(4, 64, seed=3)
    with torch.no_grad():
        return path, x, net(x)


def test_onnx_source_runs_with_ort_modes_only(onnx_file, tmp_path):
    path, x, ref = onnx_file
    loaded = load_onnx("r18", path, (64, 64))
    assert loaded.task == "onnx" and loaded.source == "onnx"
    assert serialized_size_bytes(loaded.module) == path.stat().st_size  # the file, not a pickle
    out = loaded.predict(loaded.module, x)  # the fp32 reference: ORT on the file
    assert isinstance(out, list) and torch.allclose(out[0], ref, atol=1e-4)
    q = quantize(loaded, "ort_int8", request(tmp_path, [structured_images(4, 64, seed=2)]))
    outs = q.predict(x)
    assert isinstance(outs, list) and outs[0].shape == (4, 10)
    assert F.cosine_similarity(outs[0], ref).mean() > 0.95
    assert "/layer1/layer1.0/conv1/Conv" in q.int8_modules  # node names: no torch modules here
    assert q.size_bytes < 0.3 * path.stat().st_size
    for mode in ("fp32", "int8_static", "bf16"):
        with pytest.raises(ModelError, match="source onnx.*ort_fp32, ort_int8"):
            quantize(loaded, mode, request(tmp_path))


def test_ort_int8_calibrates_once_and_reuses_the_ranges(onnx_file, tmp_path):
    """ort_int8_mixed quantizes one model many times: the first quantization calibrates and
    keeps the ranges, later ones reuse them and give the model a fresh calibration gives."""
    from qbench.quantize.ort_int8 import prepare_ort_int8, quantize_prepared

    path, x, _ = onnx_file
    loaded = load_onnx("r18", path, (64, 64))
    req = request(tmp_path, [structured_images(4, 64, seed=2)], method="percentile")
    prep = prepare_ort_int8(loaded, req)
    assert not prep.ranges_file.exists()
    first = quantize_prepared(loaded, req, prep, tmp_path / "a.onnx")
    assert prep.ranges_file.exists()
    stamp = prep.ranges_file.stat().st_mtime_ns
    prep.data = []  # a second calibration would now fail: the ranges must come from the file
    again = quantize_prepared(loaded, req, prep, tmp_path / "b.onnx")
    assert prep.ranges_file.stat().st_mtime_ns == stamp
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    fresh = quantize(loaded, "ort_int8", req)
    assert Path(fresh.runtime.model_path).read_bytes() == (tmp_path / "a.onnx").read_bytes()
    assert torch.equal(first.predict(x)[0], again.predict(x)[0])


def test_a_conv_kept_float_stays_float_in_the_session_ort_runs(onnx_file, tmp_path):
    """ONNX Runtime would give a float conv between Q/DQ nodes int8 weights when it loads the
    file (its WeightBiasQuantization transformer), undoing keep_float: qbench's sessions keep
    it off, so the graph ORT runs still has that conv in float."""
    from qbench.backends.onnxruntime.runtime import session

    path, *_ = onnx_file
    loaded = load_onnx("r18", path, (64, 64))
    req = request(tmp_path, [structured_images(4, 64, seed=2)])
    req.keep_float = ["/layer1/layer1.0/conv2/Conv"]
    q = quantize(loaded, "ort_int8", req)
    assert "/layer1/layer1.0/conv2/Conv" in q.float_modules
    session(q.runtime.model_path, "cpu", optimized_to=tmp_path / "runs.onnx")
    runs = onnx.load(str(tmp_path / "runs.onnx")).graph.node
    kept = [n.op_type for n in runs if n.name.startswith("/layer1/layer1.0/conv2/Conv")]
    assert {"Conv", "FusedConv"} & set(kept) and "QLinearConv" not in kept, kept
    assert any(n.op_type == "QLinearConv" for n in runs)  # the rest is int8


def test_onnx_source_refusals(onnx_file, tmp_path):
    path, *_ = onnx_file
    with pytest.raises(ModelError, match=r"takes 3x64x64 images"):  # only the batch is dynamic
        load_onnx("m", path, (96, 96))
    with pytest.raises(ModelError, match="not an .onnx file"):
        load_onnx("m", tmp_path / "model.pt", (64, 64))
    with pytest.raises(ModelError, match="file not found"):
        load_onnx("m", tmp_path / "missing.onnx", (64, 64))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        load_onnx("m", junk, (64, 64))


def test_onnx_source_fixed_size_must_match(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval()
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(net, (torch.rand(1, 3, 32, 32),), str(path), dynamo=False,
                      input_names=["x"])
    loaded = load_onnx("m", path, (32, 32))
    assert len(loaded.predict(loaded.module, torch.rand(3, 3, 32, 32))[0]) == 3  # batch 1, looped
    with pytest.raises(ModelError, match=r"takes 3x32x32 images.*3x48x48"):
        load_onnx("m", path, (48, 48))


def test_pipeline_runs_an_onnx_file(onnx_file, tmp_path, monkeypatch):
    # Units built here, not loaded by load_manifest: their folder is a data root by name.
    monkeypatch.setenv("QBENCH_DATA_ROOTS", str(tmp_path))
    path, *_ = onnx_file
    (tmp_path / "r18.onnx").write_bytes(path.read_bytes())
    doc = {
        "name": "onnx-file",
        "models": [{"id": "r18", "source": "onnx", "path": "r18.onnx", "input_size": [64, 64]}],
        "quantization": {"modes": ["ort_fp32", "ort_int8"],
                         "calibration": {"images": 4, "method": "minmax"}},
        "benchmark": {"devices": ["cpu"], "batch_sizes": [1, 2], "warmup": 0, "iterations": 1,
                      "threads": 1},
        "inspect": {"images": 1},
    }
    manifest = parse_manifest(yaml.safe_dump(doc))
    units = expand(manifest, "onnx-20260101T000000-abcdef", tmp_path)
    rows = {u.mode: run_unit(u, tmp_path / "results").model_row for u in units}
    assert rows["ort_fp32"]["status"] == "ok" and rows["ort_fp32"]["task"] == "onnx"
    assert rows["ort_fp32"]["size_reduction"] == 0.0
    assert rows["ort_int8"]["status"] == "ok" and rows["ort_int8"]["size_reduction"] > 0.7
    # A torch mode on an ONNX file is refused by the manifest, before anything runs.
    doc["quantization"]["modes"].append("int8_static")
    with pytest.raises(ManifestError, match=r"models\[0\]: mode int8_static cannot run models of "
                                            r"source onnx.*; use ort_fp32, ort_int8"):
        parse_manifest(yaml.safe_dump(doc))


# --- RetinaNet / SSD / refusals -------------------------------------------------------------

@pytest.fixture(scope="module")
def retinanet() -> LoadedModel:
    """A ResNet18-FPN RetinaNet: the retinanet_resnet50_fpn structure at a test-sized cost."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                   norm_layer=FrozenBatchNorm2d, returned_layers=[2, 3, 4],
                                   extra_blocks=LastLevelP6P7(256, 256))
    for m in backbone.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.running_var.fill_(4.0)
    det = RetinaNet(backbone, num_classes=5, min_size=128, max_size=128).eval()
    return LoadedModel("ret", "retinanet_resnet18_fpn", "detection", det, (128, 128), 5)


def test_int8_static_retinanet_quantizes_backbone_and_head(retinanet, tmp_path):
    det = retinanet.module
    calib = [structured_images(2, 128, seed=s) for s in (5, 6)]
    q = quantize(retinanet, "int8_static", request(tmp_path, calib, "histogram"))
    weights = {n for n, m in det.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert set(q.int8_modules) == weights and not q.float_modules  # every conv, heads included
    assert "head.classification_head.cls_logits" in q.int8_modules
    out = q.predict(structured_images(2, 128, seed=7))
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}
    # Fidelity on what the head sees and says, before the data-dependent postprocessing.
    images = det.transform(list(structured_images(2, 128, seed=8)))[0].tensors
    with torch.no_grad():
        ref = det.head(list(det.backbone(images).values()))
        got = q.module.head(list(q.module.backbone(images).values()))
    for key in ref:
        cos = F.cosine_similarity(got[key].flatten(1), ref[key].flatten(1)).mean()
        assert cos > 0.95, key
    assert 1 - q.size_bytes / serialized_size_bytes(det) > 0.7
    assert "NMS stay float" in q.notes


def test_detection_arch_checks():
    for arch in ("retinanet_resnet50_fpn", "ssd300_vgg16", "fcos_resnet50_fpn"):
        check_arch(arch)  # supported now
    with pytest.raises(ModelError, match="mask head"):
        check_arch("maskrcnn_resnet50_fpn")
    with pytest.raises(ModelError, match=r"300x300.*input_size \[300, 300\]"):
        build_torchvision("ssd300_vgg16", 91, (320, 320))
