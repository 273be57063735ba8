"""torchvision detection and classification models, built offline.

Builders are called with weights=None and weights_backbone=None: nothing is downloaded at run
time. Trained weights come from a local checkpoint (loaded with weights_only=True) or, for
arch "fixture", from the detector shipped with qbench.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD

from qbench import catalogue
from qbench.errors import ModelError
from qbench.models.base import LoadedModel
from qbench.models.kinds.classification import CLASSIFICATION
from qbench.models.kinds.detection import DETECTION

__all__ = ["ModelError", "load_torchvision", "load_checkpoint", "build_torchvision"]

DETECTOR_TYPES = (GeneralizedRCNN, RetinaNet, SSD, FCOS)


# The accepted names live in the torch-free catalogue, which manifest validation reads too.
CLASSIFICATION_ARCHS = catalogue.CLASSIFICATION_ARCHS
DETECTION_ARCHS = catalogue.DETECTION_ARCHS
UNSUPPORTED_DETECTION = catalogue.UNSUPPORTED_DETECTION
# SSDs resize every image to the size they were designed for, whatever the manifest says.
FIXED_INPUT = {"ssd300_vgg16": (300, 300), "ssdlite320_mobilenet_v3_large": (320, 320)}
# ONNX Runtime runs these exports until a pyramid level has no candidate above the score
# threshold: the traced decode then reshapes an empty tensor with -1 and ORT fails.
ORT_UNSUPPORTED = {
    "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn",
}


def classification_archs() -> list[str]:
    return sorted(CLASSIFICATION_ARCHS)


def known_archs() -> list[str]:
    return ["fixture", *DETECTION_ARCHS, *classification_archs()]


def check_arch(arch: str) -> None:
    problem = catalogue.torchvision_arch_problem(arch)
    if problem:
        raise ModelError(problem)


def load_checkpoint(module: nn.Module, path: Path) -> None:
    """Load a state_dict without unpickling arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"checkpoint {path}: file not found") from None
    except IsADirectoryError:
        raise ModelError(f"checkpoint {path}: is a folder, not a file") from None
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise ModelError(f"checkpoint {path}: cannot be loaded safely (corrupt or not a "
                             f"torch checkpoint: {str(exc).splitlines()[0][:120]})") from None
        # torch's own message advises weights_only=False, which would run the file's code.
        raise ModelError(f"checkpoint {path}: cannot be loaded safely: it holds pickled Python "
                         "objects besides tensors, which qbench never unpickles; save a "
                         "state_dict instead (torch.save(model.state_dict(), path))") from None
    except Exception as exc:  # truncation, not-a-checkpoint land here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"checkpoint {path}: cannot be loaded safely ({first[:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {path}: expected a state_dict, found {type(state).__name__}")
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"checkpoint {path}: does not match the model ({first[:200]})") from None


def build_torchvision(arch: str, num_classes: int | None, input_size: tuple[int, int]) -> nn.Module:
    check_arch(arch)
    if arch in FIXED_INPUT:
        if tuple(input_size) != FIXED_INPUT[arch]:
            h, w = FIXED_INPUT[arch]
            raise ModelError(f"arch {arch} resizes every image to {h}x{w}: set input_size "
                             f"[{h}, {w}] so the measured input is the declared one")
        return torchvision.models.get_model(arch, weights=None, weights_backbone=None,
                                            num_classes=num_classes or 91)
    if arch in DETECTION_ARCHS:
        side = min(input_size)
        # Resize inside the detector to the manifest's size, never up to 800 px behind the
        # user's back: the measured input is the declared input.
        return torchvision.models.get_model(
            arch, weights=None, weights_backbone=None, num_classes=num_classes or 91,
            min_size=side, max_size=max(input_size),
        )
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes or 1000)


def load_torchvision(model_id: str, arch: str, num_classes: int | None,
                     input_size: tuple[int, int], checkpoint: Path | None) -> LoadedModel:
    if arch == "fixture":
        return load_fixture(model_id, input_size, checkpoint)
    module = build_torchvision(arch, num_classes, input_size)
    if checkpoint is not None:
        load_checkpoint(module, checkpoint)
    module.eval()
    kind = DETECTION if isinstance(module, DETECTOR_TYPES) else CLASSIFICATION
    classes = num_classes or kind.default_classes
    return LoadedModel(
        model_id=model_id, arch=arch, task=kind.name, module=module, input_size=input_size,
        num_classes=classes, trained=checkpoint is not None,
    )


def load_fixture(model_id: str, input_size: tuple[int, int], checkpoint: Path | None) -> LoadedModel:
    """The small Faster R-CNN shipped with qbench, trained on `qbench data synth` scenes."""
    from qbench.evaluate.synth import CLASSES
    from qbench.models.fixture import build_fixture

    module = build_fixture(pretrained=checkpoint is None)
    if checkpoint is not None:
        load_checkpoint(module, checkpoint)
    module.eval()
    return LoadedModel(
        model_id=model_id, arch="fixture", task=DETECTION.name, module=module,
        input_size=input_size, num_classes=len(CLASSES) + 1,
        category_names=list(CLASSES), trained=True,
    )
