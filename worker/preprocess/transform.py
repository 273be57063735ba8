"""The `preprocess` transform: an image file or a [0, 1] tensor -> the model's input tensor.

Geometry first (stretch, letterbox or shorter-side resize + centre crop, done by PIL on the
8-bit image as the usual training pipelines do), then values ((p * scale - mean) / std, channel
order). Each image keeps its `Geometry`, the affine map from model-input pixels back to the
original image, so boxes predicted on a letterboxed or cropped input are scored against the
untouched annotations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from qbench.preprocess.spec import PreprocessSpec

_INTERPOLATION = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC}


class ImageReadError(ValueError):
    """An image file that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Geometry:
    """model-input pixel = original pixel * (sx, sy) + (ox, oy); original size (w, h)."""

    sx: float
    sy: float
    ox: float
    oy: float
    width: int
    height: int

    def to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        """xyxy boxes in model-input pixels -> original pixels, clipped to the image."""
        if boxes.numel() == 0:
            return boxes.reshape(0, 4).float()
        b = boxes.float().clone()
        b[:, 0::2] = ((b[:, 0::2] - self.ox) / self.sx).clamp(0, self.width)
        b[:, 1::2] = ((b[:, 1::2] - self.oy) / self.sy).clamp(0, self.height)
        return b

    def to_input(self, boxes: torch.Tensor) -> torch.Tensor:
        """The inverse of to_original (without clipping)."""
        b = boxes.float().clone()
        b[:, 0::2] = b[:, 0::2] * self.sx + self.ox
        b[:, 1::2] = b[:, 1::2] * self.sy + self.oy
        return b


def fit(image: Image.Image, spec: PreprocessSpec, size: tuple[int, int]) -> tuple[Image.Image, Geometry]:
    """The RGB image brought to size (h, w) by spec.resize, and how its pixels moved."""
    h, w = size
    w0, h0 = image.size
    interp = _INTERPOLATION[spec.interpolation]
    if spec.resize == "stretch":
        out = image.resize((w, h), interp) if (w0, h0) != (w, h) else image
        return out, Geometry(w / w0, h / h0, 0.0, 0.0, w0, h0)
    if spec.resize == "letterbox":
        r = min(h / h0, w / w0)
        nw, nh = max(1, round(w0 * r)), max(1, round(h0 * r))
        left, top = (w - nw) // 2, (h - nh) // 2
        canvas = Image.new("RGB", (w, h), (spec.pad_value,) * 3)
        canvas.paste(image.resize((nw, nh), interp), (left, top))
        return canvas, Geometry(nw / w0, nh / h0, float(left), float(top), w0, h0)
    # shorter_side_crop: as torchvision's ImageClassification (resize the shorter side, crop)
    r = max(h, w) / spec.crop_ratio / min(h0, w0)
    nw, nh = max(w, round(w0 * r)), max(h, round(h0 * r))
    left, top = (nw - w) // 2, (nh - h) // 2
    out = image.resize((nw, nh), interp).crop((left, top, left + w, top + h))
    return out, Geometry(nw / w0, nh / h0, float(-left), float(-top), w0, h0)


def to_values(pixels: np.ndarray | torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """HWC (or NHWC) RGB pixels in [0, 255] -> CHW (NCHW) float32 model input."""
    x = torch.as_tensor(np.asarray(pixels), dtype=torch.float32) if not isinstance(
        pixels, torch.Tensor) else pixels.float()
    x = x * spec.scale
    mean = torch.tensor(spec.mean, dtype=torch.float32)
    std = torch.tensor(spec.std, dtype=torch.float32)
    x = (x - mean) / std
    if spec.channels == "bgr":
        x = x.flip(-1)
    return x.movedim(-1, -3).contiguous()


def unit_to_input(batch01: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """An NCHW RGB batch in [0, 1] (synthetic scenes, already at the input size) -> model input."""
    if spec.channels == "rgb" and spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0) \
            and abs(spec.scale * 255.0 - 1.0) < 1e-9:
        return batch01  # already what the model takes: keep it bit for bit
    return to_values(batch01.movedim(-3, -1) * 255.0, spec)


def load_image(path: Path, spec: PreprocessSpec, size: tuple[int, int]) -> tuple[torch.Tensor, Geometry]:
    """One image file -> (CHW model input, its Geometry)."""
    try:
        with Image.open(path) as im:
            fitted, geometry = fit(im.convert("RGB"), spec, size)
            pixels = np.array(fitted, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file does not exist") from None
    # ImportError: ultralytics, once imported, patches Image.open to look for a HEIF plugin
    # on any file PIL cannot identify; the file is just as unreadable.
    except (UnidentifiedImageError, OSError, ImportError) as exc:
        raise ImageReadError(f"{path}: cannot decode image ({exc})") from None
    return to_values(pixels, spec), geometry


def load_images(paths: list[Path], spec: PreprocessSpec,
                size: tuple[int, int]) -> tuple[torch.Tensor, list[Geometry]]:
    pairs = [load_image(p, spec, size) for p in paths]
    if not pairs:
        return torch.zeros((0, 3, *size)), []
    return torch.stack([p[0] for p in pairs]), [p[1] for p in pairs]
