"""Reading and checking a COCO instances JSON, without torch: the manifest checks it statically.

Every problem is a DatasetError whose one-line message names the file.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the offending file."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite number: NaN and Infinity are valid JSON to Python, never a box coordinate."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def confined_file(folder: Path, name: str, roots: tuple[Path, ...] = ()) -> Path:
    """folder/name with symlinks followed, refused unless it lies inside the folder or roots:
    a COCO file_name that is absolute or climbs with .., or a symlink out, is not read; nor is
    anything there but a regular file (a FIFO would block its reader forever)."""
    allowed = [folder.resolve(), *roots]
    try:
        path = (folder / name).resolve()
    except (RuntimeError, OSError):
        raise DatasetError(f"{folder / name}: cannot be resolved (symlink loop?)") from None
    if not any(path == r or r in path.parents for r in allowed):
        raise DatasetError(f"{folder / name}: resolves outside the dataset's folders ({path})")
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return path  # missing: the reader names it
    if not stat.S_ISREG(mode):
        raise DatasetError(f"{folder / name}: not a regular file")
    return path


def check_image_files(doc: dict[str, Any], images: Path, roots: tuple[Path, ...]) -> None:
    """Every file_name confined to the images folder (or the roots) and, where it exists, a
    regular file: checked before a job is queued, without opening any of them."""
    for im in doc["images"]:
        confined_file(images, im["file_name"], roots)


def read_coco_document(annotations: Path) -> dict[str, Any]:
    if annotations.is_dir():
        raise DatasetError(f"{annotations}: annotations is a folder, not an instances JSON file")
    if not annotations.is_file():
        raise DatasetError(f"{annotations}: annotations file does not exist")
    try:
        doc = json.loads(annotations.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, a 5000-digit number, deep
        raise DatasetError(f"{annotations}: not valid JSON ({str(exc).splitlines()[0][:200]})") from None
    except OSError as exc:
        raise DatasetError(f"{annotations}: cannot be read ({exc.strerror or exc})") from None
    return doc


def check_coco_document(doc: Any, annotations: Path, num_classes: int | None = None) -> None:
    """Keys, field types, bboxes and category ids (1..num_classes-1 as torchvision counts)."""
    missing = [k for k in ("images", "annotations", "categories")
               if not isinstance(doc, dict) or not isinstance(doc.get(k), list)]
    if missing:
        raise DatasetError(f"{annotations}: not a COCO instances file (missing keys: "
                           f"{', '.join(missing)}; each a list)")
    for key, fields in (("images", ("id", "file_name")), ("categories", ("id",)),
                        ("annotations", ("image_id", "category_id", "bbox"))):
        for i, entry in enumerate(doc[key]):
            if not isinstance(entry, dict) or any(f not in entry for f in fields):
                raise DatasetError(f"{annotations}: {key}[{i}] needs the fields {', '.join(fields)}")
    seen: set[int] = set()
    for i, im in enumerate(doc["images"]):
        if not _is_int(im["id"]) or not isinstance(im["file_name"], str) or not im["file_name"]:
            raise DatasetError(f"{annotations}: images[{i}]: id must be an integer and "
                               "file_name a non-empty string")
        name = im["file_name"]
        if name.endswith(("/", "\\")) or Path(name).name in ("", ".", "..") or "\x00" in name:
            raise DatasetError(f"{annotations}: images[{i}].file_name {name!r} does not name a file")
        if im["id"] in seen:
            raise DatasetError(f"{annotations}: images[{i}].id {im['id']} is used by an earlier "
                               "image too")
        seen.add(im["id"])
    for i, cat in enumerate(doc["categories"]):
        if not _is_int(cat["id"]):
            raise DatasetError(f"{annotations}: categories[{i}].id must be an integer, "
                               f"got {cat['id']!r}")
    for i, ann in enumerate(doc["annotations"]):
        for f in ("image_id", "category_id"):
            if not _is_int(ann[f]):
                raise DatasetError(f"{annotations}: annotations[{i}].{f} must be an integer, "
                                   f"got {ann[f]!r}")
        box = ann["bbox"]
        if (not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box)
                or box[2] < 0 or box[3] < 0):
            raise DatasetError(f"{annotations}: annotations[{i}].bbox must be [x, y, width, "
                               f"height] with width and height >= 0, got {box!r}"[:300])
    declared = {c["id"] for c in doc["categories"]}
    undeclared = sorted({a["category_id"] for a in doc["annotations"]} - declared)
    if undeclared:
        raise DatasetError(f"{annotations}: annotations use category ids {undeclared[:10]} "
                           "that are not in categories")
    if num_classes is not None:
        bad = sorted(declared - set(range(1, num_classes)))
        if bad:
            raise DatasetError(
                f"{annotations}: category ids {bad[:10]} are out of range for a model with "
                f"num_classes={num_classes} (valid ids 1..{num_classes - 1})"
            )
