"""Folders of images: labelled (root/<class>/<image>) or not (images directly in root).

Labels are real only when the folder names map to the model's output indices: through the
model's `outputs.labels` (a list of names, or torchvision's ImageNet class names), or, without
one, when there are exactly as many class folders as the model has classes (a model trained on
an ImageFolder of the same classes, in sorted order). Otherwise the images are unlabelled:
good for calibration and agreement with fp32, and the report says "no labels".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qbench.evaluate.coco import IMAGE_SUFFIXES, DatasetError


@dataclass
class ImageFolder:
    paths: list[Path]
    labels: list[int] | None  # model output index per image; None: unlabelled
    note: str  # how labels were (or were not) assigned


def label_index(labels: str | list[str] | None) -> dict[str, int] | None:
    if labels is None:
        return None
    if labels == "imagenet":
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        return {name: i for i, name in enumerate(_IMAGENET_CATEGORIES)}
    return {name: i for i, name in enumerate(labels)}


def _images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def scan_image_folder(root: Path, labels: str | list[str] | None,
                      num_classes: int | None) -> ImageFolder:
    if not root.is_dir():
        raise DatasetError(f"{root}: image folder does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    loose = _images(root)
    if not classes:
        if not loose:
            raise DatasetError(f"{root}: no images (nor class sub-folders) in it")
        return ImageFolder(loose, None, "no labels: images not sorted into class folders")
    files = [(f, name) for name in classes for f in _images(root / name)]
    if not files:
        raise DatasetError(f"{root}: no images in the class sub-folders")
    index = label_index(labels)
    if index is not None:
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise DatasetError(f"{root}: class folder {unknown[0]!r} is not among the model's "
                               f"outputs.labels ({len(unknown)} folder(s) unmatched)")
        return ImageFolder([f for f, _ in files], [index[c] for _, c in files],
                           "labels: folder names matched to outputs.labels")
    if num_classes == len(classes):
        order = {c: i for i, c in enumerate(classes)}
        return ImageFolder([f for f, _ in files], [order[c] for _, c in files],
                           "labels: sorted class folders as the model's output indices")
    return ImageFolder([f for f, _ in files], None,
                       f"no labels: {len(classes)} class folders for a model with {num_classes} "
                       "outputs (declare outputs.labels to map them)")
