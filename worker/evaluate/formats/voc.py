"""Pascal VOC annotations: `JPEGImages/<id>.jpg` and `Annotations/<id>.xml`.

Each `<object>` has a `<name>`, a `<bndbox>` (xmin ymin xmax ymax, 1-based inclusive pixels, so
the COCO box starts one pixel earlier) and an optional `<difficult>`. Difficult objects are
handled as VOC's evaluation does: a detection on one is neither right nor wrong (a pycocotools
crowd region of its class). The names are VOC's 20 classes unless `dataset.classes` lists
others. Every image has its XML file, as VOC ships them: a missing one is refused, as is an
XML file without its image.

The XML is parsed with defusedxml, which refuses entity declarations and DTDs: label files may
come from anyone, and an entity-expansion bomb of a few kB would otherwise take the worker's
memory. A line number in an error is the line of the offending element.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import XMLParser

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

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


class _LineBuilder:
    """A TreeBuilder target that records each element's source line (for error messages)."""

    def __init__(self) -> None:
        from xml.etree.ElementTree import TreeBuilder

        self.tree = TreeBuilder()
        self.parser: Any = None
        self.lines: dict[int, int] = {}

    def start(self, tag, attrs):
        element = self.tree.start(tag, attrs)
        self.lines[id(element)] = self.parser.parser.CurrentLineNumber
        return element

    def end(self, tag):
        return self.tree.end(tag)

    def data(self, text):
        self.tree.data(text)

    def close(self):
        return self.tree.close()


def parse_xml(path: Path) -> tuple[Element, dict[int, int]]:
    target = _LineBuilder()
    parser = XMLParser(target=target, forbid_dtd=True)
    target.parser = parser
    try:
        parser.feed(read_text(path))
        return parser.close(), target.lines
    except ParseError as exc:
        line = exc.position[0] if exc.position else None
        raise DatasetError(f"{where(path, line)}: not well-formed XML ({exc})") from None
    except DefusedXmlException as exc:
        raise DatasetError(f"{path}: refused XML ({type(exc).__name__}: DTDs and entity "
                           "declarations are not read)") from None


def _number(obj: Element, tag: str, at: str) -> float:
    text = obj.findtext(f"bndbox/{tag}")
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DatasetError(f"{at}: bndbox/{tag} must be a number, got {text!r}")
    return value


def read_voc(images_dir: Path, labels_dir: Path, classes: list[str] | None,
             roots: tuple[Path, ...] = ()) -> dict[str, Any]:
    counted = list(classes) if classes else list(VOC_CLASSES)
    known = set(VOC_CLASSES) | set(counted)
    category = {c: i + 1 for i, c in enumerate(counted)}
    images = files_by_stem(images_dir, IMAGE_SUFFIXES, roots, "images")
    labels = files_by_stem(labels_dir, (".xml",), roots, "annotations")
    refuse_unpaired(images, labels, images_dir, ".xml", labels_dir,
                    "VOC has one per image; no <object> for none")
    doc = DocBuilder(counted, images_dir)
    for stem in sorted(images):
        size = image_size(images[stem])
        image_id = doc.add_image(images[stem], size)
        root, lines = parse_xml(labels[stem])
        if root.tag != "annotation":
            raise DatasetError(f"{where(labels[stem], lines.get(id(root)))}: the root element "
                               f"is <{root.tag}>, a VOC file's is <annotation>")
        for obj in root.iter("object"):
            at = where(labels[stem], lines.get(id(obj)))
            name = (obj.findtext("name") or "").strip()
            if name not in known:
                raise DatasetError(f"{at}: unknown class {name!r} (VOC's 20 classes; others "
                                   "must be listed in dataset.classes)")
            difficult = (obj.findtext("difficult") or "0").strip()
            if difficult not in ("0", "1"):
                raise DatasetError(f"{at}: difficult must be 0 or 1, got {difficult!r}")
            xmin, ymin, xmax, ymax = (_number(obj, t, at) for t in ("xmin", "ymin", "xmax",
                                                                    "ymax"))
            box = (xmin - 1, ymin - 1, xmax, ymax)  # 1-based inclusive -> 0-based edges
            check_box(box, size, at)
            if name in category:
                doc.add_box(image_id, category[name], box, crowd=difficult == "1")
    return doc.document()


def write_voc(doc: dict[str, Any], labels_dir: Path) -> None:
    """VOC XML files of a COCO document (crowd boxes are written as difficult)."""
    labels_dir.mkdir(parents=True, exist_ok=True)
    names = {c["id"]: escape(c["name"]) for c in doc["categories"]}
    for im, boxes in annotations_by_image(doc):
        objects = []
        for a in boxes:
            x, y, w, h = a["bbox"]
            objects.append(
                f"  <object><name>{names[a['category_id']]}</name>"
                f"<difficult>{int(bool(a.get('iscrowd')))}</difficult><bndbox>"
                f"<xmin>{x + 1:g}</xmin><ymin>{y + 1:g}</ymin><xmax>{x + w:g}</xmax>"
                f"<ymax>{y + h:g}</ymax></bndbox></object>\n")
        (labels_dir / f"{Path(im['file_name']).stem}.xml").write_text(
            f"<annotation>\n  <filename>{escape(im['file_name'])}</filename>\n"
            f"  <size><width>{im['width']}</width><height>{im['height']}</height></size>\n"
            + "".join(objects) + "</annotation>\n")
