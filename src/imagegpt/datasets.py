"""Readers for pretraining data: image folders, .npy arrays, IDX files (MNIST layout), pre-quantized token arrays.

Every reader is an :class:`ImageSource`: a sized, ordered collection read in batches of (H, W, 3) uint8 RGB images
(``kind == "images"``) or of palette ids (``kind == "tokens"``: OpenAI's pre-quantized (N, L) arrays, which skip
quantization). :func:`open_source` picks the reader from a path. :func:`augment_images` is iGPT's augmentation.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from imagegpt.images import as_image_list, to_uint8_rgb
from imagegpt.processor import ImageGPTImageProcessor

logger = logging.getLogger(__name__)

__all__ = ["ImageSource", "ImageFolder", "ArraySource", "open_source", "read_idx", "augment_images",
           "AugmentedImages", "IMAGE_EXTENSIONS", "read_labels", "load_labeled"]  # fmt: skip

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
# IDX type codes (http://yann.lecun.com/exdb/mnist/): data are big-endian
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FORMATS = "a folder of images (.png .jpg .jpeg .webp .bmp .gif), a .npy array, or an IDX file (*-ubyte, *.idx[.gz])"


class ImageSource:
    """An ordered collection of images (or token rows) read by index ranges; subclasses implement ``read``.

    Attributes:
        path: where the data come from.
        kind: ``"images"`` ((H, W, 3) uint8 RGB) or ``"tokens"`` (rows of palette ids, already quantized).
        skipped: how many items could not be read so far (logged with a warning each; folders only).
        skipped_files: the paths of those items.
    """

    kind = "images"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.skipped = 0
        self.skipped_files: list[str] = []

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, start: int, stop: int) -> tuple[np.ndarray, Any]:
        """Items ``start:stop`` -> (source indices of those read, images list or (n, L) token array)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A cheap digest of the source's identity (path, sizes, modification times) to detect changed inputs."""
        stat = self.path.stat()
        return _sha256(f"{self.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, Any]]:
        """``read`` in consecutive ranges of ``batch_size`` items, in order."""
        for start in range(0, len(self), batch_size):
            yield self.read(start, min(start + batch_size, len(self)))

    def __iter__(self) -> Iterator[np.ndarray]:
        for _, items in self.batches(256):
            yield from items

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, n={len(self)}, kind={self.kind!r})"


class ImageFolder(ImageSource):
    """Every image file under ``root`` (recursively, sorted by relative path), any Pillow mode, as uint8 RGB.

    Files load as :func:`imagegpt.images.to_uint8_rgb` loads paths (as the processor, so training sees what
    inference sees): EXIF orientation applied, alpha dropped, first frame of GIFs. Unreadable files are skipped
    with a warning and counted in ``skipped``.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        super().__init__(root)
        if not self.path.is_dir():
            raise NotADirectoryError(f"{root} is not a directory")
        files = self._list()
        self.files = sorted(files, key=lambda p: p.relative_to(self.path).as_posix())  # stable across file systems
        if not self.files:
            skipped = f" ({self.skipped} entries skipped: {', '.join(self.skipped_files[:3])})" if self.skipped else ""
            raise ValueError(f"no images found under {root}{skipped}: put {', '.join(IMAGE_EXTENSIONS)} files in it "
                             "(subfolders are searched too)")  # fmt: skip

    def _list(self) -> list[Path]:
        """Image files under the root; what cannot be listed or read is counted in ``skipped``, with a warning:
        unreadable subfolders, and image-named entries that are no regular file (dangling symlinks, FIFOs ...)."""

        def skip(path: str, why: str) -> None:
            self.skipped += 1
            self.skipped_files.append(path)
            logger.warning("skipping %s: %s", path, why)

        def unreadable(e: OSError) -> None:
            skip(e.filename, f"unreadable folder ({e.strerror})")

        files = []
        for folder, _, names in os.walk(self.path, onerror=unreadable):
            for name in names:
                p = Path(folder) / name
                if p.suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                if p.is_file():
                    files.append(p)
                elif p.is_symlink() and not p.exists():
                    skip(str(p), f"dangling symlink to {os.readlink(p)}")
                elif not p.is_dir():
                    skip(str(p), "not a regular file (a FIFO, socket or device)")
        return files

    def __len__(self) -> int:
        return len(self.files)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, list[np.ndarray]]:
        indices, images = [], []
        for i in range(start, stop):
            try:
                images.append(to_uint8_rgb(self.files[i]))
                indices.append(i)
            except (ValueError, OSError, Image.DecompressionBombError) as e:  # corrupt, truncated, not an image
                self.skipped += 1
                self.skipped_files.append(str(self.files[i]))
                logger.warning("skipping unreadable image %s: %s", self.files[i], e)
        return np.asarray(indices, dtype=np.int64), images

    def fingerprint(self) -> str:
        h = hashlib.sha256(str(self.path.resolve()).encode())
        for f in self.files:
            stat = f.stat()
            h.update(f"|{f.relative_to(self.path).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return h.hexdigest()


class ArraySource(ImageSource):
    """An in-memory or memory-mapped array: (N, H, W) / (N, H, W, C) uint8 images with C in 1, 3, 4, or (N, L)
    integer palette ids (``kind == "tokens"``). Gray and RGBA become RGB (RGBA blended on white)."""

    def __init__(self, array: np.ndarray, path: str | os.PathLike = "<array>") -> None:
        super().__init__(path)
        name = Path(path).name
        if array.ndim == 2:
            if not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"{name}: a 2-D array is read as pre-quantized tokens (N, L) and must hold integer "
                                 f"palette ids, got {array.dtype}")  # fmt: skip
            self.kind = "tokens"
        elif array.ndim in (3, 4):
            if array.ndim == 4 and array.shape[-1] not in (1, 3, 4):
                hint = " (channels first? use np.transpose(a, (0, 2, 3, 1)))" if array.shape[1] in (1, 3, 4) else ""
                raise ValueError(f"{name}: image arrays must be (N, H, W) or (N, H, W, C) with C in 1, 3, 4, got "
                                 f"{array.shape}{hint}")  # fmt: skip
            if array.dtype != np.uint8:
                raise ValueError(f"{name}: image arrays must be uint8, got {array.dtype}; convert them (e.g. "
                                 "np.clip(a * 255, 0, 255).astype(np.uint8) for floats in [0, 1])")  # fmt: skip
        else:
            raise ValueError(f"{name}: expected images (N, H, W), (N, H, W, C) or tokens (N, L), got shape "
                             f"{array.shape}")  # fmt: skip
        if len(array) == 0 or 0 in array.shape:
            raise ValueError(f"{name} is empty (shape {array.shape}): there is nothing to tokenize")
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, Any]:
        x = np.asarray(self.array[start:stop])
        if self.kind == "images":
            x = x[..., None] if x.ndim == 3 else x
            if x.shape[-1] == 1:
                x = np.repeat(x, 3, axis=-1)
            elif x.shape[-1] == 4:
                x = np.stack([to_uint8_rgb(image, "channels_last") for image in x])
        return np.arange(start, stop, dtype=np.int64), x

    def fingerprint(self) -> str:
        if self.path.is_file():
            return super().fingerprint()
        return _sha256(f"{self.array.shape}|{self.array.dtype}", np.ascontiguousarray(self.array).tobytes())


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (MNIST / Fashion-MNIST layout), gzipped (``.gz``) or not, as a native-endian array.

    Header: two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int, 0x0D float, 0x0E double),
    the number of dimensions, then each dimension as a big-endian uint32. Plain files are memory-mapped.
    """
    path = Path(path)
    gz = path.suffix == ".gz"
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
        try:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES or head[3] == 0:
                raise ValueError(f"{path} is not an IDX file (magic bytes {head.hex() or 'missing'}; expected "
                                 f"0000<type><ndim> with type in {sorted(_IDX_DTYPES)})")  # fmt: skip
            dtype, ndim = np.dtype(_IDX_DTYPES[head[2]]), head[3]
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise ValueError(f"{path}: IDX header is truncated (expected {ndim} dimensions)")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
            data = f.read() if gz else None
        except (gzip.BadGzipFile, EOFError) as e:
            raise ValueError(f"{path} is not a valid gzip file ({e})") from None
    size = len(data) if gz else path.stat().st_size - 4 - 4 * ndim
    if size != expected:
        raise ValueError(f"{path}: IDX header says shape {dims} ({expected} bytes of data) but the file holds "
                         f"{size}; it is truncated or not an IDX file")  # fmt: skip
    if gz:
        array = np.frombuffer(data, dtype=dtype).reshape(dims)
    else:
        array = np.memmap(path, dtype=dtype, mode="r", offset=4 + 4 * ndim, shape=dims)
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def _is_idx_name(name: str) -> bool:
    name = name.lower().removesuffix(".gz")
    return name.endswith("ubyte") or name.endswith(".idx") or "-idx" in name or ".idx" in name


def open_source(path: str | os.PathLike) -> ImageSource:
    """The reader for ``path``: a directory -> :class:`ImageFolder`, ``.npy`` -> :class:`ArraySource` (images or
    pre-quantized tokens), IDX (``*-ubyte``, ``*.idx``, optionally ``.gz``) -> :class:`ArraySource` of images."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"dataset not found: {path}; pass {_FORMATS}")
    if p.is_dir():
        return ImageFolder(p)
    name = p.name.lower()
    if name.endswith(".npy"):
        try:
            array = np.load(p, mmap_mode="r", allow_pickle=False)  # memory-mapped: datasets larger than RAM
        except ValueError as e:
            raise ValueError(f"{path} is not a plain numeric .npy array ({e}); save it with np.save(path, array)")
        return ArraySource(array, p)
    if _is_idx_name(name):
        array = read_idx(p)
        if array.ndim == 1:
            raise ValueError(f"{path} is a 1-D IDX file (labels?); pass the images file (e.g. *-images-idx3-ubyte)")
        if array.ndim not in (3, 4) or array.dtype != np.uint8:
            raise ValueError(f"{path}: IDX images must be unsigned bytes (type 0x08) of shape (N, H, W) or "
                             f"(N, H, W, C), got {array.dtype} {array.shape}")  # fmt: skip
        return ArraySource(array, p)
    if name.endswith(IMAGE_EXTENSIONS):
        raise ValueError(f"{path} is a single image; put the images in a folder and pass the folder")
    raise ValueError(f"unknown dataset format: {path}; pass {_FORMATS}")


def augment_images(images: Any, size: int | Sequence[int], rng: np.random.Generator, *, scale: float = 1.125,
                   flip: bool = True, resample: int = Image.Resampling.BILINEAR) -> np.ndarray:  # fmt: skip
    """iGPT's augmentation: resize to ``scale`` times ``size``, random crop back to ``size``, random horizontal flip.

    Args:
        images: anything :func:`imagegpt.images.to_uint8_rgb` reads (one image, a batch array, or a list); arrays
            are read channels last.
        size: the output (height, width), or an int for a square.
        rng: the random generator; the same seed gives the same crops and flips.
        scale: how much larger than ``size`` the image is resized before cropping (>= 1).
        flip: flip each image left-right with probability 1/2.

    Returns:
        (N, height, width, 3) uint8.
    """
    h, w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if scale < 1:
        raise ValueError(f"scale must be at least 1 (resize larger, then crop), got {scale}")
    big_h, big_w = max(h, round(h * scale)), max(w, round(w * scale))
    out = np.empty((0, h, w, 3), np.uint8)
    items = as_image_list(images)
    if items:
        out = np.empty((len(items), h, w, 3), np.uint8)
    for i, image in enumerate(items):
        rgb = Image.fromarray(to_uint8_rgb(image, "channels_last" if isinstance(image, np.ndarray) else None))
        big = np.asarray(rgb.resize((big_w, big_h), resample=resample))
        top, left = int(rng.integers(0, big_h - h + 1)), int(rng.integers(0, big_w - w + 1))
        crop = big[top : top + h, left : left + w]
        out[i] = crop[:, ::-1] if flip and rng.random() < 0.5 else crop
    return out


class AugmentedImages:
    """Raw images quantized on the fly with fresh :func:`augment_images` crops and flips each epoch: a dataset for
    :class:`imagegpt.data.BatchIterator` (augmentation seeded by seed, epoch and index, so resuming reproduces it).

    ``source``: an image path for :func:`open_source` or an :class:`ImageSource` of images; unreadable items raise.
    """

    def __init__(self, source: str | os.PathLike | ImageSource, processor: ImageGPTImageProcessor, *, seed: int = 0,
                 scale: float = 1.125, flip: bool = True) -> None:  # fmt: skip
        self.source = source if isinstance(source, ImageSource) else open_source(source)
        if self.source.kind != "images":
            raise ValueError(f"{self.source.path} holds tokens; AugmentedImages needs images")
        self.processor, self.seed, self.scale, self.flip, self.epoch = processor, seed, scale, flip, 0
        self.size = (processor.size["height"], processor.size["width"])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def get_batch(self, indices: Any) -> torch.Tensor:
        images = []
        for i in np.asarray(indices, dtype=np.int64).reshape(-1):
            found, items = self.source.read(int(i), int(i) + 1)
            if not len(found):
                raise ValueError(f"item {i} of {self.source.path} is unreadable (see the warning)")
            rng = np.random.default_rng([self.seed, self.epoch, int(i)])
            images.append(augment_images(items, self.size, rng, scale=self.scale, flip=self.flip,
                                         resample=self.processor.resample)[0])  # fmt: skip
        return self.processor(images, return_tensors="pt", add_start_token=True, do_color_quantize=True,
                              input_data_format="channels_last")["input_ids"]  # fmt: skip

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.get_batch([index])[0]


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Integer class ids (N,) int64 from an IDX labels file or a .npy array."""
    path = Path(path)
    y = np.load(path, allow_pickle=False) if path.name.lower().endswith(".npy") else read_idx(path)
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: labels must be a 1-D array of integer class ids, got {y.dtype} {y.shape}")
    return y.astype(np.int64)


def load_labeled(data: str | os.PathLike, labels: str | os.PathLike | None, processor: ImageGPTImageProcessor,
                 limit: int | None = None, keep_images: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:  # fmt: skip
    """Labeled images -> (ids with start token (N, 1 + H*W), labels (N,), images or None).

    Images are resized and quantized by ``processor`` (the model's own size and palette: features and fine-tuning
    must see the inputs the model was trained on). ``keep_images`` also returns them resized, as (N, H, W, 3) uint8.
    """
    if labels is None:
        raise ValueError(f"{data} needs its labels (--labels / --test-labels)")
    source, y = open_source(data), read_labels(labels)
    if source.kind != "images":
        raise ValueError(f"{data} holds pre-quantized tokens; labeled images are needed here")
    if len(y) != len(source):
        raise ValueError(f"{labels} holds {len(y)} labels for {len(source)} images in {data}")
    n = len(source) if limit is None else min(limit, len(source))
    ids, kept, images = [], [], []
    for start in range(0, n, 256):
        index, batch = source.read(start, min(start + 256, n))
        if not len(batch):
            continue
        ids.append(processor(list(batch), return_tensors="np", add_start_token=True,
                             input_data_format="channels_last")["input_ids"])  # fmt: skip
        kept.append(index)  # folders skip unreadable files: keep their labels in step
        if keep_images:
            resized = processor(list(batch), return_tensors="np", do_normalize=False, do_color_quantize=False,
                                input_data_format="channels_last")["pixel_values"]  # (B, 3, H, W) in [0, 1]
            images.append(np.rint(resized.transpose(0, 2, 3, 1) * 255).astype(np.uint8))
    if not ids:
        raise ValueError(f"no readable images in {data}")
    return np.concatenate(ids), y[np.concatenate(kept)], (np.concatenate(images) if keep_images else None)


def _sha256(text: str, data: bytes = b"") -> str:
    return hashlib.sha256(text.encode() + data).hexdigest()
