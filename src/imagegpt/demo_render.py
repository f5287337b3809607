"""The demo's pictures: model-sized images upscaled without blur, the cut line between kept and painted rows, and
the surprise heat map with its scale. Pure numpy + Pillow (no gradio)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["display_scale", "strip", "with_cut", "heat_map", "PAD", "CUT_COLOR"]

PAD = 4  # white pixels around and between the tiles of a strip
CUT_COLOR = (230, 30, 60)
# anchors of a dark-to-bright heat scale (close to matplotlib's "inferno"), low surprise dark, high bright
_HEAT = np.array([(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21),
                  (250, 193, 39), (252, 255, 164)], dtype=np.float64)  # fmt: skip


def display_scale(height: int, width: int, side: int = 224) -> int:
    """The whole-number upscale that shows an image about ``side`` pixels across (at least 1)."""
    return max(1, side // max(height, width))


def _up(image: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(np.asarray(image, dtype=np.uint8), scale, axis=0), scale, axis=1)


def with_cut(image: np.ndarray, rows: int | None, scale: int, dim_below: bool = False) -> np.ndarray:
    """``image`` (H, W, 3) upscaled, with a line where row ``rows`` begins; ``dim_below`` fades the rows under it
    (the part the model will paint)."""
    out = _up(image, scale).copy()
    if rows is None:
        return out
    y = rows * scale
    if dim_below:
        out[y:] = (out[y:].astype(np.uint16) + 2 * 200) // 3
    thick = max(1, scale // 4)
    out[max(0, y - thick) : y + thick] = CUT_COLOR
    return out


def strip(images: Sequence[np.ndarray], scale: int, cut: int | None = None) -> np.ndarray:
    """Tiles (H, W, 3) side by side on white, each upscaled ``scale`` times; a cut line at row ``cut`` on each.

    Tile i's top-left corner is at (x, y) = (PAD + i * (W * scale + PAD), PAD)."""
    h, w = images[0].shape[:2]
    canvas = np.full((h * scale + 2 * PAD, PAD + len(images) * (w * scale + PAD), 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        x = PAD + i * (w * scale + PAD)
        canvas[PAD : PAD + h * scale, x : x + w * scale] = with_cut(image, cut, scale)
    return canvas


def heat_colors(values: np.ndarray, vmax: float) -> np.ndarray:
    """Values in [0, vmax] -> (..., 3) uint8 on the heat scale (clipped)."""
    t = np.clip(np.asarray(values, dtype=np.float64) / max(vmax, 1e-9), 0, 1) * (len(_HEAT) - 1)
    lo = np.floor(t).astype(int).clip(0, len(_HEAT) - 2)
    frac = (t - lo)[..., None]
    return np.rint(_HEAT[lo] * (1 - frac) + _HEAT[lo + 1] * frac).astype(np.uint8)


def heat_map(quantized: np.ndarray, bits: np.ndarray, scale: int) -> tuple[np.ndarray, float]:
    """[quantized image | heat map of ``bits`` (H, W) | scale bar with labels]; returns it and the scale's top.

    The scale runs from 0 bits to the 99th percentile of the image's surprise rounded up to a whole bit, so that
    one outlier does not wash the rest out (pixels above it show at the brightest color)."""
    vmax = float(max(1.0, np.ceil(np.percentile(bits, 99))))
    h, w = bits.shape
    left = strip([quantized, heat_colors(bits, vmax)], scale)
    bar_h, bar_w, label_w = h * scale, max(12, scale * 2), 64
    bar = heat_colors(np.linspace(vmax, 0, bar_h)[:, None].repeat(bar_w, axis=1), vmax)
    panel = Image.new("RGB", (bar_w + label_w + PAD, left.shape[0]), "white")
    panel.paste(Image.fromarray(bar), (0, PAD))
    draw = ImageDraw.Draw(panel)
    for value, y in ((vmax, PAD), (vmax / 2, PAD + bar_h // 2 - 6), (0.0, PAD + bar_h - 12)):
        draw.text((bar_w + 4, y), f"{value:g} bits", fill=(0, 0, 0))
    return np.concatenate([left, np.asarray(panel)], axis=1), vmax
