"""Image-level sampling: unconditional samples, completions of the top rows of images, and row streaming.

All three run on :func:`imagegpt.sampling.iter_tokens` (static KV cache, prefill then one-token steps) and turn
tokens into pictures with the processor's palette.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from imagegpt.sampling import iter_tokens, make_generator

__all__ = ["Samples", "Completion", "sample", "complete", "stream_rows", "BLANK"]

BLANK = 128  # gray: the unknown part of a prompt image


@dataclass
class Samples:
    """``ids`` (N, H*W) palette ids and ``images`` (N, H, W, 3) uint8."""

    ids: np.ndarray
    images: np.ndarray


@dataclass
class Completion:
    """Completions of N images, S samples each.

    ``ids`` (N, S, H*W) and ``images`` (N, S, H, W, 3): the completions, whose top ``rows`` rows are the input's;
    ``originals`` (N, H, W, 3): the inputs quantized to the palette; ``prompts``: the same with every row from
    ``rows`` on blanked to gray.
    """

    ids: np.ndarray
    images: np.ndarray
    originals: np.ndarray
    prompts: np.ndarray
    rows: int


def _image_shape(model, processor) -> tuple[int, int]:
    h, w = processor.size["height"], processor.size["width"]
    cfg = model.config
    if processor.clusters is None:
        raise ValueError("the processor has no palette (clusters); load the model's preprocessor_config.json")
    if len(processor.clusters) != cfg.vocab_size - 1:
        raise ValueError(f"the palette has {len(processor.clusters)} colors but the model expects "
                         f"{cfg.vocab_size - 1} (vocab_size - 1): use the processor saved with this model")  # fmt: skip
    if h * w > cfg.n_positions:
        raise ValueError(f"{h}x{w} images need {h * w} positions; the model has n_positions={cfg.n_positions}")
    return h, w


def stream_rows(
    model,
    prompt_ids: torch.Tensor,
    height: int,
    width: int,
    *,
    generator: torch.Generator | None = None,
    progress: Any = None,
    **sampling: Any,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(row, ids)`` as each pixel row is finished: ``ids`` (B, width) on the CPU, ``row`` its index.

    ``prompt_ids`` (B, 1 + r * width): the start token then ``r`` given rows (r may be 0). ``sampling``:
    do_sample, temperature, top_k, top_p. ``progress``: an optional tqdm bar advanced by B per generated pixel.
    """
    batch, t = prompt_ids.shape
    given = t - 1
    if given % width or given > height * width:
        raise ValueError(f"the prompt holds {given} pixels: not a whole number of {width}-pixel rows of a "
                         f"{height}x{width} image")  # fmt: skip
    row: list[torch.Tensor] = []
    index = given // width
    for tokens in iter_tokens(model, prompt_ids, height * width - given, generator=generator, **sampling):
        row.append(tokens)
        if progress is not None:
            progress.update(batch)
        if len(row) == width:
            yield index, torch.stack(row, dim=1).cpu()
            row, index = [], index + 1


def _generate_images(model, prompts: torch.Tensor, height: int, width: int, batch_size: int, seed: int | None,
                     progress: bool, desc: str, sampling: dict) -> np.ndarray:  # fmt: skip
    """Complete every prompt (N, 1 + r * width) to a full image; returns ids (N, height * width)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model.transformer.wte.weight.device
    generator = make_generator(seed, device)
    n, t = prompts.shape
    out = np.empty((n, height * width), dtype=np.int64)
    out[:, : t - 1] = prompts[:, 1:].numpy()
    bar = tqdm(total=n * (height * width - t + 1), unit="px", unit_scale=True, desc=desc, disable=not progress)
    with bar:
        for start in range(0, n, batch_size):
            chunk = prompts[start : start + batch_size].to(device)
            for row, ids in stream_rows(model, chunk, height, width, generator=generator, progress=bar, **sampling):
                out[start : start + len(chunk), row * width : (row + 1) * width] = ids.numpy()
    return out


def sample(
    model,
    processor,
    n: int = 1,
    *,
    batch_size: int = 16,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    progress: bool = False,
    num_threads: int | None = None,
) -> Samples:
    """``n`` unconditional images, each generated from the start token alone, ``batch_size`` at a time.

    The same ``seed``, batch size and device give the same images. ``num_threads``: see
    :func:`imagegpt.sampling.iter_tokens`.
    """
    height, width = _image_shape(model, processor)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    prompts = torch.full((n, 1), processor.start_token_id, dtype=torch.long)
    sampling = dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, num_threads=num_threads)
    ids = _generate_images(model, prompts, height, width, batch_size, seed, progress, "sampling", sampling)
    return Samples(ids=ids, images=processor.decode(ids))


def complete(
    model,
    processor,
    images: Any,
    rows: int,
    samples: int = 1,
    *,
    batch_size: int = 16,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    progress: bool = False,
    num_threads: int | None = None,
) -> Completion:
    """Keep the top ``rows`` pixel rows of each image (after resizing and quantizing with ``processor``) and let
    the model paint the rest, ``samples`` times per image. ``images``: one or a list of paths, PIL images or
    arrays, anything the processor reads. The same ``seed``, batch size and device give the same completions.
    The ``samples`` completions of an image share one copy of its prompt's cache (prefilled once).
    """
    height, width = _image_shape(model, processor)
    if not isinstance(rows, int) or not 0 <= rows < height:
        raise ValueError(f"rows must be an integer in [0, {height - 1}] (rows of the {height}x{width} image to "
                         f"keep; the rest is generated), got {rows!r}")  # fmt: skip
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    ids = processor(images, return_tensors="pt", add_start_token=True)["input_ids"]  # (N, 1 + H*W)
    n = len(ids)
    prompts = ids[:, : 1 + rows * width].repeat_interleave(samples, dim=0)
    sampling = dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, num_threads=num_threads)
    out = _generate_images(model, prompts, height, width, batch_size, seed, progress, "completing", sampling)
    originals = processor.decode(ids)
    blanked = originals.copy()
    blanked[:, rows:] = BLANK
    images = processor.decode(out).reshape(n, samples, height, width, 3)
    return Completion(ids=out.reshape(n, samples, -1), images=images, originals=originals, prompts=blanked, rows=rows)
