"""YOLO (ultralytics, an optional AGPL extra): built from YAML, every mode on the network."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F

from qbench.manifest import CalibrationSpec
from qbench.models import ModelError
from qbench.models.yolo import EXTRA, load_yolo
from qbench.quantize.registry import QuantizeRequest, quantize
from tests.test_quantize import structured_images

SIZE = 128


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "ultralytics.nn.tasks", None)
    with pytest.raises(ModelError, match=r"pip install 'qbench\[yolo\]'"):
        load_yolo("y", "yolov8n.yaml", 3, (SIZE, SIZE), None)
    assert "qbench[yolo]" in EXTRA


needs_ultralytics = pytest.mark.skipif(
    importlib.util.find_spec("ultralytics") is None,
    reason="ultralytics (the optional yolo extra, AGPL-3.0) is not installed")


@pytest.fixture(scope="module")
def yolo():
    torch.manual_seed(0)
    return load_yolo("y", "yolov8n.yaml", 3, (SIZE, SIZE), None)


def request(tmp_path, batches=(), method="histogram"):
    spec = CalibrationSpec(images=max(1, sum(b.shape[0] for b in batches)), method=method)
    return QuantizeRequest(device="cpu", calibration=spec, keep_float=[],
                           calibration_batches=lambda: iter(batches), work_dir=str(tmp_path))


def branch_outputs(module: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detect's class branches before decoding: random weights give near-zero sigmoid scores,
    so the decoded output alone would hide any error."""
    seen: dict[str, torch.Tensor] = {}
    detect = module.model.model[-1]
    hooks = [branch.register_forward_hook(
        lambda _m, _a, out, i=i: seen.__setitem__(f"cv3.{i}", out.detach()))
        for i, branch in enumerate(detect.cv3)]
    with torch.inference_mode():
        module(x)
    for h in hooks:
        h.remove()
    return seen


@needs_ultralytics
def test_yolo_network_every_mode(yolo, tmp_path):
    x = structured_images(2, SIZE, seed=3)
    ref = yolo.predict(yolo.module, x)
    anchors = sum((SIZE // s) ** 2 for s in (8, 16, 32))
    assert ref.shape == (2, 4 + 3, anchors)
    calib = [structured_images(4, SIZE, seed=2)]
    ref_branches = branch_outputs(yolo.module, x)
    for mode in ("fp32", "int8_static", "bf16", "ort_fp32", "ort_int8", "ov_fp32", "ov_int8"):
        # NNCF's histogram search refuses a near-constant tensor of this network (ov_int8's
        # error says so): min/max ranges for it
        method = "minmax" if mode == "ov_int8" else "histogram"
        q = quantize(yolo, mode, request(tmp_path / mode, calib, method))
        out = q.predict(x)
        assert out.shape == ref.shape and out.dtype == torch.float32, mode
        assert "NMS excluded" in q.notes, mode
        # decoded boxes (anchor centres +- distances) agree to within a few pixels
        assert (out[:, :4] - ref[:, :4]).abs().mean() < 2.0, mode
        if mode == "int8_static":
            assert len(q.int8_modules) == 63 and q.float_modules == ["model.model.22.dfl.conv"]
            got = branch_outputs(q.module, x)
            for key, value in ref_branches.items():
                assert F.cosine_similarity(got[key].flatten(1), value.flatten(1)).mean() > 0.9
        if mode in ("ort_int8", "ov_int8"):
            assert q.params_by_dtype["int8"] > 3_000_000, mode
        if mode == "ov_int8":  # NNCF left the DFL decode conv float, as int8_static does
            assert q.runtime.executed_precision().get("int8", 0) >= 60


@needs_ultralytics
def test_yolo_converts_to_openvino_fresh_and_a_histogram_it_cannot_bin_is_one_line(tmp_path):
    """A fresh network (never called: its anchors not yet cached) converts to OpenVINO; NNCF's
    histogram search cannot bin one of its near-constant tensors, and says so in one line."""
    fresh = load_yolo("y", "yolov8n.yaml", 3, (SIZE, SIZE), None)
    with pytest.raises(ValueError, match=r"^quantization.calibration.method histogram: NNCF's "
                                         r"histogram search cannot bin .*use minmax or percentile$"):
        quantize(fresh, "ov_int8", request(tmp_path, [structured_images(4, SIZE, seed=2)]))


@needs_ultralytics
def test_yolo_checkpoints_load_safely(tmp_path):
    from qbench.models.yolo import build_yolo

    fresh = tmp_path / "fresh.pt"  # a state_dict of the network as ultralytics builds it
    torch.save(build_yolo("yolov8n.yaml", 3).state_dict(), fresh)
    assert load_yolo("y", "yolov8n.yaml", 3, (SIZE, SIZE), fresh).trained
    pickled = tmp_path / "pickled.pt"
    torch.save(build_yolo("yolov8n.yaml", 3), pickled)  # a whole object, as ultralytics saves
    with pytest.raises(ModelError, match="cannot be loaded safely"):
        load_yolo("y", "yolov8n.yaml", 3, (SIZE, SIZE), pickled)


@needs_ultralytics
def test_yolo_refusals():
    with pytest.raises(ModelError, match="divisible by 32"):
        load_yolo("y", "yolov8n.yaml", 3, (100, 128), None)
    with pytest.raises(ModelError, match="detection YAML"):
        load_yolo("y", "yolov8n-seg.yaml", 3, (SIZE, SIZE), None)
    with pytest.raises(ModelError, match="cannot build"):
        load_yolo("y", "nosuchmodel.yaml", 3, (SIZE, SIZE), None)


@needs_ultralytics
def test_yolo_int8_inspection_pairs_layers(tmp_path):
    from qbench.evaluate.synth import synth_images
    from qbench.inspect import inspect_unit

    model = load_yolo("y", "yolov8n.yaml", 3, (SIZE, SIZE), None)
    images = synth_images(4, (SIZE, SIZE), 1)
    q = quantize(model, "int8_static", QuantizeRequest(
        device="cpu", calibration=CalibrationSpec(images=4, method="minmax"), keep_float=[],
        calibration_batches=lambda: [images], work_dir=str(tmp_path)))
    rows, pictures = inspect_unit(model, q, images[:1], "conv", tmp_path / "inspect")
    names = [r["layer"] for r in sorted(rows, key=lambda r: r["layer_index"])]
    assert len(rows) > 40 and names[0] == "model.model.0.conv"
    assert len(pictures) >= 5 and all(p.stat().st_size > 1000 for p in pictures)
