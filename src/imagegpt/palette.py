"""Color palettes (the clusters that pixels are quantized to), in [-1, 1] RGB as transformers stores them."""

from __future__ import annotations

import numpy as np

__all__ = ["uniform_palette", "grayscale_palette"]


def uniform_palette(levels: int = 8) -> np.ndarray:
    """``levels**3`` colors on a regular RGB grid, shape (levels**3, 3) in [-1, 1]; 8 levels give iGPT's 9 bits.

    A stand-in until a palette is fitted to data: every color is reachable, none is tuned to the images.
    """
    if not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive integer, got {levels!r}")
    axis = np.linspace(-1.0, 1.0, levels) if levels > 1 else np.zeros(1)
    r, g, b = np.meshgrid(axis, axis, axis, indexing="ij")
    return np.stack([r.ravel(), g.ravel(), b.ravel()], axis=1).astype(np.float32)


def grayscale_palette(k: int = 16) -> np.ndarray:
    """``k`` evenly spaced grays, shape (k, 3) in [-1, 1]."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    gray = np.linspace(-1.0, 1.0, k) if k > 1 else np.zeros(1)
    return np.repeat(gray[:, None], 3, axis=1).astype(np.float32)
