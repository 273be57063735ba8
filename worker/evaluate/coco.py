"""COCO-format detection datasets, COCO mAP, and a small ImageFolder classification loader.

Resizing choice: images are resized (not letterboxed) to the model's input size so every
batch has one shape; predictions are mapped back to the original pixel coordinates with
the per-image scale, and mAP is computed against the untouched annotations.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from qbench.evaluate.coco_doc import (
    DatasetError,
    check_coco_document,
    confined_file,
    read_coco_document,
)

__all__ = ["DatasetError", "CocoDataset", "confined_file", "load_coco", "read_image"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}




@dataclass
class CocoDataset:
    images_dir: Path
    annotations: Path
    doc: dict[str, Any]  # the parsed instances JSON
    roots: tuple[Path, ...] = ()  # where image files may resolve to; () means images_dir

    @property
    def image_ids(self) -> list[int]:
        return sorted(int(im["id"]) for im in self.doc["images"])

    @property
    def category_names(self) -> dict[int, str]:
        return {int(c["id"]): str(c.get("name", c["id"])) for c in self.doc["categories"]}

    @cached_property
    def _files(self) -> dict[int, str]:
        return {int(im["id"]): im["file_name"] for im in self.doc["images"]}

    def image_path(self, image_id: int) -> Path:
        return confined_file(self.images_dir, self._files[image_id], self.roots)


def load_coco(images_dir: str | Path, annotations: str | Path, num_classes: int | None = None,
              roots: tuple[Path, ...] = ()) -> CocoDataset:
    """Read and check a COCO instances dataset.

    num_classes counts the background as torchvision does, so category ids must lie in
    1..num_classes-1.
    """
    images_dir, annotations = Path(images_dir), Path(annotations)
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: images folder does not exist")
    doc = read_coco_document(annotations)
    check_coco_document(doc, annotations, num_classes)
    return CocoDataset(images_dir, annotations, doc, tuple(roots))


def split(ids: list[int], calibration_count: int, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic disjoint (calibration, evaluation) id lists; at least one is evaluated."""
    ids = sorted(ids)
    if not 0 <= calibration_count < len(ids):
        raise DatasetError(
            f"calibration needs {calibration_count} images but the dataset has {len(ids)}; "
            "at least one must remain for evaluation"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    calib = sorted(ids[i] for i in order[:calibration_count])
    rest = sorted(ids[i] for i in order[calibration_count:])
    return calib, rest


def read_image(path: Path, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, tuple[float, float]]:
    """CHW float [0, 1], resized to size (h, w) if given, and the (sx, sy) scale applied."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w0, h0 = im.size
            if size is not None and (h0, w0) != tuple(size):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.array(im, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: image file does not exist") from exc
    # ImportError: ultralytics, once imported, patches Image.open to look for a HEIF plugin
    # on any file PIL cannot identify; the file is just as unreadable.
    except (UnidentifiedImageError, OSError, ImportError) as exc:
        raise DatasetError(f"{path}: cannot decode image ({exc})") from exc
    scale = (arr.shape[1] / w0, arr.shape[0] / h0)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0), scale


def load_batch(ds: CocoDataset, ids: list[int], size: tuple[int, int]) -> tuple[torch.Tensor, list[tuple[float, float]]]:
    """NCHW batch of the given image ids at the model input size, and each image's scale."""
    pairs = [read_image(ds.image_path(i), size) for i in ids]
    if not pairs:
        return torch.zeros((0, 3, size[0], size[1])), []
    return torch.stack([p[0] for p in pairs]), [p[1] for p in pairs]


def to_coco_results(
    image_ids: list[int], outputs: list[dict[str, torch.Tensor]],
    scales: list[tuple[float, float]] | None = None, mapping: dict[int, int] | None = None,
    geometries: list[Any] | None = None,
) -> list[dict[str, Any]]:
    """Detections (boxes, scores, labels per image: a torchvision detector's, or decoded raw
    outputs) -> COCO result dicts in original image coordinates. Back to the original pixels
    through `geometries` (preprocess.transform.Geometry: offsets, clipped to the image) where
    given, else `scales` (a torchvision detector's resize factors). mapping
    (outputs.category_map): label -> category id; labels outside it are dropped (classes the
    dataset does not annotate); None: the label is the category id."""
    results = []
    for k, (image_id, out) in enumerate(zip(image_ids, outputs, strict=True)):
        if geometries is not None:
            boxes = geometries[k].to_original(out["boxes"].detach().float().cpu())
        else:
            sx, sy = scales[k] if scales else (1.0, 1.0)
            boxes = out["boxes"].detach().float().cpu() / torch.tensor([sx, sy, sx, sy])
        for (x1, y1, x2, y2), score, label in zip(
            boxes.tolist(), out["scores"].tolist(), out["labels"].tolist(), strict=True
        ):
            category = mapping.get(int(label)) if mapping is not None else int(label)
            if category is None:
                continue
            results.append({"image_id": int(image_id), "category_id": int(category),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return results


def evaluate_detections(
    gt: dict[str, Any] | str | Path, predictions: list[dict[str, Any]], image_ids: list[int] | None = None
) -> dict[str, float]:
    """COCO bbox mAP@[.5:.95] and mAP@.5 of COCO-format predictions, over image_ids (default all).

    No predictions give 0.0; no ground truth at all gives NaN (mAP is undefined there).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    doc = json.loads(Path(gt).read_text()) if isinstance(gt, (str, Path)) else copy.deepcopy(gt)
    doc.setdefault("info", {})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        coco_gt = COCO()
        coco_gt.dataset = doc
        coco_gt.createIndex()
        ids = sorted(image_ids) if image_ids is not None else coco_gt.getImgIds()
        if not coco_gt.getAnnIds(imgIds=ids):
            return {"map": float("nan"), "map50": float("nan")}
        wanted = set(ids)
        preds = [copy.deepcopy(p) for p in predictions if p["image_id"] in wanted]
        if not preds:
            return {"map": 0.0, "map50": 0.0}
        coco_dt = coco_gt.loadRes(preds)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": max(float(ev.stats[0]), 0.0), "map50": max(float(ev.stats[1]), 0.0)}


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """{"top1": .., "top5": ..}: share of samples whose label is among the k highest logits."""
    out = {}
    for k in ks:
        top = logits.topk(min(k, logits.shape[1]), dim=1).indices
        out[f"top{k}"] = float((top == labels[:, None]).any(dim=1).float().mean()) if len(labels) else 0.0
    return out
