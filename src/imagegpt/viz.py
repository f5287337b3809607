"""Pictures people would rather look at than read: image grids, upscaled without blurring."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = ["image_grid"]


def image_grid(rows: Sequence[Sequence[np.ndarray]], scale: int = 8, pad: int = 2) -> Image.Image:
    """Lay out uint8 (H, W, 3) images in rows on a white background, each upscaled ``scale`` times with
    nearest-neighbour so that single pixels of a 32x32 image stay visible."""
    if not rows or not all(rows):
        raise ValueError("image_grid needs at least one non-empty row of images")
    h = max(img.shape[0] for row in rows for img in row) * scale
    w = max(img.shape[1] for row in rows for img in row) * scale
    ncols = max(len(row) for row in rows)
    canvas = Image.new("RGB", (pad + ncols * (w + pad), pad + len(rows) * (h + pad)), "white")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            tile = Image.fromarray(np.asarray(img, dtype=np.uint8)).convert("RGB")
            tile = tile.resize((img.shape[1] * scale, img.shape[0] * scale), Image.Resampling.NEAREST)
            canvas.paste(tile, (pad + c * (w + pad), pad + r * (h + pad)))
    return canvas
