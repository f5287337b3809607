"""ImageGPTImageProcessor: images -> palette token ids (and back), identical to transformers' processor.

Steps, as transformers: convert to RGB, resize with Pillow on uint8 (BILINEAR by default), rescale by 1/255 and
normalize with mean = std = 0.5 (so pixels lie in [-1, 1]), then map each pixel to the nearest palette color
(squared Euclidean distance, same arithmetic and dtypes as transformers so that ties break the same way).
Quantization runs in chunks of pixels, so memory stays bounded whatever the batch size.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from imagegpt.checkpoint import atomic_write_text
from imagegpt.hub import resolve_file

logger = logging.getLogger(__name__)

__all__ = ["ImageGPTImageProcessor", "BatchFeature", "color_quantize"]

CONFIG_NAME = "preprocessor_config.json"
_KNOWN = ("do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
          "image_std", "do_color_quantize", "add_start_token")  # fmt: skip
_IGNORED = {"image_processor_type", "feature_extractor_type", "processor_class", "do_convert_rgb"}
_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class BatchFeature(dict):
    """A dict with attribute access: ``out.input_ids`` or ``out["input_ids"]``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def color_quantize(pixels: np.ndarray, clusters: np.ndarray, chunk_size: int = 16384) -> np.ndarray:
    """Index of the nearest cluster for each pixel; pixels (..., 3) -> ids (...) as int64.

    The distance is transformers' ``|x|^2 - 2 x.c + |c|^2`` with the same dtypes, evaluated ``chunk_size`` pixels
    at a time so the (pixels x clusters) matrix never exceeds ``chunk_size * len(clusters)`` entries.
    """
    shape = pixels.shape[:-1]
    x = pixels.reshape(-1, 3)
    c = clusters.T
    c2 = np.sum(np.square(c), axis=0)
    out = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), chunk_size):
        a = x[start : start + chunk_size]
        d = np.sum(np.square(a), axis=1)[:, None] - 2 * np.matmul(a, c) + c2[None, :]
        out[start : start + chunk_size] = np.argmin(d, axis=1)
    return out.reshape(shape)


def _size_dict(size: Any) -> dict[str, int]:
    if isinstance(size, int):
        size = {"height": size, "width": size}
    if not isinstance(size, dict) or not {"height", "width"} <= set(size):
        raise ValueError(f"size must be an int or a dict with 'height' and 'width', got {size!r}")
    h, w = int(size["height"]), int(size["width"])
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {h}x{w}")
    return {"height": h, "width": w}


def _clusters_array(clusters: Any) -> np.ndarray | None:
    if clusters is None:
        return None
    if hasattr(clusters, "detach"):  # torch tensor
        clusters = clusters.detach().cpu().numpy()
    array = np.array(clusters)
    if array.ndim != 2 or array.shape[1] != 3 or array.shape[0] == 0:
        raise ValueError(f"clusters must be an array of shape (K, 3) of RGB colors in [-1, 1], got {array.shape}")
    return array


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _pil_to_uint8_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8. Transparent pixels become white; 16/32-bit and float grayscale are
    scaled to 8 bits rather than clipped."""
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image has a 0-sized dimension ({image.width}x{image.height})")
    if image.mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if image.mode in _HIGH_BIT_MODES:
        gray = np.asarray(image).astype(np.float64)
        if image.mode == "F" and gray.min() >= 0 and gray.max() <= 1:
            gray = gray * 255
        elif gray.max() > 255:
            gray = gray / 257 if gray.max() <= 65535 else (gray - gray.min()) * 255 / np.ptp(gray)
        gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    return np.asarray(_composite_on_white(image) if has_alpha else image.convert("RGB"), dtype=np.uint8)


def _array_to_uint8_rgb(array: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4; uint8, or float in [0, 1] -> (H, W, 3) uint8."""
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3:
        if array.shape[0] in (1, 3, 4):  # channels first wins when ambiguous, as transformers decides
            array = np.moveaxis(array, 0, -1)
        elif array.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"image array of shape {array.shape} has no channel axis of 1, 3 or 4 (gray, RGB, RGBA); "
                "pass (H, W), (H, W, C) or (C, H, W)"
            )
    else:
        raise ValueError(f"an image array must have 2 or 3 dimensions, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image has a 0-sized dimension ({array.shape[1]}x{array.shape[0]})")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        lo, hi = float(np.min(array)), float(np.max(array))
        if lo >= 0 and hi <= 1:
            array = np.rint(array * 255)
        elif not (lo >= 0 and hi <= 255 and np.allclose(array, np.rint(array))):
            raise ValueError(
                f"float images must hold values in [0, 1] (or whole numbers in 0..255); got range [{lo}, {hi}]"
            )
        array = array.astype(np.uint8)
    elif array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"integer images must hold values in 0..255, got range [{array.min()}, {array.max()}]")
        array = array.astype(np.uint8)
    channels = array.shape[-1]
    if channels == 1:
        return np.repeat(array, 3, axis=2)
    if channels == 4:
        return _pil_to_uint8_rgb(Image.fromarray(np.ascontiguousarray(array), mode="RGBA"))
    return np.ascontiguousarray(array)


def _to_uint8_rgb(image: Any) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                return _pil_to_uint8_rgb(opened)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{path} is not an image Pillow can read ({e})") from None
    if isinstance(image, Image.Image):
        return _pil_to_uint8_rgb(image)
    if hasattr(image, "detach") and hasattr(image, "numpy"):  # torch tensor, without importing torch
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        return _array_to_uint8_rgb(image)
    raise TypeError(f"unsupported image type {type(image).__name__}: pass PIL images, arrays, tensors or paths")


def _as_list(images: Any) -> list:
    if isinstance(images, (list, tuple)):
        items = list(images)
    elif hasattr(images, "ndim") and images.ndim == 4:  # a batch array/tensor (N, ...)
        items = list(images)
    else:
        items = [images]
    if not items:
        raise ValueError("no images given (empty list)")
    return items


class ImageGPTImageProcessor:
    """Turns images into ImageGPT ``input_ids`` (B, H*W), a drop-in for transformers' ``ImageGPTImageProcessor``.

    Accepts PIL images in any mode, numpy arrays and torch tensors ((H, W), (H, W, C) or (C, H, W); uint8, or
    float in [0, 1]), file paths, and lists of these. ``decode`` maps ids back to uint8 RGB images.

    Example::

        processor = ImageGPTImageProcessor(clusters=palette, size={"height": 32, "width": 32})
        ids = processor(images, return_tensors="pt", add_start_token=True)["input_ids"]  # (B, 1 + 1024)
    """

    model_input_names = ["input_ids"]

    def __init__(
        self,
        clusters: Any = None,
        do_resize: bool = True,
        size: int | dict[str, int] | None = None,
        resample: int = Image.Resampling.BILINEAR,
        do_normalize: bool = True,
        do_color_quantize: bool = True,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        add_start_token: bool = False,
        chunk_size: int = 16384,
        **kwargs: Any,
    ) -> None:
        self.clusters = _clusters_array(clusters)
        self.do_resize = do_resize
        self.size = _size_dict(size if size is not None else {"height": 256, "width": 256})
        self.resample = int(resample)
        self.do_normalize = do_normalize
        self.do_color_quantize = do_color_quantize
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.add_start_token = add_start_token
        self.chunk_size = chunk_size
        unknown = set(kwargs) - _IGNORED
        if unknown:
            logger.debug("ignoring unknown processor settings: %s", ", ".join(sorted(unknown)))

    @property
    def start_token_id(self) -> int:
        """The start token: one past the last color (vocab_size - 1 of a model on this palette)."""
        if self.clusters is None:
            raise ValueError("this processor has no clusters (palette)")
        return len(self.clusters)

    def __call__(self, images: Any, return_tensors: str | None = None, **overrides: Any) -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors, **overrides)

    def preprocess(self, images: Any, return_tensors: str | None = None, **overrides: Any) -> BatchFeature:
        """Images -> ``input_ids`` (or ``pixel_values`` (B, 3, H, W) with ``do_color_quantize=False``).

        ``overrides`` replace this processor's settings for one call: ``do_resize``, ``size``, ``resample``,
        ``do_normalize``, ``do_color_quantize``, ``clusters``, ``add_start_token``, ... ``return_tensors`` is
        ``"pt"``, ``"np"`` or None (a list of arrays, as transformers).
        """
        bad = set(overrides) - set(_KNOWN) - {"clusters"}
        if bad:
            raise TypeError(f"unknown argument(s) {', '.join(sorted(bad))}; known: clusters, {', '.join(_KNOWN)}")
        s = {k: overrides.get(k, getattr(self, k)) for k in _KNOWN}
        clusters = _clusters_array(overrides["clusters"]) if "clusters" in overrides else self.clusters
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        size = _size_dict(s["size"])
        arrays = []
        for image in _as_list(images):
            rgb = _to_uint8_rgb(image)  # (H, W, 3) uint8
            if s["do_resize"] and rgb.shape[:2] != (size["height"], size["width"]):
                rgb = np.asarray(Image.fromarray(rgb).resize((size["width"], size["height"]), resample=s["resample"]))
            arrays.append(rgb)
        if len({a.shape for a in arrays}) > 1:
            raise ValueError("images have different sizes; set do_resize=True (or resize them) to batch them")
        x = np.stack(arrays)  # (B, H, W, 3) uint8
        # transformers' arithmetic, dtypes included: rescale in float64 -> float32, then normalize in float32
        x = (x.astype(np.float64) * s["rescale_factor"]).astype(np.float32) if s["do_rescale"] else x.astype(np.float32)
        if s["do_normalize"]:
            x = (x - np.array(s["image_mean"], np.float32)) / np.array(s["image_std"], np.float32)
        if not s["do_color_quantize"]:
            return self._pack("pixel_values", list(x.transpose(0, 3, 1, 2)), return_tensors)
        if clusters is None:
            raise ValueError(
                "color quantization needs clusters: pass clusters=(K, 3) palette, load a processor that has them, "
                "or set do_color_quantize=False"
            )
        ids = color_quantize(x, clusters, self.chunk_size).reshape(len(x), -1)  # (B, H*W)
        if s["add_start_token"]:
            ids = np.concatenate([np.full((len(ids), 1), len(clusters), dtype=np.int64), ids], axis=1)
        return self._pack("input_ids", list(ids), return_tensors)

    @staticmethod
    def _pack(key: str, rows: list[np.ndarray], return_tensors: str | None) -> BatchFeature:
        if return_tensors is None:
            return BatchFeature({key: rows})
        array = np.stack(rows)
        if return_tensors == "np":
            return BatchFeature({key: array})
        import torch

        return BatchFeature({key: torch.from_numpy(array)})

    def decode(self, input_ids: Any, height: int | None = None, width: int | None = None) -> np.ndarray:
        """Token ids (B, H*W) or (B, 1 + H*W) with a leading start token -> uint8 RGB images (B, H, W, 3).

        A 1-D sequence gives one image (H, W, 3). Colors are ``rint(127.5 * (clusters + 1))``.
        """
        if self.clusters is None:
            raise ValueError("decode needs clusters (a palette)")
        ids = np.asarray(input_ids.detach().cpu() if hasattr(input_ids, "detach") else input_ids)
        single = ids.ndim == 1
        ids = ids[None] if single else ids
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"input_ids must be integer ids of shape (B, H*W), got {ids.shape} {ids.dtype}")
        h = height or self.size["height"]
        w = width or self.size["width"]
        if ids.shape[1] == h * w + 1 and (ids[:, 0] == len(self.clusters)).all():
            ids = ids[:, 1:]
        if ids.shape[1] != h * w:
            raise ValueError(f"sequences of length {ids.shape[1]} do not make {h}x{w} images (need {h * w})")
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.clusters)):
            raise ValueError(f"ids must lie in [0, {len(self.clusters)}), got [{ids.min()}, {ids.max()}]")
        colors = np.rint(127.5 * (np.asarray(self.clusters, np.float64) + 1.0)).clip(0, 255).astype(np.uint8)
        images = colors[ids].reshape(len(ids), h, w, 3)
        return images[0] if single else images

    # --- serialization, in transformers' preprocessor_config.json format ------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {k: copy.deepcopy(getattr(self, k)) for k in _KNOWN if k != "add_start_token"}
        out["clusters"] = None if self.clusters is None else self.clusters.tolist()
        out["image_processor_type"] = "ImageGPTImageProcessor"
        if self.add_start_token:
            out["add_start_token"] = True  # ours only; transformers ignores it
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json_string())

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``preprocessor_config.json`` into ``save_directory``; returns its path."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.to_json_file(directory / CONFIG_NAME)
        return directory / CONFIG_NAME

    @classmethod
    def from_dict(cls, config: dict[str, Any], **kwargs: Any) -> "ImageGPTImageProcessor":
        return cls(**{**config, **kwargs})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "ImageGPTImageProcessor":
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        cache_dir: str | os.PathLike | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> "ImageGPTImageProcessor":
        """Read ``preprocessor_config.json`` from a directory or Hub id; ``kwargs`` override its settings."""
        path = resolve_file(name_or_path, CONFIG_NAME, cache_dir=cache_dir, revision=revision, token=token,
                            local_files_only=local_files_only)  # fmt: skip
        processor = cls.from_json_file(path)
        return cls.from_dict(processor.to_dict(), **kwargs) if kwargs else processor

    def __repr__(self) -> str:
        n = 0 if self.clusters is None else len(self.clusters)
        return f"{type(self).__name__}({n} colors, size={self.size}, resample={self.resample})"
