"""The torch-free catalogue agrees with what the registry and torchvision really provide."""

from __future__ import annotations

import subprocess
import sys

import torchvision

from tests.helpers import REPO
from worker import catalogue
from worker.quantize import registry


def test_catalogue_modes_match_the_registry():
    registered = registry.modes()
    assert sorted(registered) == catalogue.mode_names()
    for name, info in registered.items():
        entry = catalogue.MODES[name]
        assert entry.devices == info.devices, name
        assert entry.sources == info.sources, name
        assert entry.needs_calibration == info.needs_calibration, name
    assert {n for n, e in catalogue.MODES.items() if e.reference} == {"fp32", "fp32_compiled", "ort_fp32"}


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
    from worker.models.yolo import build_yolo

    for arch in ("yolov8n", "yolo11n.yaml"):
        assert catalogue.arch_problem("yolo", arch) is None
        build_yolo(arch, 3)


def test_manifest_and_validate_import_no_torch():
    code = ("import sys, worker.manifest, worker.orchestrate, worker.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'torchvision', 'ultralytics') or m == 'worker.quantize.registry']; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
