"""calibration.bias_correction: each int8 conv/gemm's bias less the mean output offset that its
int8 weights cause, measured on the calibration feeds of the float model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import yaml
from onnx import numpy_helper
from torch import nn

from qbench.manifest import CalibrationSpec, ManifestError, expand, parse_manifest
from qbench.models.onnx_models import load_onnx
from qbench.pipeline import initial_model_row
from qbench.quantize.ort_bias_correction import _dequantized_weights
from qbench.quantize.registry import QuantizeRequest, quantize
from tests.test_quantize import structured_images


class Net(nn.Module):
    """A conv without padding, a depthwise conv without bias and a linear head: the three
    shapes of offset (dense, grouped, gemm), each exact for its float input's mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.dw = nn.Conv2d(8, 8, 3, groups=8, bias=False)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = F.relu(self.dw(F.relu(self.conv(x))))
        return self.fc(y.mean((2, 3)))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # wide weights: int8 rounding error that shows
        net.conv.weight.mul_(3)
        net.dw.weight.mul_(2)
    path = tmp_path_factory.mktemp("bc") / "net.onnx"
    torch.onnx.export(net, (torch.rand(1, 3, 32, 32),), str(path), input_names=["x"],
                      output_names=["y"], opset_version=17, dynamo=False,
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    return net, path, structured_images(8, 32, seed=4)


def _request(tmp_path, images, bias_correction, keep_float=()):
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = CalibrationSpec(images=len(images), method="minmax", bias_correction=bias_correction)
    return QuantizeRequest(device="cpu", calibration=spec, keep_float=list(keep_float),
                           calibration_batches=lambda: iter([images]), work_dir=str(tmp_path))


def _node(model: onnx.ModelProto, op: str, nth: int = 0) -> onnx.NodeProto:
    return [n for n in model.graph.node if n.op_type == op][nth]


def test_offsets_are_the_mean_output_shift_of_the_int8_weights(small, tmp_path):
    from qbench.quantize.ort_int8 import prepare_ort_int8

    net, path, images = small
    loaded = load_onnx("net", path, (32, 32))
    prep = prepare_ort_int8(loaded, _request(tmp_path, images, True))
    q = quantize(loaded, "ort_int8", _request(tmp_path / "q", images, True))
    int8 = onnx.load(q.runtime.model_path)
    dq = {k: torch.from_numpy(v).float() for k, v in _dequantized_weights(int8).items()}
    conv, dw, fc = _node(int8, "Conv").name, _node(int8, "Conv", 1).name, _node(int8, "Gemm").name
    assert set(prep.offsets) == {conv, dw, fc}
    with torch.no_grad():  # the float model's own inputs to each layer
        a = F.relu(net.conv(images))
        b = F.relu(net.dw(a))
        pooled = b.mean((2, 3))
        shifts = {
            conv: F.conv2d(images, dq[conv] - net.conv.weight).mean((0, 2, 3)),
            dw: F.conv2d(a, dq[dw] - net.dw.weight, groups=8).mean((0, 2, 3)),
            fc: (pooled @ (dq[fc] - net.fc.weight).T).mean(0),
        }
    for name, shift in shifts.items():
        assert shift.abs().max() > 1e-6  # there is an offset to correct
        np.testing.assert_allclose(prep.offsets[name], shift.double().numpy(), rtol=1e-3,
                                   atol=1e-8)


def _bias(model: onnx.ModelProto, node: onnx.NodeProto) -> np.ndarray:
    """A node's bias as the int8 file gives it back (int32 and its scale, or float)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    if node.input[2] in inits:
        return inits[node.input[2]]
    dq = producer[node.input[2]]
    return inits[dq.input[0]].astype(np.float64) * inits[dq.input[1]]


def test_int8_nodes_get_corrected_biases_and_float_nodes_keep_theirs(small, tmp_path):
    net, path, images = small
    loaded = load_onnx("net", path, (32, 32))
    float_graph = onnx.load(str(path))
    conv_name = _node(float_graph, "Conv").name
    plain = onnx.load(quantize(loaded, "ort_int8", _request(tmp_path / "a", images, False,
                                                            [conv_name])).runtime.model_path)
    q = quantize(loaded, "ort_int8", _request(tmp_path / "b", images, True, [conv_name]))
    corrected = onnx.load(q.runtime.model_path)
    assert "bias correction: 2 conv/gemm biases" in q.notes, q.notes
    # the conv kept float keeps its float bias: nothing to correct
    np.testing.assert_array_equal(_bias(corrected, _node(corrected, "Conv")),
                                  net.conv.bias.detach().numpy())
    # the depthwise conv had no bias: it gets one, the gemm's moves, and the weights are the same
    assert len(_node(plain, "Conv", 1).input) == 2
    assert np.abs(_bias(corrected, _node(corrected, "Conv", 1))).max() > 1e-4
    fc_plain, fc_corr = _bias(plain, _node(plain, "Gemm")), _bias(corrected, _node(corrected, "Gemm"))
    assert not np.allclose(fc_plain, fc_corr)
    assert _dequantized_weights(plain).keys() == _dequantized_weights(corrected).keys()
    for name, w in _dequantized_weights(plain).items():
        np.testing.assert_array_equal(w, _dequantized_weights(corrected)[name])


def _per_tensor_errors(tmp_path, mode, settings, wide):
    """{setting: the mean output error on held-out images over the finely rounded classes,
    and the notes} of `mode` with per-tensor weights, on Net with the `wide` layers' first
    channel made 30x wider: one scale per tensor rounds their other channels coarsely."""
    torch.manual_seed(1)
    net = Net().eval()
    with torch.no_grad():
        for name in wide:
            getattr(net, name).weight[0].mul_(30)
    path = tmp_path / "wide.onnx"
    torch.onnx.export(net, (torch.rand(1, 3, 32, 32),), str(path), input_names=["x"],
                      output_names=["y"], opset_version=17, dynamo=False,
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    loaded = load_onnx("wide", path, (32, 32))
    calib, held_out = structured_images(16, 32, seed=5), structured_images(16, 32, seed=6)
    with torch.no_grad():
        ref = net(held_out)
    errors, notes = {}, {}
    for setting in settings:
        req = _request(tmp_path / str(setting), calib, setting)
        req.calibration = req.calibration.model_copy(update={"per_channel": False})
        q = quantize(loaded, mode, req)
        err = q.predict(held_out)[0] - ref
        errors[setting], notes[setting] = err.mean(0)[1:].abs().mean().item(), q.notes
    return errors, notes


def test_bias_correction_removes_most_of_the_mean_error_of_per_tensor_weights(tmp_path):
    """With one scale per tensor, a conv with one wide channel rounds its other channels
    coarsely: their int8 weights move the outputs' mean, which the correction takes out."""
    errors, _ = _per_tensor_errors(tmp_path, "ort_int8", (False, True), ("conv", "dw", "fc"))
    assert errors[True] < 0.5 * errors[False], errors


def _manifest(modes, bias_correction=True) -> str:
    return yaml.safe_dump({
        "name": "bc", "models": [{"id": "m", "arch": "fixture"}],
        "quantization": {"modes": modes, "calibration": {"bias_correction": bias_correction}}})


def test_bias_correction_needs_a_mode_that_takes_it():
    with pytest.raises(ManifestError, match=r"quantization\.calibration\.bias_correction: none "
                                            r"of the modes takes it \(list ort_int8, "):
        parse_manifest(_manifest(["fp32", "int8_static"]))
    parse_manifest(_manifest(["fp32", "int8_static"], bias_correction=False))


def test_the_models_row_says_which_modes_corrected_their_biases(tmp_path):
    units = expand(parse_manifest(_manifest(["fp32", "int8_static", "ort_int8"])),
                   "bc-20261202T000000-abcdef", tmp_path)
    rows = {u.mode: initial_model_row(u, {}) for u in units}
    assert rows["ort_int8"]["calibration_bias_correction"] is True
    assert rows["int8_static"]["calibration_bias_correction"] is False
    assert rows["fp32"]["calibration_bias_correction"] is None
    assert rows["ort_int8"]["calibration_bias_correction_method"] == "fast"


def test_nncf_full_bias_correction_is_measured_through_the_int8_model(tmp_path):
    """bias_correction on ov_int8: "fast" and "full" both take out most of the mean output error
    of coarsely rounded per-tensor weights, and each row's notes say which NNCF ran."""
    # the depthwise conv has no bias for NNCF to correct: its channels stay evenly scaled
    errors, notes = _per_tensor_errors(tmp_path, "ov_int8", (False, "fast", "full"),
                                       ("conv", "fc"))
    assert errors["full"] < 0.5 * errors[False], errors
    assert errors["fast"] < 0.5 * errors[False], errors
    assert "NNCF bias correction through the int8 model" in notes["full"]
    assert "NNCF fast bias correction" in notes["fast"] and "bias correction" not in notes[False]


def test_full_bias_correction_is_for_the_openvino_modes(tmp_path):
    with pytest.raises(ManifestError, match=r"quantization\.calibration\.bias_correction: full "
                                            r"is NNCF's .*; ort_int8 corrects each layer alone"):
        parse_manifest(_manifest(["fp32", "ort_int8", "ov_int8"], bias_correction="full"))
    with pytest.raises(ManifestError, match=r"quantization\.calibration\.bias_correction"):
        parse_manifest(_manifest(["fp32", "ov_int8"], bias_correction="slow"))
    units = expand(parse_manifest(_manifest(["fp32", "int8_static", "ov_int8"], "full")),
                   "bc-20261207T000000-abcdef", tmp_path)
    rows = {u.mode: initial_model_row(u, {}) for u in units}
    assert rows["ov_int8"]["calibration_bias_correction"] is True
    assert rows["ov_int8"]["calibration_bias_correction_method"] == "full"
    assert rows["int8_static"]["calibration_bias_correction_method"] is None


def test_the_method_section_names_the_correction_a_row_ran():
    from qbench.report.method import CORRECTION_TEXT, _correction

    assert _correction({"calibration_bias_correction": False}) == ""
    # rows written before the method column corrected each layer alone
    assert _correction({"calibration_bias_correction": True}) == "fast"
    full = {"calibration_bias_correction": True, "calibration_bias_correction_method": "full"}
    assert "through the int8 model" in CORRECTION_TEXT[_correction(full)]
