"""The torch-free mode table and arch catalogue agree with the handlers, backends and torchvision."""

from __future__ import annotations

import subprocess
import sys

import torchvision

from qbench import backends, catalogue, modes
from qbench.quantize import registry
from tests.helpers import REPO


def test_every_mode_of_the_table_has_exactly_one_handler():
    assert sorted(registry.handlers()) == modes.mode_names()
    assert {n for n, e in modes.MODES.items() if e.reference} == {"fp32", "fp32_compiled", "ort_fp32"}
    assert modes.reference_modes() == ["fp32", "fp32_compiled", "ort_fp32"]


def test_each_mode_runs_where_its_backend_runs():
    for name, mode in modes.MODES.items():
        backend = backends.backend_class(mode.backend)
        assert mode.devices and mode.devices <= set(backend.devices()), name
        assert mode.sources == frozenset(backend.config.SOURCES), name
    assert modes.MODES["fp16"].devices == {"cuda"}
    assert modes.MODES["int8_static"].devices == {"cpu"}
    assert {n for n, e in modes.MODES.items() if e.bias_correction} == {"ort_int8", "ort_int8_mixed",
                                                                        "ov_int8", "ov_int8_mixed"}


def test_catalogue_archs_match_torchvision():
    classifiers = set(torchvision.models.list_models(module=torchvision.models))
    detectors = set(torchvision.models.list_models(module=torchvision.models.detection))
    assert set(catalogue.CLASSIFICATION_ARCHS) == classifiers
    # Every detection builder is either accepted or refused with a reason.
    assert set(catalogue.DETECTION_ARCHS) | set(catalogue.UNSUPPORTED_DETECTION) == detectors
    assert not set(catalogue.DETECTION_ARCHS) & set(catalogue.UNSUPPORTED_DETECTION)


def test_static_arch_checks():
    assert catalogue.arch_problem("torchvision", "resnet18") is None
    assert catalogue.arch_problem("torchvision", "fixture") is None
    assert "unknown arch 'no_such_net'" in catalogue.arch_problem("torchvision", "no_such_net")
    assert "not supported" in catalogue.arch_problem("torchvision", "maskrcnn_resnet50_fpn")
    assert catalogue.arch_problem("yolo", "yolov8n") is None
    assert catalogue.arch_problem("yolo", "yolo11n.yaml") is None
    assert catalogue.arch_problem("yolo", "yolov8n-seg") is not None
    assert "no such ultralytics model" in catalogue.arch_problem("yolo", "yolov99q")


def test_yolo_names_the_catalogue_accepts_are_built_by_the_loader():
    from qbench.models.yolo import build_yolo

    for arch in ("yolov8n", "yolo11n.yaml"):
        assert catalogue.arch_problem("yolo", arch) is None
        build_yolo(arch, 3)


def test_manifest_and_validate_import_no_torch():
    code = ("import sys, qbench.manifest, qbench.orchestrate, qbench.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'torchvision', 'ultralytics', 'openvino', 'nncf') "
            "or m == 'qbench.quantize.registry']; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
