"""fp32_compiled: torch.compile of the fp32 model gives fp32's outputs.

Compiling is this mode's expensive part (a resnet18 takes over a minute on 2 busy cores), so
the test compiles a few-layer 64 px classifier."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from qbench.manifest import CalibrationSpec
from qbench.models.base import LoadedModel
from qbench.quantize.registry import QuantizeRequest, get_mode, quantize


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_classifier_matches_eager_and_keeps_fp32_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    model = LoadedModel("tiny", "tiny", "classification", net, (64, 64), 10)
    request = QuantizeRequest(device="cpu", calibration=CalibrationSpec(), keep_float=[],
                              calibration_batches=lambda: iter(()), work_dir="/nonexistent")
    q = quantize(model, "fp32_compiled", request)
    fp32 = quantize(model, "fp32", request)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected = net(x)
    got = q.predict(x)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert q.backend == "torch-inductor" and "whole model compiled" in q.notes
    assert q.size_bytes == fp32.size_bytes and q.params_by_dtype == fp32.params_by_dtype
    assert q.module is net, "the artifact and inspection see the eager fp32 module"
    info = get_mode("fp32_compiled")
    assert info.devices == {"cpu", "cuda"} and not info.needs_calibration
