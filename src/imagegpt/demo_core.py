"""What the web demo computes, without the web: models by name, checked uploads, completions and samples streamed
row by row, and the per-pixel surprise of an image. :mod:`imagegpt.demo` puts a Gradio page on top; this module
never imports gradio, so everything here is tested without it.

Every problem a user can cause raises :class:`DemoInputError`, whose message is written for the page.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from imagegpt.images import to_uint8_rgb
from imagegpt.pretrained import DEFAULT_MODEL, packaged_examples, packaged_model_dir, packaged_models

__all__ = ["DemoInputError", "DemoModel", "ModelChoices", "Frame", "MAX_UPLOAD_BYTES", "MAX_PIXELS", "POOR_FIT",
           "example_images", "read_image", "quantize", "stream_complete", "stream_sample", "surprise"]  # fmt: skip

MAX_UPLOAD_BYTES = 10 * 2**20  # 10 MiB per uploaded file
MAX_PIXELS = 4096 * 4096  # 16.8 megapixels: decoding more would cost memory for a 32x32 model input
# Mean RGB distance (0..255 units) between the resized image and its palette colors above which we warn: 16 evenly
# spaced grays stay within ~15 of any gray; a saturated red lands ~200 away from every gray.
POOR_FIT = 30.0
DISPLAY_SIDE = 224  # on-screen size of one image: model pixels are upscaled by whole numbers, never blurred

_MODE_NOTES = {
    "RGBA": "transparent parts composited on white", "LA": "transparent parts composited on white",
    "PA": "transparent parts composited on white", "P": "palette image expanded to RGB",
    "CMYK": "CMYK converted to RGB", "I;16": "16-bit gray scaled to 8 bits", "I;16B": "16-bit gray scaled to 8 bits",
    "I;16L": "16-bit gray scaled to 8 bits", "I": "32-bit gray scaled to 8 bits", "F": "float gray scaled to 8 bits",
    "1": "1-bit image expanded", "YCbCr": "YCbCr converted to RGB", "LAB": "Lab converted to RGB",
    "HSV": "HSV converted to RGB",
}  # fmt: skip


class DemoInputError(ValueError):
    """A problem with what the user gave (image, model, settings); the message is shown in the page as is."""


@dataclass
class DemoModel:
    """A loaded model with its processor; ``height`` x ``width`` images over ``colors`` palette colors."""

    name: str
    model: torch.nn.Module
    processor: object
    height: int
    width: int
    colors: int

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters()) / 1e6
        cfg = self.model.config
        kind = "gray" if np.allclose(self.processor.clusters, self.processor.clusters[:, :1]) else "RGB"
        return (f"**{self.name}**: {cfg.n_layer} layers x {cfg.n_embd} wide, {params:.2f} M parameters; "
                f"{self.height}x{self.width} pixels, a {self.colors}-color {kind} palette")  # fmt: skip


class ModelChoices:
    """The models a demo offers: the given names or directories first, then every packaged model. Each loads on
    first use and stays in memory; one that cannot be used gives a :class:`DemoInputError` naming the reason."""

    def __init__(self, specs: Sequence[str] = (), device: str = "cpu") -> None:
        names = [str(s) for s in specs] or [DEFAULT_MODEL] * (packaged_model_dir(DEFAULT_MODEL) is not None)
        self.names = list(dict.fromkeys(names + packaged_models()))
        if not self.names:
            raise DemoInputError("no models to offer: pass --model DIR (no packaged model in this installation)")
        self.device = device
        self._loaded: dict[str, DemoModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> DemoModel:
        if name not in self.names:
            raise DemoInputError(f"unknown model {name!r}; choose one of: {', '.join(self.names)}")
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self._load(name)
            return self._loaded[name]

    def _load(self, name: str) -> DemoModel:
        from imagegpt.heads import ImageGPTForCausalImageModeling
        from imagegpt.processor import ImageGPTImageProcessor

        try:
            model = ImageGPTForCausalImageModeling.from_pretrained(name).to(self.device).eval()
            processor = ImageGPTImageProcessor.from_pretrained(name)
        except (OSError, ValueError) as e:  # missing files, bad JSON, checkpoint errors, unreachable Hub
            raise DemoInputError(f"model {name!r} cannot be loaded: {e}") from None
        cfg = model.config
        h, w = processor.size["height"], processor.size["width"]
        if processor.clusters is None:
            raise DemoInputError(f"model {name!r} has no palette: its preprocessor_config.json lacks 'clusters'")
        if len(processor.clusters) != cfg.vocab_size - 1:
            raise DemoInputError(f"model {name!r} does not match its palette: the palette has "
                                 f"{len(processor.clusters)} colors, the model predicts {cfg.vocab_size - 1} "
                                 "(vocab_size - 1); save the processor that was used to train it beside it")
        if h * w > cfg.n_positions:
            raise DemoInputError(f"model {name!r} does not match its image size: {h}x{w} images need {h * w} "
                                 f"positions, the model has {cfg.n_positions}")  # fmt: skip
        return DemoModel(name, model, processor, h, w, len(processor.clusters))


def example_images() -> list[tuple[Path, str, str]]:
    """(path, model name, short label) of every example image shipped with every packaged model, the default
    model's first."""
    out = []
    for name in sorted(packaged_models(), key=lambda n: n != DEFAULT_MODEL):  # the default model's first
        for path in packaged_examples(name):
            label = re.sub(r"^(test-)?\d+-", "", path.stem)  # "test-0000-ankle-boot" -> "ankle-boot"
            out.append((path, name, label))
    return out


def read_image(path: str | os.PathLike | None) -> tuple[np.ndarray, list[str]]:
    """An uploaded file -> (H, W, 3) uint8 RGB and notes on what was converted; checks size, pixels and format."""
    if path is None:
        raise DemoInputError("no image yet: pick an example, or upload, paste or draw one")
    path = Path(path)
    size = path.stat().st_size if path.is_file() else 0
    if not path.is_file() or size == 0:
        raise DemoInputError("the upload is empty or missing; upload an image file")
    if size > MAX_UPLOAD_BYTES:
        raise DemoInputError(f"the file is {size / 2**20:.1f} MiB; uploads are limited to "
                             f"{MAX_UPLOAD_BYTES / 2**20:.0f} MiB")  # fmt: skip
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                pixels = image.width * image.height
                if pixels > MAX_PIXELS:
                    raise DemoInputError(f"the image is {image.width}x{image.height} ({pixels / 1e6:.1f} megapixels);"
                                         f" the limit is {MAX_PIXELS / 1e6:.1f} megapixels (e.g. 4096x4096)")
                notes = [_MODE_NOTES[image.mode]] if image.mode in _MODE_NOTES else []
                if image.mode in ("P", "L", "RGB") and image.info.get("transparency") is not None:
                    notes = ["transparent parts composited on white"]
                if getattr(image, "n_frames", 1) > 1:
                    notes.append(f"first of {image.n_frames} frames")
                image.seek(0)
                image.load()
                rgb = to_uint8_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError:
        raise DemoInputError(f"the image has too many pixels; the limit is {MAX_PIXELS / 1e6:.1f} megapixels") from None
    except (UnidentifiedImageError, SyntaxError):
        raise DemoInputError(f"{path.name!r} is not an image this demo can read; upload a PNG, JPEG, GIF, BMP, TIFF "
                             "or WebP file") from None  # fmt: skip
    except (OSError, ValueError, TypeError) as e:
        if isinstance(e, DemoInputError):
            raise
        raise DemoInputError(f"{path.name!r} could not be decoded as an image ({e}); try saving it as PNG") from None
    return rgb, notes


def quantize(entry: DemoModel, rgb: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray, float]:
    """Resize ``rgb`` to the model's size and map it to the palette: (ids (1 + H*W,) led by the start token,
    resized (H, W, 3), quantized (H, W, 3), mean RGB distance between the two in 0..255 units)."""
    proc = entry.processor
    resized = np.asarray(Image.fromarray(rgb).resize((entry.width, entry.height), resample=proc.resample))
    ids = proc(resized, return_tensors="pt", add_start_token=True, input_data_format="channels_last")["input_ids"][0]
    quantized = proc.decode(ids)
    error = float(np.linalg.norm(resized.astype(np.float64) - quantized, axis=-1).mean())
    return ids, resized, quantized, error


def fit_note(entry: DemoModel, error: float) -> str | None:
    """A warning when the palette represents the image poorly (mean distance above :data:`POOR_FIT`)."""
    if error <= POOR_FIT:
        return None
    return (f"the {entry.colors}-color palette of {entry.name} represents this image poorly (mean color error "
            f"{error:.0f} of 255, over the limit {POOR_FIT:.0f}): expect its colors to change; a model with a "
            "palette for such images will do better")  # fmt: skip


@dataclass
class Frame:
    """One streamed state: ``images`` (N, H, W, 3) uint8, rows ``0 .. rows_done - 1`` final, the rest blank."""

    images: np.ndarray
    rows_done: int
    height: int
    seconds: float
    first_row_seconds: float | None


def _sampling(temperature: float, top_k: int | None, top_p: float | None) -> dict:
    if not temperature or not 0.05 <= float(temperature) <= 5:
        raise DemoInputError(f"temperature must be between 0.05 and 5, got {temperature}")
    if top_k is not None and (top_k < 0 or top_k != int(top_k)):
        raise DemoInputError(f"top-k must be a whole number >= 0 (0: off), got {top_k}")
    if top_p is not None and not 0 < float(top_p) <= 1:
        raise DemoInputError(f"top-p must be in (0, 1] (1: off), got {top_p}")
    top_k = int(top_k) if top_k else None  # 0 and None: no top-k filter
    top_p = float(top_p) if top_p is not None and float(top_p) < 1 else None  # 1 and None: no nucleus filter
    return dict(do_sample=True, temperature=float(temperature), top_k=top_k, top_p=top_p)


def _generator(seed: int | float | None) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed) if seed is not None and seed == seed else int(torch.seed() % 2**31))  # NaN: random
    return g


def _stream(entry: DemoModel, prompt: torch.Tensor, start: np.ndarray, sampling: dict,
            seed: int | None) -> Iterator[Frame]:  # fmt: skip
    """Frames from ``start`` (N, H, W, 3) as the model finishes each row after the prompt (N, 1 + r * W)."""
    from imagegpt.completion import stream_rows

    images, began, first = start.copy(), time.perf_counter(), None
    done = (prompt.shape[1] - 1) // entry.width
    yield Frame(images.copy(), done, entry.height, 0.0, None)
    # cpu_packed=False: packed weights are swapped into the shared model and would collide across users
    rows = stream_rows(entry.model, prompt, entry.height, entry.width, generator=_generator(seed), cpu_packed=False,
                       **sampling)  # fmt: skip
    for row, ids in rows:
        images[:, row] = entry.processor.decode(ids.numpy(), height=1, width=entry.width)[:, 0]
        elapsed = time.perf_counter() - began
        first = elapsed if first is None else first
        yield Frame(images.copy(), row + 1, entry.height, elapsed, first)


def stream_complete(entry: DemoModel, rgb: np.ndarray, rows: int, samples: int, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None,
                    seed: int | None = 0) -> Iterator[Frame]:  # fmt: skip
    """Keep the top ``rows`` rows of ``rgb`` (after resizing and quantizing) and stream ``samples`` completions."""
    if rows is None or not float(rows).is_integer() or not 0 <= rows < entry.height:
        raise DemoInputError(f"rows to keep must be a whole number from 0 to {entry.height - 1}, got {rows}")
    if samples is None or not float(samples).is_integer() or not 1 <= samples <= 16:
        raise DemoInputError(f"samples must be a whole number from 1 to 16, got {samples}")
    sampling = _sampling(temperature, top_k, top_p)
    rows, samples = int(rows), int(samples)
    ids, _, quantized, _ = quantize(entry, rgb)
    prompt = ids[None, : 1 + rows * entry.width].repeat(samples, 1)  # (S, 1 + rows * W)
    start = np.repeat(quantized[None], samples, axis=0)
    start[:, rows:] = BLANK_COLOR
    yield from _stream(entry, prompt, start, sampling, seed)


def stream_sample(entry: DemoModel, n: int, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, seed: int | None = 0) -> Iterator[Frame]:  # fmt: skip
    """Stream ``n`` unconditional samples row by row."""
    if n is None or not float(n).is_integer() or not 1 <= n <= 16:
        raise DemoInputError(f"the number of samples must be a whole number from 1 to 16, got {n}")
    sampling = _sampling(temperature, top_k, top_p)
    prompt = torch.full((int(n), 1), entry.colors, dtype=torch.long)  # the start token alone
    start = np.full((int(n), entry.height, entry.width, 3), BLANK_COLOR, dtype=np.uint8)
    yield from _stream(entry, prompt, start, sampling, seed)


BLANK_COLOR = 128  # the not-yet-painted part, as imagegpt.completion.BLANK


@torch.inference_mode()
def surprise(entry: DemoModel, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(quantized (H, W, 3), bits (H, W): -log2 p of each pixel given the ones before it, mean bits per pixel)."""
    ids, _, quantized, _ = quantize(entry, rgb)
    ids = ids[None].to(entry.model.transformer.wte.weight.device)
    logits = entry.model(ids[:, :-1], use_cache=False).logits.float()  # (1, H*W, colors): p(pixel t | < t)
    nats = torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="none")  # (H*W,)
    bits = (nats / math.log(2)).cpu().numpy().reshape(entry.height, entry.width)
    return quantized, bits, float(bits.mean())
