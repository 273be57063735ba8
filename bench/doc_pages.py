"""Synthetic document pages with known layout boxes, written as a COCO dataset.

Each page is drawn like a page of a paper: a running header, a title, paragraphs in one or two
columns, a figure (one of scikit-image's photographs, or a bar chart) with its caption below, a
ruled table with its caption above, a page number as footer. Every element's box is the tight
box of what was drawn, labelled with the CDLA layout classes (text, title, figure,
figure_caption, table, table_caption, header, footer), so a layout detector's boxes can be scored
by pycocotools like any detector's.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import matplotlib
from PIL import Image, ImageDraw, ImageFont

CDLA_CLASSES = ("text", "title", "figure", "figure_caption", "table", "table_caption", "header",
                "footer", "reference", "equation")
_VOCABULARY = """model layout detection quantization accuracy network image region table figure
result method training data page document analysis feature scale error measure value sample we
show that the of and in to is for with on by as are this from be an which these our under over
between each first second proposed approach baseline experiment"""
WORDS = tuple(_VOCABULARY.split())
PAGE_W, PAGE_H = 850, 1100
MARGIN = 70


def _font(bold: bool, size: int) -> ImageFont.FreeTypeFont:
    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / (
        "DejaVuSerif-Bold.ttf" if bold else "DejaVuSerif.ttf")
    return ImageFont.truetype(str(ttf), size)


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


class Page:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.image = Image.new("RGB", (PAGE_W, PAGE_H), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.boxes: list[tuple[str, tuple[float, float, float, float]]] = []

    def _ink(self, lines: list[tuple[float, float, str]], font) -> tuple[float, float, float, float]:
        x0 = y0 = float("inf")
        x1 = y1 = float("-inf")
        for x, y, text in lines:
            self.draw.text((x, y), text, fill="black", font=font)
            b = self.draw.textbbox((x, y), text, font=font)
            x0, y0, x1, y1 = min(x0, b[0]), min(y0, b[1]), max(x1, b[2]), max(y1, b[3])
        return x0, y0, x1, y1

    def text_block(self, label: str, x: float, y: float, width: float, n_lines: int, size: int,
                   bold: bool = False, centre: bool = False, last_short: bool = True,
                   fixed: str | None = None) -> float:
        font = _font(bold, size)
        lines, yy = [], y
        for i in range(n_lines):
            if fixed is not None:
                lines.append((x, yy, fixed))
                yy += size * 1.35
                continue
            words: list[str] = []
            target = width * (self.rng.uniform(0.4, 0.8) if (last_short and i == n_lines - 1
                                                             and n_lines > 1) else 1.0)
            while True:
                cand = words + [self.rng.choice(WORDS)]
                if self.draw.textlength(" ".join(cand), font=font) > target:
                    break
                words = cand
            text = " ".join(words) or self.rng.choice(WORDS)
            xx = x + (width - self.draw.textlength(text, font=font)) / 2 if centre else x
            lines.append((xx, yy, text))
            yy += size * 1.35
        self.boxes.append((label, self._ink(lines, font)))
        return yy

    def figure(self, x: float, y: float, width: float, height: float, photo) -> None:
        if photo is not None:
            im = Image.fromarray(photo).resize((int(width), int(height)))
            self.image.paste(im, (int(x), int(y)))
        else:  # a bar chart with axes
            d = self.draw
            d.line([(x, y), (x, y + height), (x + width, y + height)], fill="black", width=2)
            n = self.rng.randint(4, 9)
            bw = width / (n * 1.5)
            for i in range(n):
                h = self.rng.uniform(0.2, 0.95) * height
                bx = x + bw * 0.5 + i * bw * 1.5
                d.rectangle([bx, y + height - h, bx + bw, y + height],
                            fill=self.rng.choice(["#4c72b0", "#dd8452", "#55a868", "#c44e52"]))
        self.boxes.append(("figure", (x, y, x + width, y + height)))

    def table(self, x: float, y: float, width: float, rows: int, cols: int) -> float:
        font = _font(False, 13)
        row_h, col_w = 24, width / cols
        d = self.draw
        for r in range(rows + 1):
            d.line([(x, y + r * row_h), (x + width, y + r * row_h)], fill="black",
                   width=2 if r in (0, 1, rows) else 1)
        for c in range(cols + 1):
            d.line([(x + c * col_w, y), (x + c * col_w, y + rows * row_h)], fill="black", width=1)
        for r in range(rows):
            for c in range(cols):
                cell = (self.rng.choice(WORDS) if r == 0 or c == 0
                        else f"{self.rng.uniform(0, 100):.1f}")
                d.text((x + c * col_w + 6, y + r * row_h + 5), cell, fill="black", font=font)
        self.boxes.append(("table", (x, y, x + width, y + rows * row_h + 1)))
        return y + rows * row_h


def draw_page(rng: random.Random, photos: list, number: int) -> Page:
    page = Page(rng)
    inner = PAGE_W - 2 * MARGIN
    page.text_block("header", MARGIN, 30, inner * rng.uniform(0.4, 0.7), 1, 12, last_short=False)
    y = 90.0
    if rng.random() < 0.6:
        y = page.text_block("title", MARGIN, y, inner, rng.randint(1, 2), 24, bold=True,
                            centre=True) + 20
    two_columns = rng.random() < 0.5
    col_w = (inner - 30) / 2 if two_columns else inner
    columns = [MARGIN, MARGIN + col_w + 30] if two_columns else [MARGIN]
    placed_figure = placed_table = False
    for cx in columns:
        yy = y
        while yy < PAGE_H - 180:
            choice = rng.random()
            if choice < 0.15 and not placed_figure and yy < PAGE_H - 420:
                h = rng.uniform(160, 260)
                fig_w = col_w * rng.uniform(0.7, 1.0)
                fx = cx + (col_w - fig_w) / 2
                page.figure(fx, yy, fig_w, h, rng.choice(photos) if photos and rng.random() < 0.6
                            else None)
                yy = page.text_block("figure_caption", cx, yy + h + 10, col_w,
                                     rng.randint(1, 2), 13) + 18
                placed_figure = True
            elif choice < 0.3 and not placed_table and yy < PAGE_H - 380:
                yy = page.text_block("table_caption", cx, yy, col_w, 1, 13) + 8
                rows = rng.randint(4, 8)
                yy = page.table(cx, yy, col_w, rows, rng.randint(3, 5)) + 22
                placed_table = True
            elif choice < 0.4 and yy < PAGE_H - 250:
                yy = page.text_block("title", cx, yy, col_w * rng.uniform(0.4, 0.8), 1, 17,
                                     bold=True, last_short=False) + 12
            else:
                lines = min(rng.randint(3, 9), int((PAGE_H - 150 - yy) / 19))
                if lines < 2:
                    break
                yy = page.text_block("text", cx, yy, col_w, lines, 14) + 16
    page.text_block("footer", PAGE_W / 2 - 10, PAGE_H - 50, 30, 1, 12, fixed=str(number))
    return page


def _photos() -> list:
    import numpy as np
    from skimage import data

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera"):
        arr = np.asarray(getattr(data, name)())
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        out.append(arr[..., :3])
    return out


def write_pages(folder: Path, count: int, seed: int = 0) -> tuple[Path, Path]:
    """COCO dataset of `count` pages: (images folder, annotations file). Category id = class
    index + 1."""
    rng = random.Random(seed)
    photos = _photos()
    images_dir = folder / "pages"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        page = draw_page(rng, photos, i + 1)
        name = f"page-{i:03d}.png"
        page.image.save(images_dir / name)
        images.append({"id": i + 1, "file_name": name, "width": PAGE_W, "height": PAGE_H})
        for label, (x0, y0, x1, y1) in page.boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": CDLA_CLASSES.index(label) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": 0})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CDLA_CLASSES)]}
    ann = folder / "pages.json"
    ann.write_text(json.dumps(coco))
    return images_dir, ann
