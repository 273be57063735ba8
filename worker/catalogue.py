"""The model architectures qbench accepts, as plain data (the modes are in worker/modes.py).

Manifest validation reads this list instead of importing torch, torchvision or ultralytics, so
`qbench validate`, `status` and `submit` start fast. Tests hold it against
`torchvision.models.list_models()`; a torchvision version with new builders means new names here.
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

# torchvision builders, called with weights=None (torchvision 0.29's list_models()).
DETECTION_ARCHS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    # Single-stage: int8_static quantizes backbone and head submodule by submodule.
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
)
UNSUPPORTED_DETECTION = {
    "maskrcnn_resnet50_fpn": "Mask R-CNN's mask head and mask paste-back are not handled by "
                             "the int8 detector path (only boxes are benchmarked)",
    "maskrcnn_resnet50_fpn_v2": "Mask R-CNN's mask head and mask paste-back are not handled by "
                                "the int8 detector path (only boxes are benchmarked)",
    "keypointrcnn_resnet50_fpn": "Keypoint R-CNN's keypoint head is not handled by the int8 "
                                 "detector path (only boxes are benchmarked)",
}
CLASSIFICATION_ARCHS = (
    "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny",
    "densenet121", "densenet161", "densenet169", "densenet201",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
    "efficientnet_v2_l", "efficientnet_v2_m", "efficientnet_v2_s", "googlenet", "inception_v3",
    "maxvit_t", "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3", "mobilenet_v2",
    "mobilenet_v3_large", "mobilenet_v3_small",
    "regnet_x_16gf", "regnet_x_1_6gf", "regnet_x_32gf", "regnet_x_3_2gf", "regnet_x_400mf",
    "regnet_x_800mf", "regnet_x_8gf", "regnet_y_128gf", "regnet_y_16gf", "regnet_y_1_6gf",
    "regnet_y_32gf", "regnet_y_3_2gf", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_8gf",
    "resnet101", "resnet152", "resnet18", "resnet34", "resnet50", "resnext101_32x8d",
    "resnext101_64x4d", "resnext50_32x4d", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "squeezenet1_0", "squeezenet1_1",
    "swin_b", "swin_s", "swin_t", "swin_v2_b", "swin_v2_s", "swin_v2_t",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "vit_b_16", "vit_b_32", "vit_h_14", "vit_l_16", "vit_l_32",
    "wide_resnet101_2", "wide_resnet50_2",
)
FIXTURE_ARCH = "fixture"  # the small Faster R-CNN shipped with qbench
FIXTURE_CLASSES = ("circle", "square", "triangle", "cross")  # its categories, ids 1..4


def torchvision_task(arch: str) -> str | None:
    """detection | classification for an accepted torchvision arch, None otherwise."""
    if arch == FIXTURE_ARCH or arch in DETECTION_ARCHS:
        return "detection"
    if arch in CLASSIFICATION_ARCHS:
        return "classification"
    return None


def torchvision_arch_problem(arch: str) -> str | None:
    if arch in UNSUPPORTED_DETECTION:
        return f"arch {arch!r} is not supported: {UNSUPPORTED_DETECTION[arch]}"
    if torchvision_task(arch) is None:
        return (f"unknown arch {arch!r}; use fixture, a detection builder "
                f"({', '.join(DETECTION_ARCHS)}) or a torchvision classifier (e.g. resnet18)")
    return None


YOLO_EXTRA = "pip install 'qbench[yolo]'"
_YOLO_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_YOLO_TASK_VARIANTS = ("-cls", "-seg", "-pose", "-obb")


@lru_cache(maxsize=1)
def _ultralytics_yamls() -> frozenset[str] | None:
    """Names of the model YAMLs bundled with ultralytics (found on disk, never imported)."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return None
    cfg = Path(next(iter(spec.submodule_search_locations))) / "cfg" / "models"
    return frozenset(p.name for p in cfg.rglob("*.yaml"))


def yolo_arch_problem(arch: str) -> str | None:
    """The names the YOLO loader builds: a bundled detection YAML, scale letter optional."""
    yamls = _ultralytics_yamls()
    if yamls is None:
        return f"source yolo needs the optional ultralytics package (AGPL-3.0): {YOLO_EXTRA}"
    name = arch if arch.endswith((".yaml", ".yml")) else f"{arch}.yaml"
    hint = ("use a bundled ultralytics detection YAML such as yolov8n.yaml or yolo11n.yaml "
            "(classify/segment/pose/obb variants are not supported)")
    if not _YOLO_NAME.match(name) or any(t in name for t in _YOLO_TASK_VARIANTS):
        return f"arch {arch!r}: {hint}"
    stem = Path(name).stem
    # ultralytics reads yolov8n.yaml as yolov8.yaml at scale n (nn/tasks.py yaml_model_load).
    unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", stem)
    if f"{stem}.yaml" not in yamls and f"{unified}.yaml" not in yamls:
        return f"arch {arch!r}: no such ultralytics model YAML; {hint}"
    return None


def arch_problem(source: str, arch: str | None) -> str | None:
    """None when the loader of this source accepts the arch (statically), else why not."""
    if source == "torchvision" and arch is not None:
        return torchvision_arch_problem(arch)
    if source == "yolo" and arch is not None:
        return yolo_arch_problem(arch)
    return None
