"""calibration.method mean_minmax on every runtime: each activation's range is the mean of the
calibration feeds' own mins and maxes, so one bright image moves it by 1/n, where minmax
takes that image's extremes whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qbench.manifest import CalibrationSpec
from qbench.quantize.int8_static import MeanMinMaxObserver
from qbench.quantize.ort_int8 import prepare_ort_int8, quantize_prepared
from qbench.quantize.registry import QuantizeRequest, quantize
from tests.test_openvino import small_net

# four calibration batches of one image; the first is three times as bright
_SEEDED = torch.Generator().manual_seed(0)
BATCHES = [torch.rand(1, 3, 16, 16, generator=_SEEDED) * (3.0 if i == 0 else 1.0)
           for i in range(4)]
MEAN_MAX = float(np.mean([b.max() for b in BATCHES]))
MEAN_MIN = float(np.mean([b.min() for b in BATCHES]))
GLOBAL_MAX = float(max(b.max() for b in BATCHES))


def request(tmp_path, method: str) -> QuantizeRequest:
    return QuantizeRequest(device="cpu", calibration=CalibrationSpec(images=4, method=method),
                           keep_float=[], calibration_batches=lambda: iter(BATCHES),
                           work_dir=str(tmp_path))


def test_observer_averages_each_batchs_extremes():
    observer = MeanMinMaxObserver()
    for batch in BATCHES:
        observer(batch)
    assert observer.max_val.item() == pytest.approx(MEAN_MAX, rel=1e-5)
    assert observer.min_val.item() == pytest.approx(MEAN_MIN, rel=1e-5, abs=1e-6)
    assert observer.max_val.item() < GLOBAL_MAX * 0.8


def test_int8_static_takes_it(tmp_path):
    q = quantize(small_net(), "int8_static", request(tmp_path, "mean_minmax"))
    assert "calibration: mean_minmax" in q.notes
    assert q.int8_modules


EXPECTED_MAX = {"mean_minmax": MEAN_MAX, "minmax": GLOBAL_MAX}


@pytest.mark.parametrize("method", ["mean_minmax", "minmax"])
def test_ort_input_range(tmp_path, method):
    expected_max = EXPECTED_MAX[method]
    prep = prepare_ort_int8(small_net(), request(tmp_path, method))
    quantize_prepared(small_net(), request(tmp_path, method), prep, tmp_path / "q.onnx")
    ranges = json.loads(prep.ranges_file.read_text())["data"]
    highest = ranges[input_name(prep)]["highest"]["data"][0]
    assert highest == pytest.approx(expected_max, rel=1e-5)


def input_name(prep) -> str:
    import onnx

    return onnx.load(str(prep.path)).graph.input[0].name


@pytest.mark.parametrize("method", ["mean_minmax", "minmax"])
def test_openvino_input_range(tmp_path, method):
    expected_max = EXPECTED_MAX[method]
    from qbench.backends.openvino.convert import convert
    from qbench.quantize.ov_int8 import quantize_with_nncf

    loaded = small_net()
    converted = convert(loaded, str(tmp_path))
    model, notes = quantize_with_nncf(loaded, converted, request(tmp_path, method))
    first = next(op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize")
    high = first.input_value(2).get_node().get_data()
    # NNCF's symmetric preset: the input's range is [-high, high] or [0, high]
    assert float(high.max()) == pytest.approx(expected_max, rel=1e-3)
    assert any(method in note for note in notes)
