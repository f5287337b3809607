"""Pictures people would rather look at than read: image grids, upscaled without blurring."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from imagegpt.atomic import atomic_write as _atomic_write

__all__ = ["image_grid", "plot_loss_curve", "plot_confusion"]


def image_grid(rows: Sequence[Sequence[np.ndarray]], scale: int = 8, pad: int = 2,
               header: Sequence[str] | None = None) -> Image.Image:  # fmt: skip
    """Lay out uint8 (H, W, 3) images in rows on a white background, each upscaled ``scale`` times with
    nearest-neighbour so that single pixels of a 32x32 image stay visible. ``header``: a label drawn above each
    column (what the column shows)."""
    if not rows or not all(rows):
        raise ValueError("image_grid needs at least one non-empty row of images")
    h = max(img.shape[0] for row in rows for img in row) * scale
    w = max(img.shape[1] for row in rows for img in row) * scale
    ncols = max(len(row) for row in rows)
    top = HEADER_HEIGHT if header else 0
    canvas = Image.new("RGB", (pad + ncols * (w + pad), top + pad + len(rows) * (h + pad)), "white")
    if header:
        draw = ImageDraw.Draw(canvas)
        for c, label in enumerate(header[:ncols]):
            x = pad + c * (w + pad)
            while label and draw.textlength(label) > w:  # clip to the column
                label = label[:-1]
            draw.text((x + (w - draw.textlength(label)) / 2, 3), label, fill="black")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            tile = Image.fromarray(np.asarray(img, dtype=np.uint8)).convert("RGB")
            tile = tile.resize((img.shape[1] * scale, img.shape[0] * scale), Image.Resampling.NEAREST)
            canvas.paste(tile, (pad + c * (w + pad), top + pad + r * (h + pad)))
    return canvas


HEADER_HEIGHT = 16  # pixels above the grid for column labels (Pillow's default font is 11 px high)
_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (127, 127, 127))  # fmt: skip


def _tick_label(value: float, span: float) -> str:
    """Steps print as whole numbers; a short fractional axis (epochs: 0 to 2) keeps 3 significant digits, or
    its ticks 0.49 and 0.98 would both read "0" and "1"."""
    return f"{value:.0f}" if span >= 20 or float(value).is_integer() else f"{value:.3g}"


def plot_loss_curve(records: list[dict], path: str | os.PathLike, size: tuple[int, int] = (720, 440),
                    curves: Sequence[tuple[str, str]] = (("loss", "train"), ("val_loss", "val")),
                    ylabel: str = "loss (nats/token)", xlabel: str = "step") -> None:  # fmt: skip
    """Draw ``records``' values against their "step" as a PNG, with Pillow only: one colored line per
    (key, legend label) of ``curves``, up to seven (default: train loss in blue, validation loss in orange);
    records without a finite value for a key are skipped for that curve. Any other quantity works as the x axis
    (a layer, a number of images): put it under "step" and name it with ``xlabel``."""
    if len(curves) > len(_COLORS):
        raise ValueError(f"at most {len(_COLORS)} curves fit one plot, got {len(curves)}")
    finite = lambda v: v is not None and math.isfinite(v)  # noqa: E731
    lines = [([(r["step"], r[key]) for r in records if finite(r.get(key))], color, label)
             for (key, label), color in zip(curves, _COLORS)]  # fmt: skip
    points = [p for series, _, _ in lines for p in series]
    if not points:
        return
    w, h = size
    left, right, bottom = 70, 20, 50
    top = max(30, 18 + 14 * len(curves))  # the legend stacks above the plot, never over a line
    x0, x1 = min(s for s, _ in points), max(s for s, _ in points)
    y0, y1 = min(v for _, v in points), max(v for _, v in points)
    x1, pad = max(x1, x0 + 1), max((y1 - y0) * 0.05, 1e-3)
    y0, y1 = y0 - pad, y1 + pad

    def xy(s: float, v: float) -> tuple[float, float]:
        return (left + (s - x0) / (x1 - x0) * (w - left - right), top + (y1 - v) / (y1 - y0) * (h - top - bottom))

    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    small_ints = all(float(s).is_integer() for s, _ in points) and x1 - x0 <= 20  # layers: a tick on each
    xticks = range(int(x0), int(x1) + 1) if small_ints else [x0 + i * (x1 - x0) / 4 for i in range(5)]
    for i in range(5):  # grid lines and tick labels
        v = y0 + i * (y1 - y0) / 4
        y = xy(x0, v)[1]
        d.line([(left, y), (w - right, y)], fill=(230, 230, 230))
        d.text((5, y - 6), f"{v:.3g}", fill="black")
    for s in xticks:
        x = xy(s, y0)[0]
        d.line([(x, h - bottom), (x, h - bottom + 4)], fill="black")
        tick = _tick_label(s, x1 - x0)
        d.text((x - d.textlength(tick) / 2, h - bottom + 8), tick, fill="black")
    d.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
    d.text((w // 2 - d.textlength(xlabel) / 2, h - 20), xlabel, fill="black")
    d.text((5, 8), ylabel, fill="black")
    for i, (series, color, label) in enumerate(lines):
        if not series:
            continue
        ly = 10 + 14 * i
        xys = [xy(s, v) for s, v in sorted(series)]
        if len(xys) > 1:
            d.line(xys, fill=color, width=2)
        if len(xys) <= 60:  # sparse series (evaluations) get a dot per measurement
            for x, y in xys:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        lx = w - right - 6 - d.textlength(label)  # legends right-aligned: long labels stay on the canvas
        d.line([(lx - 26, ly + 6), (lx - 6, ly + 6)], fill=color, width=3)
        d.text((lx, ly), label, fill="black")
    _atomic_write(Path(path), lambda p: img.save(p, format="PNG"))


def plot_confusion(matrix: np.ndarray, names: Sequence[str], path: str | os.PathLike, cell: int = 44) -> None:
    """Draw a confusion matrix (rows = true class, columns = predicted) as a PNG heat map: each cell shaded by its
    share of the row, with the count written in it."""
    matrix = np.asarray(matrix)
    n = len(matrix)
    if matrix.shape != (n, n) or len(names) != n:
        raise ValueError(f"need a square matrix and one name per class, got {matrix.shape} and {len(names)} names")
    label_w = max(60, 7 * max((len(str(x)) for x in names), default=1) + 10)
    size = (label_w + n * cell + 10, label_w + n * cell + 30)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    for i in range(n):
        for j in range(n):
            x, y = label_w + j * cell, label_w + i * cell
            shade = int(255 - 200 * share[i, j])
            d.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(shade, shade, 255), outline=(220, 220, 220))
            d.text((x + 4, y + cell // 2 - 6), str(int(matrix[i, j])), fill="black" if shade > 130 else "white")
        d.text((4, label_w + i * cell + cell // 2 - 6), str(names[i])[:12], fill="black")
        d.text((label_w + i * cell + 2, label_w - 14 - 12 * (i % 2)), str(names[i])[:7], fill="black")
    d.text((4, 4), "true (rows) vs predicted (columns)", fill="black")
    acc = np.trace(matrix) / max(matrix.sum(), 1)
    d.text((label_w, size[1] - 22), f"accuracy {acc:.4f} on {int(matrix.sum())} images", fill="black")
    _atomic_write(Path(path), lambda p: img.save(p, format="PNG"))
