"""YOLO (ultralytics) detection labels: `images/<id>.jpg` and `labels/<id>.txt`.

A line is `class cx cy w h`: the class index into the dataset's names, then the box centre and
size as fractions of the image's width and height. The names come from `dataset.classes` or
from a `data.yaml` (`names:` as a list or an {index: name} mapping, read with yaml.safe_load);
with both, `classes` picks which of the data.yaml's names count, in its order. An image without
a label file has no objects (ultralytics' rule for background images); a label file without its
image is refused. Polygon (segment) lines are refused: this reader takes boxes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from qbench.evaluate.coco_doc import DatasetError
from qbench.evaluate.formats.common import (
    IMAGE_SUFFIXES,
    MAX_CLASSES,
    DocBuilder,
    annotations_by_image,
    check_box,
    files_by_stem,
    image_size,
    read_text,
    refuse_unpaired,
    where,
)


def default_labels(images: str) -> str:
    """ultralytics' rule: the last `images` folder of the path becomes `labels`."""
    parts = Path(images).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            return str(Path(*parts[:i], "labels", *parts[i + 1:]))
    return str(Path(images).parent / "labels")


def read_names(path: Path) -> list[str]:
    """The class names of a data.yaml, index order."""
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = where(path, mark.line + 1 if mark else None)
        raise DatasetError(f"{at}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DatasetError(f"{path}: names: a mapping must have the keys 0..{len(names) - 1}")
        names = [names[i] for i in range(len(names))]
    if (not isinstance(names, list) or not names or len(names) > MAX_CLASSES
            or not all(isinstance(n, str) and n for n in names)):
        raise DatasetError(f"{path}: names: a list (or index mapping) of 1 to {MAX_CLASSES} "
                           "class names")
    return names


def parse_line(line: str, at: str, n_names: int) -> tuple[int, float, float, float, float]:
    fields = line.split()
    if len(fields) != 5:
        raise DatasetError(f"{at}: {len(fields)} fields, a YOLO box line has 5 (class cx cy w "
                           "h; segment polygons are not read)")
    try:
        index = int(fields[0])
        cx, cy, w, h = (float(v) for v in fields[1:])
    except ValueError:
        raise DatasetError(f"{at}: class must be an integer and cx cy w h numbers") from None
    if not 0 <= index < n_names:
        raise DatasetError(f"{at}: unknown class {index} (the names have indices "
                           f"0..{n_names - 1})")
    if not all(math.isfinite(v) for v in (cx, cy, w, h)):
        raise DatasetError(f"{at}: cx cy w h must be finite numbers")
    return index, cx, cy, w, h


def read_yolo(images_dir: Path, labels_dir: Path, classes: list[str] | None,
              names_file: Path | None, roots: tuple[Path, ...] = ()) -> dict[str, Any]:
    names = read_names(names_file) if names_file is not None else list(classes or [])
    if not names:
        raise DatasetError(f"{labels_dir}: YOLO labels need class names: dataset.classes or "
                           "dataset.data_yaml")
    counted = list(classes) if classes else names
    unknown = [c for c in counted if c not in names]
    if unknown:
        raise DatasetError(f"{names_file}: dataset.classes names {unknown[0]!r}, which is not "
                           "among its names")
    category = {names.index(c): i + 1 for i, c in enumerate(counted)}
    images = files_by_stem(images_dir, IMAGE_SUFFIXES, roots, "images")
    labels = files_by_stem(labels_dir, (".txt",), roots, "labels")
    refuse_unpaired(images, labels, images_dir, ".txt", labels_dir, None)
    doc = DocBuilder(counted, images_dir)
    for stem in sorted(images):
        size = image_size(images[stem])
        image_id = doc.add_image(images[stem], size)
        if stem not in labels:
            continue
        width, height = size
        for n, line in enumerate(read_text(labels[stem]).splitlines(), 1):
            if not line.strip():
                continue
            at = where(labels[stem], n)
            index, cx, cy, w, h = parse_line(line, at, len(names))
            box = ((cx - w / 2) * width, (cy - h / 2) * height,
                   (cx + w / 2) * width, (cy + h / 2) * height)
            check_box(box, size, at)
            if index in category:
                doc.add_box(image_id, category[index], box)
    doc.extra["yolo_names"] = names  # a decoded model's label i is names[i] (datasets.py)
    return doc.document()


def write_yolo(doc: dict[str, Any], labels_dir: Path) -> None:
    """YOLO label files of a COCO document (category id k is class index k - 1); images
    without boxes get no file, as ultralytics writes them."""
    labels_dir.mkdir(parents=True, exist_ok=True)
    for im, boxes in annotations_by_image(doc):
        if not boxes:
            continue
        iw, ih = im["width"], im["height"]
        lines = []
        for a in boxes:
            x, y, w, h = a["bbox"]
            lines.append(f"{a['category_id'] - 1} {(x + w / 2) / iw:.10f} "
                         f"{(y + h / 2) / ih:.10f} {w / iw:.10f} {h / ih:.10f}\n")
        (labels_dir / f"{Path(im['file_name']).stem}.txt").write_text("".join(lines))
