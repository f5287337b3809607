"""Shared fixtures: tiny configs, and transformers' ImageGPT as the oracle (test-only dependency)."""

from __future__ import annotations

import gzip
import logging
import struct

import numpy as np
import pytest
import torch

from imagegpt import ImageGPTConfig

TINY = dict(vocab_size=17, n_positions=64, n_embd=32, n_layer=2, n_head=4)


def tiny_config(**overrides) -> ImageGPTConfig:
    """A 2-layer, 32-wide model over a 16-color palette (+ start token): fast enough for every test."""
    return ImageGPTConfig(**{**TINY, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **overrides})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def transformers():
    tf = pytest.importorskip("transformers")
    tf.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return tf


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter non-trivial values: norm weights away from 1, biases away from 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or "ln_" in name:
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.15 * noise)
    return model


def prompt(model, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) random palette ids of ``model``'s vocabulary, each row led by the start token."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size - 1, (batch, length), generator=g)
    ids[:, 0] = model.config.vocab_size - 1  # the start token leads
    return ids


def write_idx(path, array: np.ndarray, code: int = 0x08, gz: bool = False) -> None:
    """An IDX file as MNIST's: 0, 0, type code, ndim, big-endian uint32 dims, big-endian data (gzipped if ``gz``)."""
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[code]
    data = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(dtype).tobytes()
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)


def easy_images(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes: a bright top half (0) or a bright bottom half (1) on dark noise; (N, size, size) uint8, labels."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.uint8)
    images = rng.integers(0, 40, (n, size, size)).astype(np.uint8)
    images[labels == 0, : size // 2] = 230
    images[labels == 1, size // 2 :] = 230
    return images, labels


def easy_idx_args(directory, n: int, n_train: int) -> list[str]:
    """Write :func:`easy_images` 28x28 as train/test IDX files; the CLI arguments that name them."""
    images, labels = easy_images(n, 28)
    args = []
    for split, part in (("train", slice(0, n_train)), ("test", slice(n_train, n))):
        write_idx(directory / f"{split}-images-idx3-ubyte", images[part])
        write_idx(directory / f"{split}-labels-idx1-ubyte", labels[part])
    for flag, name in (("--data", "train-images"), ("--labels", "train-labels"), ("--test-data", "test-images"),
                       ("--test-labels", "test-labels")):  # fmt: skip
        args += [flag, str(directory / f"{name}-idx{3 if 'images' in name else 1}-ubyte")]
    return args
