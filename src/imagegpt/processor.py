"""ImageGPTImageProcessor: images -> palette token ids (and back), identical to transformers' processor.

As transformers' PIL backend (``transformers.ImageGPTImageProcessor`` without torchvision): RGB uint8 -> Pillow
resize on uint8 -> x/255 (float64 -> float32) -> (x - 0.5)/0.5 (float32) -> nearest color by its |x|^2 - 2x.c + |c|^2
(same dtypes and order: same ids, ties included), in chunks of pixels so memory stays bounded.

To RGB (transformers raises on most non-RGB inputs unless ``do_convert_rgb=True``; we always convert, as it then
does): PIL transparency (RGBA, LA, PA, RGBa, La, ``transparency``) is composited on white, other modes use
``convert("RGB")``; I/I;16/F grayscale beyond 0..255 is scaled to 8 bits (/257, or min-max past 65535) and F in
[0, 1] times 255, where Pillow clips. Paths load as transformers' ``load_image``: EXIF orientation applied, alpha
dropped. Arrays/tensors: HW, HWC or CHW with C in 1, 3, 4, channels first when both ends fit (as transformers;
``input_data_format`` decides); 4 channels blended on white by transformers' formula; floats in [0, 1] are scaled
by 255 and rounded (transformers truncates, then rescales them twice: near-black), whole-number floats 0..255 as is.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from PIL import Image

from imagegpt.atomic import atomic_write_text
from imagegpt.hub import resolve_file
from imagegpt.images import as_image_list, to_uint8_rgb

logger = logging.getLogger(__name__)

__all__ = ["ImageGPTImageProcessor", "ImageGPTFeatureExtractor", "BatchFeature", "color_quantize"]

CONFIG_NAME = "preprocessor_config.json"
_KNOWN = ("do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
          "image_std", "do_color_quantize", "add_start_token")  # fmt: skip
# accepted and ignored without a word: bookkeeping keys of transformers' files, and call options that are no-ops here
_QUIET = {"image_processor_type", "feature_extractor_type", "processor_class", "_processor_class", "auto_map",
          "do_convert_rgb", "input_data_format", "data_format", "default_to_square", "disable_grouping"}  # fmt: skip


class BatchFeature(dict):
    """A dict with attribute access: ``out.input_ids`` or ``out["input_ids"]``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args: Any, **kwargs: Any) -> "BatchFeature":
        """As transformers' ``BatchFeature.to``: a device moves every tensor; a dtype (``.to(torch.float16)``,
        ``dtype=``) casts only the floating-point ones, so ``input_ids`` stay integer ids."""
        import torch

        device = kwargs.get("device")
        dtype = kwargs.get("dtype")
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            elif isinstance(arg, (str, torch.device, int)):
                device = arg
            else:
                raise ValueError(f"BatchFeature.to() takes a device or a dtype, got {arg!r}")
        out = {}
        for k, v in self.items():
            if isinstance(v, torch.Tensor):
                v = v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point() else None)
            out[k] = v
        return BatchFeature(out)


def color_quantize(pixels: np.ndarray, clusters: np.ndarray, chunk_size: int = 4096) -> np.ndarray:
    """Index of the nearest cluster for each pixel; pixels (..., 3) -> ids (...) as int64.

    transformers' ``|x|^2 - 2 x.c + |c|^2`` with its dtypes and rounding, ``chunk_size`` pixels at a time (in
    place: one ``chunk_size x K`` matrix). No lone-pixel chunk unless there is one pixel: BLAS rounds N=1 differently.
    """
    if chunk_size < 2:
        raise ValueError(f"chunk_size must be at least 2, got {chunk_size}")
    shape = pixels.shape[:-1]
    x = pixels.reshape(-1, 3)
    c = clusters.T
    c2 = np.sum(np.square(c), axis=0)
    out = np.empty(len(x), dtype=np.int64)
    starts = list(range(0, len(x), chunk_size))
    if len(starts) > 1 and len(x) - starts[-1] == 1:
        starts.pop()  # the last chunk takes the lone pixel
    for start, stop in zip(starts, starts[1:] + [len(x)]):
        a = x[start:stop]
        d = np.matmul(a, c)  # the exact operations of a2 - 2 * ab + c2, without temporaries
        d *= -2
        d += np.sum(np.square(a), axis=1)[:, None]
        d += c2[None, :]
        out[start:stop] = np.argmin(d, axis=1)
    return out.reshape(shape)


def _size_dict(size: Any) -> dict[str, int]:
    if isinstance(size, (int, np.integer)):
        size = {"height": size, "width": size}
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        size = {"height": size[0], "width": size[1]}
    if not isinstance(size, dict) or not {"height", "width"} <= set(size):
        raise ValueError(f"size must be an int, (height, width) or a dict with 'height' and 'width', got {size!r}")
    h, w = int(size["height"]), int(size["width"])
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {h}x{w}")
    return {"height": h, "width": w}


def _clusters_array(clusters: Any) -> np.ndarray | None:
    """As transformers: ``np.array(clusters)`` (lists give float64; arrays and tensors keep their dtype)."""
    if clusters is None:
        return None
    if hasattr(clusters, "detach"):  # torch tensor
        clusters = clusters.detach().cpu().numpy()
    try:
        array = np.array(clusters)
    except ValueError:  # ragged nested lists
        array = np.array(clusters, dtype=object)
    if array.ndim != 2 or array.shape[1] != 3 or array.shape[0] == 0:
        raise ValueError(f"clusters must be an array of shape (K, 3) of RGB colors in [-1, 1], got shape "
                         f"{array.shape}")  # fmt: skip
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        for (i, j), value in np.ndenumerate(array):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
                value = value.item() if isinstance(value, np.generic) else value
                raise ValueError(f"clusters[{i}][{j}] is {value!r}, not a number: clusters are RGB colors in [-1, 1]")
        array = array.astype(np.float64)
    bad = ~np.isfinite(array) | (np.abs(array) > 1 + 1e-4)  # a NaN or out-of-range color quantizes silently wrong
    if bad.any():
        i, j = (int(x) for x in np.argwhere(bad)[0])
        raise ValueError(f"clusters[{i}][{j}] is {array[i, j].item()!r}: palette colors must be finite and lie in "
                         "[-1, 1] "
                         f"({int(bad.any(axis=1).sum())} of {len(array)} colors are not); is this a palette file?")
    return array


class ImageGPTImageProcessorKwargs(TypedDict, total=False):
    """The per-call settings ``preprocess`` accepts (transformers' ``valid_kwargs``)."""

    clusters: Any
    do_resize: bool
    size: Any
    resample: int
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: Any
    image_std: Any
    do_color_quantize: bool
    add_start_token: bool
    input_data_format: str
    do_convert_rgb: bool


class ImageGPTImageProcessor:
    """Turns images into ImageGPT ``input_ids`` (B, H*W), a drop-in for transformers' ``ImageGPTImageProcessor``.

    Takes PIL images (any mode), arrays and tensors (HW, HWC, CHW; uint8 or float in [0, 1]), paths, and lists of
    these (conversion rules: module docstring). ``decode`` maps ids back to uint8 RGB images.

    Args:
        clusters: the palette, (K, 3) in [-1, 1] (nested lists, array or tensor); needed to quantize and decode.
        do_resize, size, resample: resize to ``size`` (an int for a square, or {"height", "width"}) with this
            Pillow filter (an ``Image.Resampling`` or its int; BILINEAR as transformers' code).
        do_rescale, rescale_factor, do_normalize, image_mean, image_std: x * factor, then (x - mean) / std.
        do_color_quantize: return ``input_ids``; when False, ``pixel_values`` (B, 3, H, W) float32.
        add_start_token: prepend the start token ``len(clusters)`` to every row of ``input_ids``.
        chunk_size: pixels quantized at a time (bounds memory: chunk_size x K float64); not saved.
        **kwargs: transformers' bookkeeping keys are ignored quietly, other unknown settings with a warning.

    Example::

        processor = ImageGPTImageProcessor(clusters=palette, size={"height": 32, "width": 32})
        ids = processor(images, return_tensors="pt", add_start_token=True)["input_ids"]  # (B, 1 + 1024)
    """

    model_input_names = ["input_ids"]
    valid_kwargs = ImageGPTImageProcessorKwargs

    def __init__(
        self,
        clusters: Any = None,
        do_resize: bool = True,
        size: int | Sequence[int] | dict[str, int] | None = None,
        resample: int = Image.Resampling.BILINEAR,
        do_normalize: bool = True,
        do_color_quantize: bool = True,
        do_rescale: bool = True, rescale_factor: float = 1 / 255,
        image_mean: float | Sequence[float] = (0.5, 0.5, 0.5), image_std: float | Sequence[float] = (0.5, 0.5, 0.5),
        add_start_token: bool = False,
        chunk_size: int = 4096,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        self.clusters = _clusters_array(clusters)
        self.do_resize = bool(do_resize)
        self.size = _size_dict(size if size is not None else {"height": 256, "width": 256})
        _resample(resample)
        self.resample = resample  # as given (an int or an Image.Resampling), as transformers
        self.do_normalize = bool(do_normalize)
        self.do_color_quantize = bool(do_color_quantize)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        # kept as given (a number, list or tuple), as transformers does; checked here, expanded per call
        _per_channel(image_mean, "image_mean"), _per_channel(image_std, "image_std")
        self.image_mean, self.image_std = _as_given(image_mean), _as_given(image_std)
        # transformers' RGB switch; we always convert to RGB (module docstring), so it is kept only to round-trip
        self.do_convert_rgb = kwargs.pop("do_convert_rgb", None)
        self.add_start_token = bool(add_start_token)
        self.chunk_size = int(chunk_size)
        if self.chunk_size < 2:
            raise ValueError(f"chunk_size must be at least 2, got {chunk_size}")
        unknown = set(kwargs) - _QUIET
        if unknown:
            logger.warning("ignoring unsupported image processor setting(s): %s", ", ".join(sorted(unknown)))

    @property
    def start_token_id(self) -> int:
        """The start token: one past the last color (vocab_size - 1 of a model on this palette)."""
        if self.clusters is None:
            raise ValueError("this processor has no clusters (palette)")
        return len(self.clusters)

    def preprocess(self, images: Any, return_tensors: str | None = None, **overrides: Any) -> BatchFeature:
        """Images (one, or a list: a batch) -> ``input_ids`` (B, H*W) int64, or ``pixel_values`` (B, 3, H, W) float32
        with ``do_color_quantize=False``; ``return_tensors``: "pt", "np" or None (a list of arrays, as transformers).

        ``overrides`` replace any constructor setting but chunk_size for this call (None keeps it); also
        ``input_data_format`` ("channels_first"/"channels_last") and ``do_convert_rgb`` (a no-op: always RGB).
        """
        bad = set(overrides) - set(_KNOWN) - {"clusters", "input_data_format", "do_convert_rgb"}
        if bad:
            raise TypeError(f"unknown argument(s) {', '.join(sorted(bad))}; known: clusters, {', '.join(_KNOWN)}")
        s = {k: getattr(self, k) if overrides.get(k) is None else overrides[k] for k in _KNOWN}  # None: default
        clusters = self.clusters if overrides.get("clusters") is None else _clusters_array(overrides["clusters"])
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        data_format = overrides.get("input_data_format")
        if data_format not in (None, "channels_first", "channels_last"):
            raise ValueError(f"input_data_format must be 'channels_first' or 'channels_last', got {data_format!r}")
        size, resample = _size_dict(s["size"]), _resample(s["resample"])
        items = as_image_list(images)
        if not items:
            raise ValueError("no images given (empty list); pass an image or a non-empty list of images")
        arrays = []
        for image in items:
            rgb = to_uint8_rgb(image, data_format)  # (H, W, 3) uint8
            if s["do_resize"]:  # Pillow on the uint8 image, as transformers (a same-size resize is a copy)
                rgb = np.asarray(Image.fromarray(rgb).resize((size["width"], size["height"]), resample=resample))
            arrays.append(rgb)
        if len({a.shape for a in arrays}) > 1:
            raise ValueError("images have different sizes; set do_resize=True (or resize them) to batch them")
        x = np.stack(arrays)  # (B, H, W, 3) uint8
        # transformers' arithmetic, dtypes included: rescale in float64 -> float32, then normalize in float32
        x = (x.astype(np.float64) * s["rescale_factor"]).astype(np.float32) if s["do_rescale"] else x.astype(np.float32)
        if s["do_normalize"]:
            mean, std = _per_channel(s["image_mean"], "image_mean"), _per_channel(s["image_std"], "image_std")
            x = (x - np.array(mean, np.float32)) / np.array(std, np.float32)
        if not s["do_color_quantize"]:
            key, out = "pixel_values", np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (B, 3, H, W) float32
        elif clusters is None:
            raise ValueError("color quantization needs clusters: pass clusters=(K, 3) palette, load a processor "
                             "that has them, or set do_color_quantize=False")  # fmt: skip
        else:
            key, out = "input_ids", color_quantize(x, clusters, self.chunk_size).reshape(len(x), -1)  # (B, H*W)
            if s["add_start_token"]:
                out = np.concatenate([np.full((len(out), 1), len(clusters), dtype=np.int64), out], axis=1)
        if return_tensors == "pt":
            import torch

            return BatchFeature({key: torch.from_numpy(out)})
        return BatchFeature({key: out if return_tensors == "np" else list(out)})

    __call__ = preprocess

    def decode(self, input_ids: Any, height: int | None = None, width: int | None = None) -> np.ndarray:
        """Token ids (B, H*W), or (B, 1 + H*W) led by the start token ``len(clusters)`` -> uint8 RGB (B, H, W, 3).

        ``input_ids``: a tensor, array or (nested) list; one sequence (1-D) gives one image (H, W, 3).
        ``height``/``width`` default to this processor's ``size``. Colors are ``rint(127.5 * (clusters + 1))``.
        """
        if self.clusters is None:
            raise ValueError("decode needs clusters (a palette)")
        ids = np.asarray(input_ids.detach().cpu() if hasattr(input_ids, "detach") else input_ids)
        single = ids.ndim == 1
        ids = ids[None] if single else ids
        if ids.ndim != 2 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
            raise ValueError(f"input_ids must be integer ids of shape (B, H*W), got {ids.shape} {ids.dtype}")
        h, w = height or self.size["height"], width or self.size["width"]
        if ids.shape[1] == h * w + 1 and (ids[:, 0] == len(self.clusters)).all():
            ids = ids[:, 1:]
        if ids.shape[1] != h * w:
            raise ValueError(f"sequences of length {ids.shape[1]} do not make {h}x{w} images (need {h * w}, or "
                             f"{h * w + 1} led by the start token {len(self.clusters)}); pass height= and width=")
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.clusters)):
            raise ValueError(f"ids must lie in [0, {len(self.clusters)}), got [{ids.min()}, {ids.max()}]")
        colors = np.rint(127.5 * (np.asarray(self.clusters, np.float64) + 1.0)).clip(0, 255).astype(np.uint8)
        images = colors[ids.astype(np.int64)].reshape(len(ids), h, w, 3)
        return images[0] if single else images

    # --- serialization, in transformers' preprocessor_config.json format ------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The settings as transformers writes them (clusters as nested lists, resample as int, size dict)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in _KNOWN if k != "add_start_token"}
        out.update(size=dict(self.size))
        if self.do_convert_rgb is not None:
            out["do_convert_rgb"] = self.do_convert_rgb
        out["clusters"] = None if self.clusters is None else self.clusters.tolist()
        out["image_processor_type"] = "ImageGPTImageProcessor"
        if self.add_start_token:
            out["add_start_token"] = True  # ours only; transformers keeps it as an unused attribute
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        """``to_dict`` as indented JSON with sorted keys, as transformers."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_json_string` to ``path`` (atomically)."""
        atomic_write_text(path, self.to_json_string())

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> list[str]:
        """Write ``preprocessor_config.json`` into ``save_directory`` (made if missing); returns the list of files
        written, as transformers."""
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        self.to_json_file(Path(save_directory) / CONFIG_NAME)
        return [str(Path(save_directory) / CONFIG_NAME)]

    @classmethod
    def from_dict(cls, config: dict[str, Any], **kwargs: Any) -> "ImageGPTImageProcessor":
        """Build from a ``to_dict``-style dict; ``kwargs`` override its entries (``size=42`` -> 42x42)."""
        return cls(**{**config, **kwargs})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **kwargs: Any) -> "ImageGPTImageProcessor":
        """Build from a ``preprocessor_config.json`` file (ours or transformers')."""
        try:
            config = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{path} does not hold a JSON object of processor settings")
        return cls.from_dict(config, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                        revision: str | None = None, token: str | bool | None = None, local_files_only: bool = False,
                        **kwargs: Any) -> "ImageGPTImageProcessor":  # fmt: skip
        """Read ``preprocessor_config.json`` from a directory or Hub id; ``kwargs`` override its settings.

        Raises :class:`imagegpt.hub.HubError` when the file can be neither found nor downloaded.
        """
        path = resolve_file(name_or_path, CONFIG_NAME, cache_dir=cache_dir, revision=revision, token=token,
                            local_files_only=local_files_only)  # fmt: skip
        return cls.from_json_file(path, **kwargs)


def _resample(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) not in range(6):
        raise ValueError(f"resample must be a Pillow filter (Image.Resampling or 0..5), got {value!r}")
    return int(value)


def _as_given(value: Any) -> float | list[float] | tuple[float, ...]:
    if np.ndim(value) == 0:
        return float(value)
    return tuple(float(v) for v in value)  # transformers keeps a sequence as a tuple


def _per_channel(value: Any, name: str) -> list[float]:
    values = [float(value)] * 3 if np.ndim(value) == 0 else [float(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"{name} must be one number or 3 (R, G, B), got {value!r}")
    return values


class ImageGPTFeatureExtractor(ImageGPTImageProcessor):
    """Deprecated name of :class:`ImageGPTImageProcessor` (as in transformers); warns, then behaves the same."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import warnings

        warnings.warn("ImageGPTFeatureExtractor is deprecated; use ImageGPTImageProcessor (same arguments)",
                      FutureWarning, stacklevel=2)  # fmt: skip
        super().__init__(*args, **kwargs)
