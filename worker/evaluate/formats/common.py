"""What the KITTI, YOLO and Pascal VOC readers share: confined paths, image sizes, the COCO
document they all produce, and one-line errors naming the file and line.

Torch-free: `qbench validate` reads every label file before a job is queued.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qbench.evaluate.coco_doc import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
MAX_LABEL_BYTES = 4_000_000  # one label file; a real one is a few kB
MAX_CLASSES = 1000
# A box edge may sit this far outside the image (float labels written from clipped floats).
EDGE_TOLERANCE = 1e-3


def where(path: Path, line: int | None = None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


def inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def confined(folder: Path, entry: Path, roots: tuple[Path, ...]) -> Path:
    """entry (inside folder) with symlinks followed, refused unless it stays inside the folder
    or the unit's input roots: a label or image symlinked out of its dataset is not read."""
    try:
        path = entry.resolve()
    except (RuntimeError, OSError):
        raise DatasetError(f"{entry}: cannot be resolved (symlink loop?)") from None
    if not inside(path, [folder.resolve(), *roots]):
        raise DatasetError(f"{entry}: resolves outside the dataset's folders ({path})")
    return path


def files_by_stem(folder: Path, suffixes: tuple[str, ...], roots: tuple[Path, ...],
                  what: str) -> dict[str, Path]:
    """Every file of these suffixes directly in folder, by file stem, each confined."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: {what} folder does not exist")
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.suffix.lower() not in suffixes:
            continue
        if not confined(folder, entry, roots).is_file():
            continue
        if entry.stem in found:
            raise DatasetError(f"{entry}: a second file named {entry.stem} in {folder} "
                               f"({found[entry.stem].name})")
        found[entry.stem] = entry
    return found


def refuse_unpaired(images: dict[str, Path], labels: dict[str, Path], images_dir: Path,
                    label_suffix: str, labels_dir: Path, why_labels: str | None) -> None:
    """A label file whose image is missing is always refused (its boxes would be silently
    lost); an image without a label file is refused unless why_labels is None (YOLO: no file
    means no objects)."""
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise DatasetError(f"{labels[orphans[0]]}: label file without an image "
                           f"{orphans[0]}.* in {images_dir}")
    missing = sorted(set(images) - set(labels))
    if missing and why_labels is not None:
        raise DatasetError(f"{images[missing[0]]}: image without a label file "
                           f"{missing[0]}{label_suffix} in {labels_dir} ({why_labels})")


def read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_LABEL_BYTES:
            raise DatasetError(f"{path}: {size} bytes, above the {MAX_LABEL_BYTES}-byte limit "
                               "for a label file")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header; the pixels are not decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read the image header ({exc})") from None


def check_box(box: tuple[float, float, float, float], size: tuple[int, int], at: str) -> None:
    """x1, y1, x2, y2 in pixels: finite, not empty, inside the image."""
    x1, y1, x2, y2 = box
    w, h = size
    if not all(v == v and abs(v) != float("inf") for v in box):
        raise DatasetError(f"{at}: box coordinates must be finite numbers")
    if x2 <= x1 or y2 <= y1:
        raise DatasetError(f"{at}: empty box (x1 {x1:g}, y1 {y1:g}, x2 {x2:g}, y2 {y2:g})")
    t = EDGE_TOLERANCE
    if x1 < -t or y1 < -t or x2 > w + t or y2 > h + t:
        raise DatasetError(f"{at}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the "
                           f"{w}x{h} image")


@dataclass
class DocBuilder:
    """Accumulates the in-memory COCO instances document every format reader returns."""

    classes: list[str]
    images_dir: Path
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add_image(self, path: Path, size: tuple[int, int]) -> int:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": path.name,
                            "width": size[0], "height": size[1]})
        return image_id

    def add_box(self, image_id: int, category_id: int, box: tuple[float, float, float, float],
                crowd: bool = False) -> None:
        """crowd: an ignore region (KITTI DontCare, VOC difficult): pycocotools counts a
        detection on it neither right nor wrong."""
        x1, y1, x2, y2 = box
        w, h = x2 - x1, y2 - y1
        self.annotations.append({"id": len(self.annotations) + 1, "image_id": image_id,
                                 "category_id": category_id, "bbox": [x1, y1, w, h],
                                 "area": w * h, "iscrowd": int(crowd)})

    def document(self) -> dict[str, Any]:
        return {"images": self.images, "annotations": self.annotations,
                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(self.classes)],
                **self.extra}


def annotations_by_image(doc: dict[str, Any]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each image of a COCO document with its annotations, in the document's image order:
    what every label writer walks, one label file per image."""
    by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in doc["images"]}
    for a in doc["annotations"]:
        by_image[a["image_id"]].append(a)
    return [(im, by_image[im["id"]]) for im in doc["images"]]

