"""KITTI object labels: `image_2/<id>.png` and `label_2/<id>.txt`, one object per line.

A line is: type, truncated (0..1), occluded (0, 1, 2, 3 unknown), alpha, bbox left top right
bottom (pixels), then 3-D dimensions, location and rotation_y (read and ignored), and a score in
result files. Types listed in `dataset.classes` are the categories (ids 1..N in that order);
KITTI's other types (Van, Truck, Person_sitting, Tram, Misc) are not counted by COCO mAP but kept
for KITTI's own metric, which ignores Van for Car and Person_sitting for Pedestrian; `DontCare`
boxes are regions where a detection is neither right nor wrong (pycocotools crowd regions of
every class). Every image has a label file (an empty one: no objects), as the KITTI devkit
writes them: a missing one is refused, as is a label file without its image.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from qbench.evaluate.coco_doc import DatasetError
from qbench.evaluate.formats.common import (
    IMAGE_SUFFIXES,
    DocBuilder,
    annotations_by_image,
    check_box,
    files_by_stem,
    image_size,
    read_text,
    refuse_unpaired,
    where,
)

KITTI_TYPES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc",
               "DontCare")
DEFAULT_CLASSES = ("Car", "Pedestrian", "Cyclist")  # what the KITTI benchmark ranks
DONT_CARE = "DontCare"


def parse_line(line: str, at: str, known: dict[str, str]) -> tuple[str, float, int, tuple]:
    """(type as declared, truncation, occlusion, (x1, y1, x2, y2)) of one label line."""
    fields = line.split()
    if len(fields) not in (15, 16):
        raise DatasetError(f"{at}: {len(fields)} fields, a KITTI label line has 15 (type, "
                           "truncated, occluded, alpha, 4 box, 3 dimensions, 3 location, "
                           "rotation_y) or 16 with a score")
    name = known.get(fields[0].lower())
    if name is None:
        raise DatasetError(f"{at}: unknown class {fields[0]!r} (KITTI types: "
                           f"{', '.join(KITTI_TYPES)}; others must be listed in dataset.classes)")
    try:
        values = [float(v) for v in fields[1:]]
    except ValueError:
        raise DatasetError(f"{at}: fields after the type must be numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise DatasetError(f"{at}: fields after the type must be finite numbers")
    truncated, occluded = values[0], values[1]
    if not (0 <= truncated <= 1 or name == DONT_CARE):
        raise DatasetError(f"{at}: truncated {truncated:g} is not within 0..1")
    if occluded != int(occluded) or not (0 <= occluded <= 3 or name == DONT_CARE):
        raise DatasetError(f"{at}: occluded {occluded:g} is not 0, 1, 2 or 3")
    return name, truncated, int(occluded), tuple(values[3:7])


def read_kitti(images_dir: Path, labels_dir: Path, classes: list[str],
               roots: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The COCO document of a KITTI split, with each image's raw objects under "kitti"
    (type, truncated, occluded, x1, y1, x2, y2) for KITTI's own AP."""
    images = files_by_stem(images_dir, IMAGE_SUFFIXES, roots, "images")
    labels = files_by_stem(labels_dir, (".txt",), roots, "labels")
    refuse_unpaired(images, labels, images_dir, ".txt", labels_dir,
                    "KITTI writes one per image; empty for no objects")
    known = {t.lower(): t for t in KITTI_TYPES} | {c.lower(): c for c in classes}
    category = {c.lower(): i + 1 for i, c in enumerate(classes)}
    doc = DocBuilder(list(classes), images_dir)
    objects: dict[str, list[list[Any]]] = {}
    for stem in sorted(images):
        size = image_size(images[stem])
        image_id = doc.add_image(images[stem], size)
        rows = objects.setdefault(str(image_id), [])
        for n, line in enumerate(read_text(labels[stem]).splitlines(), 1):
            if not line.strip():
                continue
            at = where(labels[stem], n)
            name, truncated, occluded, box = parse_line(line, at, known)
            check_box(box, size, at)
            rows.append([name, truncated, occluded, *box])
            if name == DONT_CARE:
                for cid in category.values():
                    doc.add_box(image_id, cid, box, crowd=True)
            elif name.lower() in category:
                doc.add_box(image_id, category[name.lower()], box)
    doc.extra["kitti"] = objects
    return doc.document()


def write_kitti(doc: dict[str, Any], labels_dir: Path) -> None:
    """KITTI label files of a COCO document (one per image; crowd boxes become DontCare)."""
    labels_dir.mkdir(parents=True, exist_ok=True)
    names = {c["id"]: c["name"] for c in doc["categories"]}
    for im, boxes in annotations_by_image(doc):
        lines = []
        for a in boxes:
            x, y, w, h = a["bbox"]
            name = DONT_CARE if a.get("iscrowd") else names[a["category_id"]]
            lines.append(f"{name} 0.00 0 -10 {x:.2f} {y:.2f} {x + w:.2f} {y + h:.2f} "
                         "-1 -1 -1 -1000 -1000 -1000 -10\n")
        (labels_dir / f"{Path(im['file_name']).stem}.txt").write_text("".join(lines))
