"""Seeded synthetic detection scenes: shapes on sky-like or textured backgrounds.

Everything is generated locally (no downloads), so tests, calibration and the fixture model
share one deterministic source of images with exact ground truth.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

# Label i+1 is CLASSES[i]; 0 stays background as torchvision expects.
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

MIN_SIDE = 12  # px: below this a stride-4 feature map barely sees the object
MAX_FRACTION = 0.45  # of the shorter image side
MAX_OBJECTS = 8
MAX_COVER = 0.35  # a new object may hide at most this share of an earlier one


def _low_freq(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1] by upsampling a coarse random grid (cheap cloud/texture)."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    grid = Image.fromarray((rng.random((gh, gw)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = rng.integers(3)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    if kind == 0:  # sky: deep blue at the top to a pale horizon, with clouds
        top = np.array([rng.uniform(20, 90), rng.uniform(70, 150), rng.uniform(170, 255)])
        bottom = np.array([rng.uniform(180, 255), rng.uniform(190, 255), rng.uniform(200, 255)])
        img = top * (1 - t) + bottom * t
        clouds = np.clip(_low_freq(rng, h, w, int(rng.integers(24, 64))) * 1.6 - 0.7, 0, 1)
        img = img * (1 - clouds[..., None]) + 245 * clouds[..., None]
    elif kind == 1:  # bright, washed-out gradient (over-exposed sky)
        base = rng.uniform(190, 250, size=3)
        img = base - t * rng.uniform(-40, 40, size=3)
        img = img + (_low_freq(rng, h, w, 48)[..., None] - 0.5) * 30
    else:  # texture: two colours mixed by smooth noise plus grain
        a, b = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
        mix = _low_freq(rng, h, w, int(rng.integers(8, 32)))[..., None]
        img = a * mix + b * (1 - mix)
        img = img + (_low_freq(rng, h, w, 3)[..., None] - 0.5) * 40
    return np.broadcast_to(img, (h, w, 3)).astype(np.float32).copy()


def _rotate(points: np.ndarray, angle: float, center: np.ndarray) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return (points - center) @ np.array([[c, s], [-s, c]]) + center


def _shape_mask(rng: np.random.Generator, label: int, h: int, w: int) -> np.ndarray:
    """Boolean mask of one object of class CLASSES[label-1] at a random place and size."""
    lo, hi = MIN_SIDE, max(MIN_SIDE + 1, MAX_FRACTION * min(h, w))
    side = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))  # log-uniform: many small
    cx, cy = rng.uniform(side / 2, w - side / 2), rng.uniform(side / 2, h - side / 2)
    center, r = np.array([cx, cy]), side / 2
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    name = CLASSES[label - 1]
    if name == "circle":
        ry = r * rng.uniform(0.85, 1.15)
        draw.ellipse([cx - r, cy - ry, cx + r, cy + ry], fill=255)
    else:
        if name == "square":
            pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * r * 0.9
            angle = rng.uniform(-0.35, 0.35)  # beyond ~20 degrees a square reads as a diamond
        elif name == "triangle":
            pts = np.array([[math.cos(a), math.sin(a)] for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]) * r
            angle = rng.uniform(-math.pi, math.pi)
        else:  # cross: a plus sign with arms a third of its width
            k = 1 / 3
            pts = np.array([[-k, -1], [k, -1], [k, -k], [1, -k], [1, k], [k, k], [k, 1], [-k, 1],
                            [-k, k], [-1, k], [-1, -k], [-k, -k]]) * r
            angle = rng.uniform(-0.35, 0.35)
        pts = _rotate(pts + center, angle, center)
        draw.polygon([tuple(p) for p in pts], fill=255)
    return np.asarray(canvas) > 127


def _colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A colour that stands out from the mean background below the object."""
    best, best_d = None, -1.0
    for _ in range(12):
        c = rng.uniform(0, 255, size=3)
        d = float(np.linalg.norm(c - under))
        if d >= 110:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _distractors(rng: np.random.Generator, img: np.ndarray) -> None:
    """Clutter that is none of CLASSES: lines, zigzags, thin bars, specks."""
    h, w, _ = img.shape
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(0, 7))):
        col = tuple(int(v) for v in rng.integers(0, 256, size=3))
        kind = rng.integers(4)
        if kind == 0:
            xy = [tuple(rng.uniform(0, [w, h])) for _ in range(2)]
            draw.line(xy, fill=col, width=int(rng.integers(1, 4)))
        elif kind == 1:
            xy = [tuple(rng.uniform(0, [w, h])) for _ in range(int(rng.integers(3, 7)))]
            draw.line(xy, fill=col, width=int(rng.integers(1, 3)))
        elif kind == 2:  # bar with aspect > 5: never mistaken for a square
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            ln, th = rng.uniform(min(20.0, 0.6 * w), 0.6 * w), rng.uniform(2, 4)
            box = [x, y, x + ln, y + th] if rng.random() < 0.5 else [x, y, x + th, y + ln]
            draw.rectangle(box, fill=col)
        else:
            for _ in range(int(rng.integers(5, 30))):
                x, y, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1, 3)
                draw.ellipse([x, y, x + s, y + s], fill=col)
    img[...] = np.asarray(pil, dtype=np.float32)


def render_scene(
    rng: np.random.Generator, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene of `size` (h, w): image uint8 HxWx3, boxes float32 Nx4 xyxy, labels int64 N.

    Boxes are the tight extent of each object's visible pixels (occlusion is bounded by
    MAX_COVER), in pixel coordinates with x2/y2 exclusive.
    """
    h, w = int(size[0]), int(size[1])
    img = _background(rng, h, w)
    _distractors(rng, img)
    ids = np.zeros((h, w), dtype=np.int32)  # which object owns each pixel (0: none)
    labels: list[int] = []
    full_area: list[int] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        label = int(rng.integers(1, len(CLASSES) + 1))
        for _attempt in range(10):
            mask = _shape_mask(rng, label, h, w)
            hidden = np.bincount(ids[mask], minlength=len(labels) + 1)[1:]
            visible = np.bincount(ids.ravel(), minlength=len(labels) + 1)[1:]
            if mask.any() and all(
                hidden[k] <= MAX_COVER * visible[k] and visible[k] - hidden[k] >= 0.5 * full_area[k]
                for k in range(len(labels))
            ):
                break
        else:
            continue  # no free place for this object: the scene simply has fewer
        colour = _colour(rng, img[mask].mean(axis=0))
        ys, xs = np.nonzero(mask)
        # A linear shade across the object mimics lighting, so fills are not flat.
        g = rng.uniform(-0.25, 0.25, size=2)
        span = max(1.0, float(np.ptp(xs) + np.ptp(ys)))
        shade = 1 + (g[0] * (xs - xs.mean()) + g[1] * (ys - ys.mean())) / span
        img[ys, xs] = colour * shade[:, None]
        labels.append(label)
        full_area.append(int(mask.sum()))
        ids[mask] = len(labels)
    img += rng.normal(0, rng.uniform(1, 6), size=img.shape).astype(np.float32)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.8))))
    boxes, keep = [], []
    for k in range(1, len(labels) + 1):
        m = ids == k
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        if rows.size:
            boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
            keep.append(labels[k - 1])
    return (
        np.array(pil, dtype=np.uint8),  # a writable copy: torch.from_numpy warns on read-only
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(keep, dtype=np.int64),
    )


def _image_rng(seed: int, index: int) -> np.random.Generator:
    # One stream per image: image i is the same whatever the count asked for.
    return np.random.default_rng([int(seed), int(index)])


def synth_images(n: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """n scenes as an NCHW float tensor in [0, 1] (calibration input)."""
    imgs = [render_scene(_image_rng(seed, i), size)[0] for i in range(n)]
    arr = np.stack(imgs) if imgs else np.zeros((0, size[0], size[1], 3), np.uint8)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def generate_dataset(
    out_dir: str | Path, seed: int, images: int, size: tuple[int, int] = (256, 256)
) -> Path:
    """Write out_dir/images/*.png and out_dir/annotations.json (COCO instances); return the JSON path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    coco_images, annotations = [], []
    for i in range(images):
        img, boxes, labels = render_scene(_image_rng(seed, i), size)
        name = f"{i:06d}.png"
        Image.fromarray(img).save(out / "images" / name)
        coco_images.append({"id": i + 1, "file_name": name, "width": img.shape[1], "height": img.shape[0]})
        for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist(), strict=True):
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label),
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
    doc = {
        "info": {"description": f"qbench synthetic shapes, seed {seed}"},
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)],
    }
    path = out / "annotations.json"
    path.write_text(json.dumps(doc))
    return path
