"""The preprocessing a model gets when its manifest entry has no `preprocess` block.

torchvision classifiers: their weights' own transform (shorter-side resize, centre crop,
ImageNet mean/std, the weights' interpolation), read from torchvision's weight enums without
downloading anything. torchvision detectors normalise inside the model, so they get the image
stretched to the input size in [0, 1]. YOLO networks: letterbox with grey (114) borders, [0, 1]
RGB, as ultralytics feeds them. An ONNX file declares nothing: it still gets a [0, 1] stretched
input for timing and calibration, but its accuracy is not reported (`Resolved.trusted` False).
"""

from __future__ import annotations

from dataclasses import dataclass

from qbench.preprocess.spec import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec

UNDECLARED = ("no preprocess block for this ONNX file: its accuracy is not reported "
              "(declare preprocess in the manifest)")


@dataclass(frozen=True)
class Resolved:
    spec: PreprocessSpec
    origin: str  # where it came from, for the models row and the export card
    trusted: bool = True  # False: a guess; accuracy columns stay null

    def to_json(self) -> str:
        import json

        return json.dumps({**self.spec.model_dump(mode="json"), "origin": self.origin},
                          sort_keys=True)


def torchvision_classifier_spec(arch: str) -> PreprocessSpec:
    """The transform torchvision's DEFAULT weights of arch were trained and evaluated with."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        kw = dict(weights.transforms.keywords)
    except (ValueError, AttributeError, KeyError):  # an arch without published weights
        return PreprocessSpec(resize="shorter_side_crop", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    crop = kw.get("crop_size", 224)
    resize = kw.get("resize_size", 256)
    interp = getattr(kw.get("interpolation"), "value", "bilinear")
    return PreprocessSpec(
        resize="shorter_side_crop", crop_ratio=min(1.0, crop / resize),
        mean=tuple(kw.get("mean", IMAGENET_MEAN)), std=tuple(kw.get("std", IMAGENET_STD)),
        interpolation=interp if interp in ("bilinear", "nearest", "bicubic") else "bilinear",
    )


def for_model(declared: PreprocessSpec | None, loaded) -> Resolved:
    """The declared block, else the default of the loaded model's task kind for its arch
    (worker/models/kinds/; a LoadedModel, or anything with `kind` and `arch`)."""
    if declared is not None:
        return Resolved(declared, "manifest")
    return loaded.kind.default_preprocess(loaded.arch)
