"""ONNX Runtime modes: the same torch model exported, run in fp32 and as QDQ static int8."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from qbench import modes
from qbench.backends.onnxruntime.config import devices as ort_devices
from qbench.backends.onnxruntime.export import node_module
from qbench.evaluate.agreement import detection_agreement
from qbench.evaluate.synth import synth_images
from qbench.manifest import CalibrationSpec
from qbench.models import ModelError
from qbench.models.base import LoadedModel
from qbench.models.torchvision_models import load_torchvision
from qbench.quantize.registry import QuantizeRequest, quantize
from tests.test_quantize import recalibrate_bn, structured_images


def request(tmp_path, batches, method="histogram", keep_float=()):
    spec = CalibrationSpec(images=max(1, sum(b.shape[0] for b in batches)), method=method)
    return QuantizeRequest(device="cpu", calibration=spec, keep_float=list(keep_float),
                           calibration_batches=lambda: iter(batches), work_dir=str(tmp_path))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten(1), b.flatten(1)).mean().item()


@pytest.fixture(scope="module")
def classifier() -> LoadedModel:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    recalibrate_bn(net, [structured_images(16, 64, seed=1)])
    return LoadedModel("r18", "resnet18", "classification", net, (64, 64), 10)


def test_ort_fp32_classifier_matches_torch(classifier, tmp_path):
    q = quantize(classifier, "ort_fp32", request(tmp_path, []))
    x = structured_images(3, 64, seed=3)
    out = q.predict(x)
    ref = classifier.predict(classifier.module, x)
    assert isinstance(out, torch.Tensor) and out.shape == ref.shape  # dynamic batch
    assert torch.allclose(out, ref, atol=1e-4)
    assert q.backend == "onnxruntime" and not q.int8_modules
    # BatchNorm folded into the convs at export: their weights, plus a bias per conv channel
    assert set(q.params_by_dtype) == {"float32"}
    assert abs(q.params_by_dtype["float32"] - 11_176_842) < 1000
    assert {"conv1", "layer1.0.conv1", "fc"} <= set(q.float_modules)  # torch names, BN folded


@pytest.mark.parametrize("method", ["minmax", "histogram", "percentile"])
def test_ort_int8_classifier_close_to_fp32(classifier, tmp_path, method):
    calib = [structured_images(4, 64, seed=2)]
    q = quantize(classifier, "ort_int8", request(tmp_path, calib, method=method))
    x = structured_images(8, 64, seed=3)
    ref = classifier.predict(classifier.module, x)
    out = q.predict(x)
    assert out.shape == ref.shape and cosine(out, ref) > 0.95, method
    assert len(q.int8_modules) == 21 and not q.float_modules  # 20 convs + fc
    assert q.params_by_dtype["int8"] > 11_000_000
    fp32_size = quantize(classifier, "ort_fp32", request(tmp_path / "f", [])).size_bytes
    assert q.size_bytes < 0.3 * fp32_size
    assert {"minmax": "MinMax", "histogram": "Entropy", "percentile": "Percentile"}[method] in q.notes
    from qbench.measure.machine import cpu_isa

    # The note states what this CPU has, and reduce_range follows it.
    assert ("VNNI (" in q.notes and "detected: no reduce_range" in q.notes) == cpu_isa().vnni
    assert ("reduce_range, 7-bit weights" in q.notes) == (not cpu_isa().vnni)


def test_ort_int8_keep_float(classifier, tmp_path):
    q = quantize(classifier, "ort_int8",
                 request(tmp_path, [structured_images(2, 64, seed=2)], "minmax", ["fc", "layer4*"]))
    assert "fc" in q.float_modules and "layer4.1.conv2" in q.float_modules
    assert "layer3.1.conv2" in q.int8_modules and "fc" not in q.int8_modules
    assert "'fc'" in q.notes


@pytest.fixture(scope="module")
def fixture_detector() -> LoadedModel:
    return load_torchvision("fix", "fixture", None, (256, 256), None)


def test_ort_modes_on_trained_detector_find_the_objects(fixture_detector, tmp_path):
    det = fixture_detector
    x = synth_images(4, (256, 256), seed=5)
    ref = det.predict(det.module, x)
    assert sum(len(d["boxes"]) for d in ref) > 8  # a trained detector: there is something to find
    calib = list(synth_images(8, (256, 256), seed=1).split(4))
    for mode, min_f1 in (("ort_fp32", 0.99), ("ort_int8", 0.8)):
        q = quantize(det, mode, request(tmp_path / mode, calib))
        out = q.predict(x)
        assert len(out) == 4 and set(out[0]) == {"boxes", "labels", "scores"}
        assert out[0]["boxes"].dtype == torch.float32 and out[0]["labels"].dtype == torch.int64
        agree = detection_agreement(ref, out)
        assert agree["f1"] >= min_f1, (mode, agree)
    # int8 only inside the weight-carrying parts; RoIAlign, decoding and NMS stay float.
    assert "roi_heads.box_head.fc6" in q.int8_modules and "rpn.head.cls_logits" in q.int8_modules
    assert not q.float_modules and "RoIAlign" in q.notes
    assert q.params_by_dtype["int8"] > 10 * q.params_by_dtype["float32"]


def test_ort_refuses_retinanet(tmp_path):
    model = LoadedModel("r", "retinanet_resnet50_fpn", "detection", torch.nn.Identity(), (64, 64), 91)
    with pytest.raises(ModelError, match="empty tensor"):
        quantize(model, "ort_fp32", request(tmp_path, []))


def test_ort_registry_entries():
    assert ort_devices() in (("cpu",), ("cpu", "cuda"))
    for mode in ("ort_fp32", "ort_int8"):
        info = modes.get_mode(mode)
        assert info.devices == frozenset(ort_devices())
        assert "onnx" in info.sources and "torchvision" in info.sources
    assert modes.get_mode("ort_int8").needs_calibration
    assert modes.mode_source_problem("int8_static", "onnx") is not None
    assert modes.mode_source_problem("ort_int8", "onnx") is None


def test_node_names_map_to_modules():
    names = {"backbone.body.layer1.0.conv1", "rpn.head.conv.0.0", "rpn.head.cls_logits"}
    assert node_module("/backbone/body/layer1/layer1.0/conv1/Conv", names) == \
        "backbone.body.layer1.0.conv1"
    assert node_module("/rpn/head/conv/conv.0/conv.0.0_3/Conv", names) == "rpn.head.conv.0.0"
    assert node_module("/rpn/head/cls_logits_2/Conv", names) == "rpn.head.cls_logits"
    assert node_module("/transform/Sub", names) is None
    assert node_module("/layer1/layer1.0/conv1/Conv", None) == "layer1.0.conv1"


def test_ort_int8_outputs_keep_their_range_under_clipping_calibration(tmp_path):
    """Percentile and entropy ranges clip a tensor's rare extremes; on a model's output those
    extremes are the decision (the winning logit), so several classes would tie at the clipped
    maximum. The graph outputs keep the min/max seen during calibration."""
    x = structured_images(8, 32, seed=2)
    pool = torch.nn.AvgPool2d(4)
    flat = pool(x).flatten(1)
    centred = flat - flat.mean(0)
    lin = torch.nn.Linear(flat.shape[1], 20_000)
    with torch.no_grad():  # class k answers image k: logit 10, image 0's logit 30; the rest ~0
        lin.weight.normal_(0, 0.002)
        lin.bias.zero_()
        lin.weight[:8] = 10 * centred / (centred * centred).sum(1, keepdim=True)
        lin.weight[0] *= 3
        lin.bias[:8] = -(lin.weight[:8] @ flat.mean(0))
    net = torch.nn.Sequential(pool, torch.nn.Flatten(), lin).eval()
    loaded = LoadedModel("tail", "custom", "classification", net, (32, 32), 20_000)
    ref = net(x)
    assert ref.max().item() > 29  # 8 values in 160,000 far out: above the 99.99th percentile
    q = quantize(loaded, "ort_int8", request(tmp_path, [x], method="percentile"))
    out = q.predict(x)
    assert "graph outputs keep their observed min/max" in q.notes
    assert out.max().item() > 0.98 * ref.max().item()  # not clipped to the percentile

    from qbench.quantize.ort_int8 import output_ranges

    (tmp_path / "m.onnx").write_bytes(b"")
    torch.onnx.export(net, (x[:1],), str(tmp_path / "m.onnx"), input_names=["input"],
                      output_names=["logits"], dynamo=False,
                      dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}})
    ranges = output_ranges(tmp_path / "m.onnx", [{"input": x[:4].numpy()}, {"input": x[4:].numpy()}])
    assert set(ranges) == {"logits"}
    assert ranges["logits"][0]["rmax"] == pytest.approx(ref.max().item(), rel=1e-5)
    assert ranges["logits"][0]["rmin"] == pytest.approx(min(ref.min().item(), 0.0), rel=1e-5)
