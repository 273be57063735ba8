"""Quantization modes on real (small) torchvision models: fidelity, structure, size, registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from qbench import modes
from qbench.manifest import CalibrationSpec
from qbench.models.base import LoadedModel
from qbench.quantize import registry
from qbench.quantize.common import (
    matches_keep_float,
    params_by_dtype,
    serialized_size_bytes,
    weight_modules,
)
from qbench.quantize.int8_static import PercentileObserver
from qbench.quantize.parts import frozen_bn_to_bn
from qbench.quantize.registry import QuantizeRequest, quantize


def structured_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth colour fields plus bright rectangles: image-like statistics, unlike white noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    images = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    for i in range(n):
        for _ in range(3):
            y, x = torch.randint(0, size - size // 4, (2,), generator=g).tolist()
            h, w = torch.randint(size // 8, size // 4, (2,), generator=g).tolist()
            images[i, :, y:y + h, x:x + w] = torch.rand(3, 1, 1, generator=g)
    return images.clamp(0, 1)


def recalibrate_bn(module: nn.Module, batches: list[torch.Tensor]) -> None:
    """Give a random-weight net real BN statistics, so its activations neither vanish nor blow up."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    module.train()
    with torch.no_grad():
        for b in batches:
            module(b)
    module.eval()


def request(batches: list[torch.Tensor], keep_float=(), method="histogram", per_channel=True):
    spec = CalibrationSpec(images=max(1, sum(b.shape[0] for b in batches)), method=method,
                           per_channel=per_channel)
    return QuantizeRequest(device="cpu", calibration=spec, keep_float=list(keep_float),
                           calibration_batches=lambda: iter(batches), work_dir="/nonexistent")


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten(1).float(), b.flatten(1).float()).mean().item()


# --- classifier -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def classifier() -> LoadedModel:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    recalibrate_bn(net, [structured_images(16, 64, seed=1)])
    return LoadedModel("r18", "resnet18", "classification", net, (64, 64), 10)


@pytest.mark.parametrize("method", ["minmax", "histogram", "percentile"])
def test_int8_static_classifier_close_to_fp32(classifier, method):
    calib = [structured_images(8, 64, seed=2)]
    q = quantize(classifier, "int8_static", request(calib, method=method))
    x = structured_images(16, 64, seed=3)
    ref = classifier.predict(classifier.module, x)
    out = q.predict(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert cosine(out, ref) > 0.9, method
    assert q.backend == "torch-fx-x86"
    # Every conv and the fc are int8; nothing float is left with weights.
    assert q.int8_modules == weight_modules(classifier.module)[1] and not q.float_modules
    assert q.params_by_dtype.get("qint8", 0) > 10_000_000
    assert q.size_bytes < 0.35 * serialized_size_bytes(classifier.module)


def test_int8_static_classifier_keep_float(classifier):
    q = quantize(classifier, "int8_static",
                 request([structured_images(4, 64, seed=2)], keep_float=["fc", "layer1*"]))
    assert "fc" in q.float_modules and "fc" not in q.int8_modules
    assert isinstance(q.module.get_submodule("fc"), nn.Linear)
    assert any(n.startswith("layer1.") for n in q.float_modules)
    assert not any(n.startswith("layer1.") for n in q.int8_modules)
    assert "layer2.0.conv1" in q.int8_modules
    assert "'fc'" in q.notes
    out = q.predict(structured_images(2, 64, seed=3))
    assert out.shape == (2, 10)


def test_int8_dynamic_quantizes_linear_only(classifier):
    q = quantize(classifier, "int8_dynamic", request([]))
    assert q.int8_modules == ["fc"]
    assert "conv1" in q.float_modules
    x = structured_images(4, 64, seed=3)
    assert cosine(q.predict(x), classifier.predict(classifier.module, x)) > 0.95


def test_fp32_and_bf16_classifier(classifier):
    x = structured_images(4, 64, seed=3)
    ref = classifier.predict(classifier.module, x)
    fp32 = quantize(classifier, "fp32", request([]))
    assert torch.equal(fp32.predict(x), ref)
    assert fp32.params_by_dtype["float32"] > 11_000_000 and not fp32.int8_modules
    bf16 = quantize(classifier, "bf16", request([]))
    out = bf16.predict(x)
    assert out.dtype == torch.float32 and cosine(out, ref) > 0.95
    assert "bfloat16" in bf16.params_by_dtype and "float32" not in bf16.params_by_dtype
    # The loader's module is the reference: no mode may change it.
    assert next(classifier.module.parameters()).dtype == torch.float32


# --- Faster R-CNN --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def detector() -> LoadedModel:
    torch.manual_seed(0)
    # min/max_size: the detector resizes to the 160 px it is given, not up to its 320 px default
    # (a quarter of the pixels; the structure checked below does not depend on the size).
    det = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=91, min_size=160, max_size=160).eval()
    images = det.transform(list(structured_images(8, 160, seed=4)))[0].tensors
    recalibrate_bn(det.backbone, [images])
    return LoadedModel("frcnn", "fasterrcnn_mobilenet_v3_large_320_fpn", "detection", det,
                       (160, 160), 91)


@pytest.fixture(scope="module")
def detector_int8(detector):
    calib = [structured_images(2, 160, seed=s) for s in (5, 6)]
    return quantize(detector, "int8_static", request(calib))


def test_int8_static_detector_structure(detector, detector_int8):
    q = detector_int8
    out = q.predict(structured_images(2, 160, seed=7))
    assert isinstance(out, list) and len(out) == 2
    for d in out:
        assert set(d) == {"boxes", "scores", "labels"}
        assert d["boxes"].dtype == torch.float32 and d["boxes"].shape[1:] == (4,)
    int8 = q.int8_modules
    for part in ("backbone.body.", "backbone.fpn.", "rpn.head.", "roi_heads.box_head.",
                 "roi_heads.box_predictor."):
        assert any(n.startswith(part) for n in int8), part
    assert "rpn.head.cls_logits" in int8 and "roi_heads.box_head.fc6" in int8
    assert not q.float_modules
    assert "RoIAlign" in q.notes and "NMS" in q.notes
    fp32_size = serialized_size_bytes(detector.module)
    assert 1 - q.size_bytes / fp32_size > 0.5
    assert q.params_by_dtype["qint8"] > q.params_by_dtype["float32"]


@pytest.fixture(scope="module")
def r18_detector() -> LoadedModel:
    """A ResNet18-FPN Faster R-CNN: random MobileNetV3 features are too fragile for a fidelity
    check (plain FX x86 on its `features` alone gives cosine ~0.55), ResNet ones are not."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                   norm_layer=FrozenBatchNorm2d)
    det = FasterRCNN(backbone, num_classes=91, min_size=128, max_size=128).eval()
    for m in det.backbone.modules():  # trained-like frozen statistics, not identity ones
        if isinstance(m, FrozenBatchNorm2d):
            m.running_var.fill_(4.0)
    return LoadedModel("r18frcnn", "fasterrcnn_resnet18_fpn", "detection", det, (128, 128), 91)


def test_int8_static_detector_close_to_fp32_and_keep_float(r18_detector):
    keep = ["roi_heads.box_predictor", "backbone.body.layer1*"]
    q = quantize(r18_detector, "int8_static",
                 request([structured_images(4, 128, seed=5)], keep_float=keep))
    det = r18_detector.module
    images = det.transform(list(structured_images(2, 128, seed=8)))[0].tensors
    with torch.no_grad():
        ref = det.backbone(images)
        out = q.module.backbone(images)
    assert list(out) == list(ref)
    for key in ref:
        assert ref[key].abs().max() > 1e-3  # live features, not a vanished random net
        assert cosine(out[key], ref[key]) > 0.95, key
    # FrozenBatchNorm2d was turned into BatchNorm2d and fused: no norm layer is left.
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in q.module.modules())
    assert {"roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"} <= set(
        q.float_modules)
    assert isinstance(q.module.roi_heads.box_predictor.cls_score, nn.Linear)
    assert "backbone.body.layer1.0.conv1" in q.float_modules
    assert not any(n.startswith(("roi_heads.box_predictor", "backbone.body.layer1."))
                   for n in q.int8_modules)
    assert {"backbone.body.layer2.0.conv1", "roi_heads.box_head.fc6"} <= set(q.int8_modules)
    assert "roi_heads.box_predictor kept float" in q.notes
    assert len(q.predict(structured_images(1, 128, seed=7))) == 1


def test_bf16_detector_runs_on_cpu(detector):
    q = quantize(detector, "bf16", request([]))
    out = q.predict(structured_images(1, 160, seed=7))
    assert out[0]["boxes"].dtype == torch.float32
    assert "bfloat16" in q.params_by_dtype and "NMS" in q.notes


# --- pieces ------------------------------------------------------------------------------

def test_frozen_bn_to_bn_keeps_outputs():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d).eval()
    for m in net.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
    x = structured_images(2, 64, seed=9)
    with torch.no_grad():
        ref = net(x)
        frozen_bn_to_bn(net)
        out = net(x)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_percentile_observer_clips_outliers():
    obs = PercentileObserver(percentile=99.9, reduce_range=True)
    x = torch.rand(100_000)
    x[0] = 1000.0
    obs(x)
    scale, _ = obs.calculate_qparams()
    # minmax would give 1000/127; the percentile range ends near 1.
    assert scale.item() < 20 / 127


def test_keep_float_patterns_and_counts():
    assert matches_keep_float("roi_heads.box_predictor.cls_score", ["roi_heads.box_predictor"])
    assert matches_keep_float("backbone.body.layer1.0.conv1", ["backbone.body.layer1*"])
    assert not matches_keep_float("backbone.body.layer2.0.conv1", ["backbone.body.layer1*"])
    assert not matches_keep_float("rpn.head", ["roi_heads*"])
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert params_by_dtype(net) == {"float32": 4 * 27 + 4 + 4 * 4, "int64": 1}
    assert serialized_size_bytes(net) > (4 * 27 + 20) * 4


def test_registry_modes_and_devices():
    names = modes.mode_names()
    assert {"fp32", "fp16", "bf16", "int8_dynamic", "int8_static"} <= set(names)
    assert set(registry.handlers()) == set(names)
    assert modes.mode_device_problem("fp16", "cpu") is not None
    assert modes.mode_device_problem("fp16", "cuda") is None
    assert modes.mode_device_problem("int8_static", "cuda") is not None
    assert modes.mode_device_problem("bf16", "cpu") is None
    assert modes.get_mode("int8_static").needs_calibration
    assert not modes.get_mode("fp32").needs_calibration


@pytest.mark.parametrize("aligned", [False, True])
def test_fast_roi_align_matches_torchvision(aligned):
    from collections import OrderedDict

    from torchvision.ops import MultiScaleRoIAlign, roi_align

    from qbench.quantize.fast_roi_align import FastMultiScaleRoIAlign, permute_fc6

    g = torch.Generator().manual_seed(0)
    size, n = 160, 2
    feats = OrderedDict((str(i), torch.randn(n, 8, size // 2 ** (i + 2), size // 2 ** (i + 2),
                                             generator=g)) for i in range(4))
    boxes = []
    for _ in range(n):  # boxes off the image edges, sub-pixel and large ones included
        xy = torch.rand(60, 2, generator=g) * (size + 20) - 10
        boxes.append(torch.cat([xy, xy + torch.rand(60, 2, generator=g) ** 2 * 120 + 0.2], 1))
    shapes = [(size, size)] * n
    if aligned:  # one level: compare with the plain op, which takes `aligned`
        fast = FastMultiScaleRoIAlign(MultiScaleRoIAlign(["0"], 7, 2), flat=False, aligned=True)
        rois = torch.cat([torch.cat([torch.full((60, 1), float(i)), b], 1)
                          for i, b in enumerate(boxes)])
        ref = roi_align(feats["0"], rois, 7, spatial_scale=0.25, sampling_ratio=2, aligned=True)
    else:
        ref = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(feats, boxes, shapes)
        fast = FastMultiScaleRoIAlign(MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2), flat=False)
    out = fast(feats, boxes, shapes)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)
    # flat layout + permuted fc6 == torchvision layout + original fc6
    fc6 = nn.Linear(8 * 49, 16)
    expected = fc6(ref.flatten(1))
    fast.flat = True
    permute_fc6(fc6, 8, (7, 7))
    assert torch.allclose(fc6(fast(feats, boxes, shapes)), expected, atol=1e-4)
