"""Reading images of every kind (PIL in any mode, arrays, tensors, paths) as (H, W, 3) uint8 RGB.

The conversion rules, and where they differ from transformers on purpose, are listed in :mod:`imagegpt.processor`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["to_uint8_rgb", "as_image_list"]

_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _pil_to_uint8_rgb(image: Image.Image, composite: bool = True) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 (see the module docstring); alpha composited on white or dropped."""
    if 0 in image.size:
        raise ValueError(f"image has a 0-sized dimension ({image.width}x{image.height}); it needs pixels")
    if image.mode in _HIGH_BIT_MODES:
        gray = np.asarray(image, dtype=np.float64)
        if not np.isfinite(gray).all():  # NaN would quantize to black without a word
            bad = int((~np.isfinite(gray)).sum())
            raise ValueError(f"image holds {bad} NaN or infinite values of {gray.size} (a float image, mode "
                             f"{image.mode}); it has no colors for them: fill or mask them first")  # fmt: skip
        lo, hi = float(gray.min()), float(gray.max())
        if image.mode == "F" and lo >= 0 and hi <= 1:
            gray = gray * 255
        elif hi > 255:
            gray = gray / 257 if hi <= 65535 else (gray - lo) * (255 / max(hi - lo, 1))
        else:  # 8-bit data in a wide container: Pillow's own conversion, as transformers' do_convert_rgb
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
        gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "La":
        image = image.convert("LA")  # Pillow converts premultiplied La to nothing else
    if composite and (image.mode in _ALPHA_MODES or image.info.get("transparency") is not None):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


def _array_to_uint8_rgb(array: np.ndarray, input_data_format: str | None = None) -> np.ndarray:
    """(H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4; uint8, integers in 0..255, or float -> (H, W, 3) uint8."""
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3:
        shape = array.shape
        if (shape[0] in (1, 3, 4) if input_data_format is None else input_data_format == "channels_first"):
            array = np.moveaxis(array, 0, -1)  # channels first: also when both ends could be, as transformers
        if array.shape[-1] not in (1, 3, 4):
            raise ValueError(f"image array of shape {shape} has no channel axis of 1, 3 or 4 (gray, RGB, RGBA); "
                             "pass (H, W), (H, W, C) or (C, H, W)")  # fmt: skip
    else:
        raise ValueError(f"an image array must have 2 or 3 dimensions, got shape {array.shape}")
    if 0 in array.shape[:2]:
        raise ValueError(f"image has a 0-sized dimension ({array.shape[1]}x{array.shape[0]}); it needs pixels")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"float image holds {int((~np.isfinite(array)).sum())} NaN or infinite values; it has "
                             "no colors for them: fill or mask them first")  # fmt: skip
        lo, hi = float(np.min(array)), float(np.max(array))
        if lo >= 0 and hi <= 1:
            array = np.rint(array.astype(np.float64) * 255)
        elif not (lo >= 0 and hi <= 255 and np.allclose(array, np.rint(array))):
            raise ValueError(f"float images must hold values in [0, 1] (or whole numbers in 0..255), got range "
                             f"[{lo}, {hi}]; scale the image to [0, 1] or pass uint8")  # fmt: skip
        array = np.rint(array).astype(np.uint8)
    elif array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"unsupported image array dtype {array.dtype}; pass uint8, integers or floats")
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"integer images must hold values in 0..255, got range [{array.min()}, {array.max()}]")
        array = array.astype(np.uint8)
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=2)
    if array.shape[-1] == 4:  # transformers' convert_to_rgb for arrays: alpha-blend onto white, round half even
        alpha = array[..., 3:4] / 255
        array = np.round(alpha * array[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def _load_path(image: str | os.PathLike) -> np.ndarray:
    path = Path(image)
    if not path.is_file():
        url = str(image).startswith(("http://", "https://"))
        hint = " (URLs are not downloaded: fetch the image first)" if url else ""
        raise FileNotFoundError(f"image file not found: {image}{hint}")
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and refuses at twice that: both are refused here, with one line
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()
                return _pil_to_uint8_rgb(ImageOps.exif_transpose(opened), composite=False)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"{path} is too large to read safely ({e}); if it is a real image you trust, shrink it "
                         "first or raise PIL.Image.MAX_IMAGE_PIXELS") from None  # fmt: skip
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not an image Pillow can read ({e})") from None


def to_uint8_rgb(image: Any, input_data_format: str | None = None) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        return _load_path(image)
    if isinstance(image, Image.Image):
        return _pil_to_uint8_rgb(image)
    if hasattr(image, "detach") and hasattr(image, "numpy"):  # torch tensor, without importing torch
        image = image.detach().cpu()
        image = (image.float() if str(image.dtype) == "torch.bfloat16" else image).numpy()
    if isinstance(image, np.ndarray):
        return _array_to_uint8_rgb(image, input_data_format)
    raise TypeError(f"unsupported image type {type(image).__name__}: pass PIL images, arrays, tensors or paths")


def as_image_list(images: Any) -> list:
    """One image, a batch array/tensor (N, ...) or (nested) lists of these -> a flat list of images."""
    if isinstance(images, (list, tuple)):
        return [item for entry in images for item in as_image_list(entry)]
    if getattr(images, "ndim", 0) == 4:
        return list(images)
    return [images]
