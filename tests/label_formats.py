"""Test helper: one COCO dataset written again as KITTI, YOLO and Pascal VOC label folders, so
that the same boxes are read through every reader (no downloads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from qbench.evaluate.formats.kitti import write_kitti
from qbench.evaluate.formats.voc import write_voc
from qbench.evaluate.formats.yolo import write_yolo


def write_formats(images: Path, annotations: Path, out: Path, base: Path) -> dict[str, dict]:
    """{format: the manifest's dataset block (paths relative to base)} of the COCO
    dataset at images/annotations, written under out/<format>/ in each format's layout."""
    doc = json.loads(annotations.read_text())
    classes = [c["name"] for c in sorted(doc["categories"], key=lambda c: c["id"])]
    layouts = {"kitti": ("image_2", "label_2", write_kitti),
               "yolo": ("images", "labels", write_yolo),
               "voc": ("JPEGImages", "Annotations", write_voc)}
    blocks = {}
    for fmt, (image_dir, label_dir, write) in layouts.items():
        root = out / fmt
        if not (root / image_dir).exists():
            shutil.copytree(images, root / image_dir)
        write(doc, root / label_dir)
        rel = root.relative_to(base)
        blocks[fmt] = {"format": fmt, "images": f"{rel}/{image_dir}", "classes": classes}
        if fmt == "yolo":  # the class names from a data.yaml, as ultralytics writes them
            (root / "data.yaml").write_text(json.dumps({"names": classes}))
            blocks[fmt] = {"format": fmt, "images": f"{rel}/{image_dir}",
                           "data_yaml": f"{rel}/data.yaml"}
    return blocks
