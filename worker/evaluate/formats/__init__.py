"""Label formats beside COCO: each reader turns a dataset into the COCO instances document the
COCO reader gives, so evaluation (pycocotools), calibration and inspection take them alike.

`BOX_FORMATS` are the manifest's `dataset.format` values scored on boxes; `read_boxes` reads
any of them given the resolved folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BOX_FORMATS = ("coco", "kitti", "yolo", "voc")
LABEL_FORMATS = ("kitti", "yolo", "voc")  # read by this package, with a labels folder


def default_labels(fmt: str, images: str) -> str:
    """Where a format keeps its labels when `dataset.labels` is not given."""
    from pathlib import PurePosixPath

    if fmt == "yolo":
        from qbench.evaluate.formats.yolo import default_labels as yolo_labels

        return yolo_labels(images)
    sibling = {"kitti": "label_2", "voc": "Annotations"}[fmt]
    return str(PurePosixPath(images).parent / sibling)


def read_labels(fmt: str, images: Path, labels: Path, classes: list[str] | None,
                data_yaml: Path | None, roots: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The COCO document of a KITTI, YOLO or VOC dataset (DatasetError: file:line: why)."""
    if fmt == "kitti":
        from qbench.evaluate.formats.kitti import DEFAULT_CLASSES, read_kitti

        return read_kitti(images, labels, list(classes or DEFAULT_CLASSES), roots)
    if fmt == "yolo":
        from qbench.evaluate.formats.yolo import read_yolo

        return read_yolo(images, labels, classes, data_yaml, roots)
    if fmt == "voc":
        from qbench.evaluate.formats.voc import read_voc

        return read_voc(images, labels, classes, roots)
    raise ValueError(f"format {fmt!r} has no label reader")
