"""Inspection: difference metrics on known cases, layer pairing (classifier, Faster R-CNN, bf16,
int8_dynamic, ONNX QDQ), the pictures, and layer sensitivity / mixed precision."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from PIL import Image
from torch import nn

from qbench.backends.onnxruntime.backend import OnnxRuntimeBackend
from qbench.backends.torch.backend import TorchBackend
from qbench.backends.torch.runtime import make_predict
from qbench.evaluate.scores import detection_quality
from qbench.evaluate.synth import synth_images
from qbench.inspect import inspect_onnx, inspect_unit
from qbench.inspect.capture import compare_torch, named_layers
from qbench.inspect.metrics import LayerStats, layer_metrics
from qbench.inspect.tradeoff_plot import plot_tradeoff
from qbench.manifest import CalibrationSpec
from qbench.models.base import LoadedModel
from qbench.models.fixture import WEIGHTS, build_fixture
from qbench.quantize.bf16 import quantize_bf16
from qbench.quantize.common import serialized_size_bytes
from qbench.quantize.fp32 import quantize_fp32
from qbench.quantize.int8_dynamic import quantize_int8_dynamic
from qbench.quantize.int8_static import quantize_int8_static
from qbench.quantize.mixed_search import (
    candidate_groups,
    mixed_precision_search,
    rank_sensitivity,
)
from qbench.quantize.registry import Quantized, QuantizeRequest
from qbench.results import LAYERS, to_table

ROW_COLUMNS = {"layer", "layer_index", "kind", "shape", "abs_diff_mean", "abs_diff_max",
               "rel_diff_mean", "cosine", "sqnr_db"}
PICTURES = {"first_conv_diff.png", "conv_grid_abs.png", "conv_grid_rel.png", "hexbin_layers.png",
            "hexbin_outputs.png", "sqnr_by_layer.png"}


def request(batches: list[torch.Tensor], keep_float=()) -> QuantizeRequest:
    return QuantizeRequest(device="cpu", calibration=CalibrationSpec(images=4, method="minmax"),
                           keep_float=list(keep_float), calibration_batches=lambda: iter(batches),
                           work_dir="/nonexistent")


def as_quantized(module: nn.Module, task: str = "classification") -> Quantized:
    """A float module presented as a 'quantized' model, for known-answer cases."""
    return Quantized(predict=make_predict(task, module, "cpu"), backend="test",
                     size_bytes=serialized_size_bytes(module), params_by_dtype={},
                     runtime=TorchBackend(module, "test"))


def assert_valid_png(path: Path, min_bytes: int = 15_000) -> None:
    assert path.is_file() and path.stat().st_size > min_bytes, path
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint32)
    assert arr.shape[0] > 300 and arr.shape[1] > 300
    colours = np.unique((arr[..., 0] << 16) | (arr[..., 1] << 8) | arr[..., 2])
    assert colours.size > 50, f"{path.name} is nearly one colour"


@pytest.fixture(scope="module")
def classifier() -> LoadedModel:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    return LoadedModel("r18", "resnet18", "classification", net, (64, 64), 10)


@pytest.fixture(scope="module")
def detector() -> LoadedModel:
    torch.manual_seed(0)
    det = build_fixture(pretrained=WEIGHTS.is_file())
    return LoadedModel("fixture", "fixture", "detection", det, (256, 256), 5,
                       trained=WEIGHTS.is_file())


# --- metrics --------------------------------------------------------------------------------

def test_metrics_known_answers():
    x = torch.full((100,), 2.0)
    same = layer_metrics(x, x.clone())
    assert same == {"abs_diff_mean": 0.0, "abs_diff_max": 0.0, "rel_diff_mean": 0.0,
                    "cosine": 1.0, "sqnr_db": math.inf}
    m = layer_metrics(x, x + 0.2)
    assert m["abs_diff_mean"] == pytest.approx(0.2)
    assert m["abs_diff_max"] == pytest.approx(0.2)
    assert m["sqnr_db"] == pytest.approx(20.0)  # 10 log10(4 / 0.04)
    assert m["rel_diff_mean"] == pytest.approx(0.2 / (2.0 + 0.1 * 2.0))  # eps = 0.1 mean |x|
    assert m["cosine"] == pytest.approx(1.0)
    assert layer_metrics(x, -x)["cosine"] == pytest.approx(-1.0)
    zeros = torch.zeros(10)
    assert layer_metrics(zeros, zeros)["sqnr_db"] == math.inf
    assert layer_metrics(zeros, zeros + 1)["sqnr_db"] == -math.inf
    # Sums accumulate over calls: two halves give the metrics of the whole.
    a, b = torch.randn(2, 500, generator=torch.Generator().manual_seed(1))
    stats = LayerStats()
    stats.update(a[:250], b[:250])
    stats.update(a[250:], b[250:])
    whole = layer_metrics(a, b)
    for key in ("abs_diff_mean", "abs_diff_max", "cosine", "sqnr_db"):
        assert stats.result()[key] == pytest.approx(whole[key])


# --- pairing and known answers -------------------------------------------------------------

def test_identical_detector_gives_zero_difference(detector):
    # fp32 "quantization" shares the loader's module: hooks of both sides on the same modules.
    q = quantize_fp32(detector, request([]))
    images = synth_images(1, (256, 256), seed=3)
    comp = compare_torch(detector.module, q.module, q.predict, "detection", images, "all")
    assert len(comp.layers) == len(named_layers(detector.module)) and not comp.skipped
    for row in comp.rows():
        assert row["abs_diff_max"] == 0.0 and row["sqnr_db"] == math.inf, row["layer"]
        assert row["cosine"] == 1.0


def test_planted_error_is_where_sqnr_jumps(classifier):
    noisy = copy.deepcopy(classifier.module)
    planted = "layer3.0.conv1"
    with torch.no_grad():
        w = noisy.get_submodule(planted).weight
        w.add_(0.5 * w.std() * torch.randn_like(w))
    images = synth_images(2, (64, 64), seed=5)
    q = as_quantized(noisy)
    rows = compare_torch(classifier.module, noisy, q.predict, "classification", images, "all").rows()
    names = [r["layer"] for r in rows]
    k = names.index(planted)
    assert all(r["sqnr_db"] == math.inf for r in rows[:k])  # untouched layers before it
    assert math.isfinite(rows[k]["sqnr_db"])  # the first layer that differs is the planted one
    assert rows[k]["sqnr_db"] < 20


# --- int8_static classifier: rows and pictures -----------------------------------------------

@pytest.fixture(scope="module")
def classifier_inspection(classifier, tmp_path_factory):
    calib = [synth_images(4, (64, 64), seed=1)]
    q = quantize_int8_static(classifier, request(calib))
    out = tmp_path_factory.mktemp("r18_int8")
    return inspect_unit(classifier, q, synth_images(2, (64, 64), seed=2), "all", out,
                        label="int8_static")


def test_int8_static_classifier_rows(classifier, classifier_inspection):
    rows, _ = classifier_inspection
    expected = [n for n, m in classifier.module.named_modules()
                if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [r["layer"] for r in rows] == expected  # fp32 names, network order
    assert [r["layer_index"] for r in rows] == list(range(len(rows)))
    assert {r["kind"] for r in rows} == {"conv", "linear"}
    for r in rows:
        assert set(r) == ROW_COLUMNS
        assert 5 < r["sqnr_db"] < 60 and 0.9 < r["cosine"] < 1.0, r
        assert r["abs_diff_max"] >= r["abs_diff_mean"] > 0
    assert set(ROW_COLUMNS) <= set(LAYERS.names)
    assert to_table("layers", rows).num_rows == len(rows)


def test_pictures_are_valid_pngs(classifier_inspection):
    _, paths = classifier_inspection
    assert {p.name for p in paths} == PICTURES
    for p in paths:
        assert_valid_png(p)


def test_int8_dynamic_pairs_trivially(classifier):
    q = quantize_int8_dynamic(classifier, request([]))
    images = synth_images(2, (64, 64), seed=2)
    lin = compare_torch(classifier.module, q.module, q.predict, "classification", images, "linear")
    assert [r["layer"] for r in lin.rows()] == ["fc"]
    assert math.isfinite(lin.rows()[0]["sqnr_db"])
    conv = compare_torch(classifier.module, q.module, q.predict, "classification", images, "conv")
    assert conv.rows() and all(r["sqnr_db"] == math.inf for r in conv.rows())  # convs stay float


# --- Faster R-CNN -----------------------------------------------------------------------------

def test_detector_int8_static_rows_in_network_order(detector, tmp_path):
    # Kept float: a candidate group inside the backbone and a whole part (rpn.head): both
    # must still pair, and the groups candidate_groups() proposes must be keep_float patterns.
    keep = ["backbone.fpn.inner_blocks", "rpn.head"]
    assert keep[0] in candidate_groups(detector)
    calib = [synth_images(2, (256, 256), seed=1)]
    q = quantize_int8_static(detector, request(calib, keep_float=keep))
    assert any(n.startswith("backbone.fpn.inner_blocks") for n in q.float_modules)
    assert not any(n.startswith(("backbone.fpn.inner_blocks", "rpn.head")) for n in q.int8_modules)
    rows, paths = inspect_unit(detector, q, synth_images(1, (256, 256), seed=2), "all", tmp_path,
                               label="int8_static")
    fp32_names = {n for n, _ in detector.module.named_modules()}
    assert all(r["layer"] in fp32_names for r in rows)  # named as in the fp32 detector
    parts = ["backbone.body", "backbone.fpn", "rpn.head", "roi_heads.box_head",
             "roi_heads.box_predictor"]
    first = [next(r["layer_index"] for r in rows if r["layer"].startswith(p + ".")) for p in parts]
    last = [max(r["layer_index"] for r in rows if r["layer"].startswith(p + ".")) for p in parts]
    assert first == sorted(first) and all(a < b for a, b in zip(last, first[1:], strict=False))
    assert len(rows) == len(named_layers(detector.module))
    for r in rows:
        assert math.isfinite(r["sqnr_db"]) and r["sqnr_db"] > 5, r
    # The box head saw the fp32 proposals: one row per proposal, as in fp32.
    fc6 = next(r for r in rows if r["layer"] == "roi_heads.box_head.fc6")
    assert fc6["shape"][1] == detector.module.roi_heads.box_head.fc6.out_features
    assert {p.name for p in paths} == PICTURES
    assert_valid_png(next(p for p in paths if p.name == "first_conv_diff.png"))


def test_bf16_detector_pairs_through_castio(detector):
    q = quantize_bf16(detector, request([]))
    images = synth_images(1, (256, 256), seed=4)
    rows = compare_torch(detector.module, q.module, q.predict, "detection", images, "all").rows()
    assert {r["layer"] for r in rows} == set(named_layers(detector.module))
    # bf16 keeps ~8 bits of mantissa: ~40 dB. A conv followed by an in-place ReLU must be
    # compared before the ReLU on both sides (the fp32 output is copied before it runs).
    for r in rows:
        assert r["sqnr_db"] > 30, r


# --- ONNX -----------------------------------------------------------------------------------

class _Reader(CalibrationDataReader):
    def __init__(self, images: torch.Tensor) -> None:
        self.items = iter([{"input": im.numpy()} for im in images.split(1)])

    def get_next(self):
        return next(self.items, None)


def test_onnx_qdq_end_to_end(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()
    fp32, quant = tmp_path / "m.onnx", tmp_path / "m_int8.onnx"
    torch.onnx.export(net, (torch.rand(1, 3, 48, 48),), str(fp32), dynamo=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}})
    quantize_static(str(fp32), str(quant), _Reader(synth_images(4, (48, 48), seed=1)),
                    quant_format=QuantFormat.QDQ, per_channel=True)
    images = synth_images(2, (48, 48), seed=2)
    rows, paths = inspect_onnx(fp32, quant, images, "all", tmp_path / "pics", label="ort_int8")
    assert [(r["kind"], r["layer_index"]) for r in rows] == [
        ("conv", 0), ("conv", 1), ("conv", 2), ("linear", 3)]
    assert rows[0]["shape"] == [1, 8, 48, 48]
    for r in rows:
        # A low SQNR here would mean a pre-ReLU tensor compared with a post-ReLU one.
        assert 25 < r["sqnr_db"] < math.inf and set(r) == ROW_COLUMNS, r
    assert {p.name for p in paths} == PICTURES
    assert_valid_png(next(p for p in paths if p.name == "sqnr_by_layer.png"))
    same, _ = inspect_onnx(fp32, fp32, images, "conv", tmp_path / "same", label="fp32")
    assert len(same) == 3 and all(r["sqnr_db"] == math.inf for r in same)
    # inspect_unit takes the ONNX route for an ORT session: rows named as the torch modules
    # the nodes were exported from, final outputs from the fp32 torch model vs the session.
    sess = ort.InferenceSession(str(quant))
    run = lambda b: torch.from_numpy(sess.run(None, {"input": b.numpy()})[0])  # noqa: E731
    session = Quantized(predict=run, backend="onnxruntime", size_bytes=0, params_by_dtype={},
                        runtime=OnnxRuntimeBackend(quant))
    loaded = LoadedModel("m", "m", "classification", net, (48, 48), 5)
    with pytest.raises(ValueError, match="reference_path"):
        inspect_unit(loaded, session, images, "conv", tmp_path / "x")
    session.runtime = OnnxRuntimeBackend(quant, reference_path=fp32)
    rows, _ = inspect_unit(loaded, session, images, "all", tmp_path / "route")
    assert [r["layer"] for r in rows] == ["0", "3", "5", "8"]


# --- sensitivity and mixed precision ---------------------------------------------------------

class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(torch.relu(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


def test_sensitivity_ranks_planted_group_first(tmp_path):
    """A fake quantizer adds weight noise to every group not kept float; layer2 gets the most."""
    torch.manual_seed(0)
    loaded = LoadedModel("small", "small", "classification", SmallNet().eval(), (64, 64), 10)
    noise = {"conv1": 0.02, "layer1": 0.02, "layer2": 0.6, "layer3": 0.05, "fc": 0.02}
    images = synth_images(4, (64, 64), seed=6)
    with torch.no_grad():
        reference = loaded.module(images)

    def fake_quantize(keep: list[str]) -> Quantized:
        net = copy.deepcopy(loaded.module)
        with torch.no_grad():
            for i, (name, m) in enumerate(net.named_modules()):
                group = name.split(".")[0]
                if isinstance(m, (nn.Conv2d, nn.Linear)) and group not in keep:
                    g = torch.Generator().manual_seed(i)  # a layer's noise never changes
                    w = m.weight
                    w.add_(noise[group] * w.std() * torch.randn(w.shape, generator=g))
        return as_quantized(net)

    def score(q: Quantized) -> float:  # SQNR of the logits: continuous and sensitive
        return layer_metrics(reference, q.predict(images))["sqnr_db"]

    assert candidate_groups(loaded) == list(noise)
    sens = rank_sensitivity(loaded, fake_quantize, None, score)
    assert sens.ranking[0].group == "layer2" and sens.ranking[0].gain > 0
    target = sens.ranking[0].score - 1e-6
    search = mixed_precision_search(sens, target)
    assert search.met and search.float_groups == ["layer2"]
    assert [len(t.float_groups) for t in search.path] == [0, 1]
    unreachable = mixed_precision_search(sens, math.inf, max_float=2)
    assert not unreachable.met and 1 <= len(unreachable.float_groups) <= 2
    assert len(sens.evaluate.trials) <= 1 + len(noise) + 1  # cached: nothing quantized twice
    path = plot_tradeoff(sens, search, tmp_path / "tradeoff.png", "logit SQNR vs fp32 (dB)")
    assert_valid_png(path, min_bytes=10_000)


def test_greedy_search_skips_groups_that_do_not_help(classifier):
    scores = {(): 0.5, ("A",): 0.8, ("B",): 0.7, ("C",): 0.6, ("A", "B"): 0.75,
              ("A", "C"): 0.9, ("A", "C", "B"): 0.95}
    quantized: list[tuple[str, ...]] = []

    def fake_quantize(keep: list[str]) -> Quantized:
        quantized.append(tuple(keep))
        q = as_quantized(nn.Identity())
        q.notes = ",".join(keep)
        return q

    def score(q: Quantized) -> float:
        return scores[tuple(g for g in q.notes.split(",") if g)]

    sens = rank_sensitivity(classifier, fake_quantize, ["C", "B", "A"], score)
    assert [s.group for s in sens.ranking] == ["A", "B", "C"]
    assert [s.gain for s in sens.ranking] == pytest.approx([0.3, 0.2, 0.1])
    search = mixed_precision_search(sens, 0.85)
    assert search.met and search.float_groups == ["A", "C"]  # B made it worse: left quantized
    assert [t.score for t in search.path] == [0.5, 0.8, 0.9]
    assert len(quantized) == len(set(quantized)) == 6  # 1 + 3 singles + {A,B} + {A,C}


def test_detection_quality_known_answers():
    perfect = {"fp32_detections": 3, "quant_detections": 3, "matched": 3, "mean_iou": 1.0}
    assert detection_quality(perfect) == 1.0
    # 2 matches at IoU 0.8, one fp32 box missed: 2 * 1.6 / (3 + 2)
    assert detection_quality({"fp32_detections": 3, "quant_detections": 2, "matched": 2,
                              "mean_iou": 0.8}) == pytest.approx(0.64)
    assert detection_quality({"fp32_detections": 0, "quant_detections": 0, "matched": 0,
                              "mean_iou": math.nan}) == 1.0
    assert detection_quality({"fp32_detections": 2, "quant_detections": 1, "matched": 0,
                              "mean_iou": math.nan}) == 0.0


def test_sqnr_plot_legend_names_underscore_parts(tmp_path):
    """Module names that start with "_" (EfficientNet's) still get their legend entries."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from qbench.inspect import plots

    ref = nn.Sequential()
    ref.add_module("_stem", nn.Conv2d(3, 4, 3))
    ref.add_module("_head", nn.Conv2d(4, 4, 1))
    ref.eval()
    noisy = copy.deepcopy(ref)
    with torch.no_grad():
        noisy._head.weight.add_(0.1)
    comp = compare_torch(ref, noisy, noisy, "classification", synth_images(1, (64, 64), seed=1),
                         "conv")
    seen = []
    real_save = plots._save
    plots._save = lambda fig, path: (seen.extend(  # noqa: E731
        t.get_text() for t in fig.axes[0].get_legend().get_texts()), real_save(fig, path))
    try:
        assert plots.plot_sqnr(comp, tmp_path / "sqnr.png", "int8") is not None
    finally:
        plots._save = real_save
        plt.close("all")
    assert seen == ["_stem", "_head", "identical (SQNR = ∞)"]  # _stem is untouched
