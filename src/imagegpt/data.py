"""Pretraining data: images -> palette-id shards on disk -> shuffled, resumable, rank-sharded training batches.

1. :func:`open_source` reads an image folder, a .npy array or an IDX file (readers: :mod:`imagegpt.datasets`).
2. :func:`tokenize` quantizes it once with an :class:`~imagegpt.processor.ImageGPTImageProcessor` into uint16
   memory-mapped ``.npy`` shards (rows of H*W ids, no start token) and a ``manifest.json``, split into train/val.
3. :class:`TokenDataset` reads a split back: item i is a LongTensor ``[start_token, ids...]`` of length 1 + H*W.
4. :class:`BatchIterator` yields seeded, epoch-shuffled (B, 1 + H*W) batches; each rank gets its own slice of
   every global batch, and ``state_dict``/``load_state_dict`` resume exactly.

Example::

    info = tokenize("images/", processor, "tokens/", progress=True)
    batches = BatchIterator(TokenDataset("tokens/"), batch_size=64, seed=0)
    for batch in batches:  # one epoch; iterate again for the next
        loss = model(batch, labels=batch).loss
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagegpt.datasets import (ArraySource, AugmentedImages, ImageFolder, ImageSource, augment_images, open_source,
                               read_idx)
from imagegpt.processor import ImageGPTImageProcessor

logger = logging.getLogger(__name__)

__all__ = ["tokenize", "TokenizeInfo", "TokenDataset", "BatchIterator", "AugmentedImages", "open_source",
           "augment_images", "read_idx", "ImageSource", "ImageFolder", "ArraySource", "MANIFEST"]  # fmt: skip

MANIFEST = "manifest.json"
FORMAT = "imagegpt-tokens"
VERSION = 1


@dataclasses.dataclass(frozen=True)
class TokenizeInfo:
    """What :func:`tokenize` wrote (or found): the directory, split sizes, image size, vocabulary, the manifest."""

    path: Path
    train: int
    val: int
    height: int
    width: int
    vocab_size: int
    skipped: int
    reused: bool
    manifest: dict


def _palette_sha256(clusters: np.ndarray) -> str:
    c = np.ascontiguousarray(clusters)  # dtype included: quantization keeps the palette's dtype
    return hashlib.sha256(f"{c.dtype.str}{c.shape}".encode() + c.tobytes()).hexdigest()


def _inputs(source: ImageSource, processor: ImageGPTImageProcessor, **options: Any) -> dict[str, Any]:
    """Everything that determines the shards' content: re-running with equal inputs reuses them."""
    settings = {k: v for k, v in processor.to_dict().items() if k != "clusters"}
    return {"format": FORMAT, "version": VERSION, "source": str(source.path.resolve()), "source_kind": source.kind,
            "source_fingerprint": source.fingerprint(), "palette_sha256": _palette_sha256(processor.clusters),
            "processor_sha256": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
            **options}  # fmt: skip


def _info(path: Path, manifest: dict, reused: bool) -> TokenizeInfo:
    s = manifest["splits"]
    return TokenizeInfo(path, s["train"]["count"], s["val"]["count"], manifest["height"], manifest["width"],
                        manifest["vocab_size"], manifest["skipped"], reused, manifest)  # fmt: skip


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        hint = "does not exist" if not directory.exists() else f"has no {MANIFEST}: it is not a token dataset"
        raise FileNotFoundError(f"{directory} {hint}; make one with imagegpt.data.tokenize(source, processor, dir)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run tokenize with overwrite=True") from None
    if not isinstance(manifest, dict) or manifest.get("inputs", {}).get("format") != FORMAT:
        raise ValueError(f"{path} is not an {FORMAT} manifest; re-run tokenize with overwrite=True")
    if manifest["inputs"].get("version") != VERSION:
        raise ValueError(f"{path} has format version {manifest['inputs'].get('version')}, this library reads "
                         f"{VERSION}; re-run tokenize with overwrite=True")  # fmt: skip
    return manifest


def tokenize(source: str | os.PathLike | ImageSource, processor: ImageGPTImageProcessor, out_dir: str | os.PathLike,
             *, val_fraction: float = 0.05, seed: int = 0, shard_size: int = 65536, batch_size: int = 256,
             augment: int = 0, overwrite: bool = False, progress: bool = False) -> TokenizeInfo:  # fmt: skip
    """Quantize ``source`` once into uint16 token shards plus ``manifest.json`` under ``out_dir``.

    Args:
        source: a path for :func:`open_source`, or an :class:`ImageSource`. Pre-quantized token arrays (N, H*W)
            skip quantization (ids are checked against the palette).
        processor: resizes to its ``size`` and quantizes to its palette (its ``clusters``; K + 1 <= 65536).
        out_dir: the dataset directory; written as a whole in a temporary sibling, then renamed into place, so an
            interrupted run leaves no partial dataset. Its ``preprocessor_config.json`` is the processor's.
        val_fraction: the share of items held out for ``split="val"``, chosen by a permutation seeded by ``seed``.
        seed: seeds the split and the augmentation.
        shard_size: rows per shard file (each row H*W uint16).
        batch_size: images quantized at a time (bounds memory).
        augment: extra augmented copies (:func:`augment_images`) of every training image; val is never augmented.
        overwrite: replace an existing token dataset in ``out_dir`` built from other inputs (otherwise: an error
            naming them). A non-empty ``out_dir`` that is no token dataset is never replaced.
        progress: show a tqdm progress bar.

    Returns:
        :class:`TokenizeInfo`; ``reused`` is True when ``out_dir`` already held shards of the same inputs.
    """
    src = source if isinstance(source, ImageSource) else open_source(source)
    if processor.clusters is None:
        raise ValueError("the processor has no palette (clusters); tokenizing needs one: "
                         "ImageGPTImageProcessor(clusters=..., size=...)")  # fmt: skip
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if shard_size < 1 or batch_size < 1 or augment < 0:
        raise ValueError(f"shard_size and batch_size must be positive and augment >= 0, got {shard_size}, "
                         f"{batch_size}, {augment}")  # fmt: skip
    n_colors = len(processor.clusters)
    if n_colors + 1 > 65536:
        raise ValueError(f"a palette of {n_colors} colors does not fit uint16 shards (at most 65535 colors)")
    if augment and src.kind == "tokens":
        raise ValueError("augment needs images; pre-quantized token arrays cannot be augmented")
    h, w = processor.size["height"], processor.size["width"]
    out = Path(out_dir)
    inputs = _inputs(src, processor, val_fraction=val_fraction, seed=seed, shard_size=shard_size, augment=augment)
    if out.exists():
        if (out / MANIFEST).is_file() and not overwrite:
            manifest = _read_manifest(out)
            old = manifest["inputs"]
            differ = sorted(k for k in set(inputs) | set(old) if inputs.get(k) != old.get(k))
            if differ:
                raise FileExistsError(f"{out} holds tokens made from other inputs (differing: {', '.join(differ)}); "
                                      "pass overwrite=True to replace them, or another out_dir")  # fmt: skip
            TokenDataset(out, "train"), TokenDataset(out, "val")  # shards present and of the right shapes
            logger.info("reusing the token shards in %s (same inputs)", out)
            return _info(out, manifest, reused=True)
        if not (out / MANIFEST).is_file() and any(out.iterdir()):  # never delete a folder we did not write
            raise FileExistsError(f"{out} exists, is not empty and is no token dataset; pass an empty or new out_dir")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        manifest = _write(src, processor, tmp, inputs, h, w, batch_size, progress)
        if out.exists():  # overwrite: move the old one aside first so that out_dir is never half written
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, trash / "data")
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info = _info(out, manifest, reused=False)
    logger.info("wrote %d train and %d val rows of %dx%d ids to %s", info.train, info.val, h, w, out)
    return info


class _ShardWriter:
    """Rows appended to ``{split}-{i:05d}.npy`` files of ``shard_size`` rows; only the last may be shorter."""

    def __init__(self, directory: Path, split: str, expected: int, shard_size: int, length: int) -> None:
        self.directory, self.split, self.remaining = directory, split, expected
        self.shard_size, self.length = shard_size, length
        self.shards: list[dict[str, Any]] = []
        self.array: np.ndarray | None = None
        self.filled = 0

    def append(self, rows: np.ndarray) -> None:
        while len(rows):
            if self.array is None or self.filled == len(self.array):
                self._close()
                rows_here = max(1, min(self.shard_size, self.remaining))  # sized to what is left: no empty tail
                name = f"{self.split}-{len(self.shards):05d}.npy"
                self.array = np.lib.format.open_memmap(self.directory / name, "w+", np.uint16, (rows_here, self.length))
                self.shards.append({"file": name, "count": 0})
            take = min(len(rows), len(self.array) - self.filled)
            self.array[self.filled : self.filled + take] = rows[:take]
            self.filled += take
            self.remaining -= take
            self.shards[-1]["count"] = self.filled
            rows = rows[take:]

    def _close(self) -> None:
        if self.array is None:
            return
        self.array.flush()
        if self.filled < len(self.array):  # unreadable files made the last shard short: rewrite it at its size
            path = self.directory / self.shards[-1]["file"]
            short = np.lib.format.open_memmap(path.with_suffix(".short"), "w+", np.uint16, (self.filled, self.length))
            short[:] = self.array[: self.filled]
            short.flush()
            del short
            self.array = None
            os.replace(path.with_suffix(".short"), path)
        self.array, self.filled = None, 0

    def finish(self) -> dict[str, Any]:
        self._close()
        return {"count": sum(s["count"] for s in self.shards), "shards": self.shards}


def _write(src: ImageSource, processor: ImageGPTImageProcessor, tmp: Path, inputs: dict, h: int, w: int,
           batch_size: int, progress: bool) -> dict:  # fmt: skip
    n, length, start_token = len(src), h * w, processor.start_token_id
    n_val = 0 if inputs["val_fraction"] == 0 or n < 2 else min(n - 1, max(1, round(inputs["val_fraction"] * n)))
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(inputs["seed"]).permutation(n)[:n_val]] = True
    copies = 1 + inputs["augment"]
    writers = {"train": _ShardWriter(tmp, "train", (n - n_val) * copies, inputs["shard_size"], length),
               "val": _ShardWriter(tmp, "val", n_val, inputs["shard_size"], length)}  # fmt: skip
    rng = np.random.default_rng([inputs["seed"], 1])  # augmentation stream, separate from the split's
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="tokenize", unit="img")
    logger.info("tokenizing %d items from %s into %dx%d ids (%d colors)", n, src.path, h, w, start_token)
    quantize = dict(return_tensors="np", input_data_format="channels_last", add_start_token=False,
                    do_color_quantize=True)  # fmt: skip
    for start in range(0, n, batch_size):
        indices, items = src.read(start, min(start + batch_size, n))
        if src.kind == "tokens":
            ids = _check_tokens(np.asarray(items), length, start_token, src.path)
        elif len(indices):
            ids = processor(items, **quantize)["input_ids"]
        else:
            ids = np.empty((0, length), np.int64)
        if ids.shape[1] != length:
            raise ValueError(f"the processor made rows of {ids.shape[1]} ids, not {h}x{w}; set do_resize=True")
        val = is_val[indices]
        writers["val"].append(ids[val].astype(np.uint16))
        writers["train"].append(ids[~val].astype(np.uint16))
        train_images = [item for item, v in zip(items, val) if not v] if src.kind == "images" else []
        for _ in range(inputs["augment"]):
            if train_images:
                augmented = augment_images(train_images, (h, w), rng, resample=processor.resample)
                writers["train"].append(processor(augmented, **quantize)["input_ids"].astype(np.uint16))
        if bar is not None:
            bar.update(min(batch_size, n - start))
    if bar is not None:
        bar.close()
    splits = {name: writer.finish() for name, writer in writers.items()}
    if splits["train"]["count"] + splits["val"]["count"] == 0:
        raise ValueError(f"no readable images in {src.path} ({src.skipped} skipped, see the warnings)")
    if src.skipped:
        logger.warning("%d of %d images in %s were unreadable and skipped", src.skipped, n, src.path)
    manifest = {"inputs": inputs, "height": h, "width": w, "seq_len": length, "n_colors": start_token,
                "vocab_size": start_token + 1, "start_token_id": start_token, "dtype": "uint16",
                "source": str(src.path), "source_items": n, "skipped": src.skipped,
                "skipped_files": src.skipped_files[:1000], "splits": splits}  # fmt: skip
    processor.save_pretrained(tmp)  # the palette and settings, to decode samples of a model trained on these
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")  # last: marks it complete
    return manifest


def _check_tokens(ids: np.ndarray, length: int, start_token: int, path: Path) -> np.ndarray:
    if ids.shape[1] == length + 1 and (ids[:, 0] == start_token).all():
        ids = ids[:, 1:]  # rows led by the start token
    if ids.shape[1] != length:
        side = int(round(ids.shape[1] ** 0.5))
        hint = f" (size={side} would)" if side * side == ids.shape[1] else ""
        raise ValueError(f"{path}: token rows of length {ids.shape[1]} do not match the processor's size "
                         f"({length} ids); pass a processor whose height*width is {ids.shape[1]}{hint}")  # fmt: skip
    if ids.size and (ids.min() < 0 or ids.max() >= start_token):
        raise ValueError(f"{path}: token ids must lie in [0, {start_token}) for this {start_token}-color palette, "
                         f"got [{ids.min()}, {ids.max()}]; use the palette they were quantized with")  # fmt: skip
    return ids.astype(np.int64)


class TokenDataset:
    """One split of a :func:`tokenize` directory, memory-mapped: ``ds[i]`` is a LongTensor of 1 + H*W ids, the
    start token (``vocab_size - 1``) first.

    Attributes: ``height``, ``width``, ``vocab_size``, ``start_token_id``, ``seq_len`` (1 + H*W), ``manifest``.
    """

    def __init__(self, directory: str | os.PathLike, split: str = "train") -> None:
        self.directory = Path(directory)
        self.manifest = _read_manifest(self.directory)
        if split not in self.manifest["splits"]:
            names = ", ".join(self.manifest["splits"])
            raise ValueError(f"no split {split!r} in {self.directory}; available: {names}")
        self.split = split
        self.height, self.width = self.manifest["height"], self.manifest["width"]
        self.vocab_size, self.start_token_id = self.manifest["vocab_size"], self.manifest["start_token_id"]
        self.seq_len = 1 + self.height * self.width
        shards = self.manifest["splits"][split]["shards"]
        self._files = [self.directory / s["file"] for s in shards]
        self._offsets = np.cumsum([0] + [s["count"] for s in shards])
        self._arrays: list[np.ndarray] | None = None
        self._open()  # fail now, not at the first batch, when a shard is missing or damaged

    def _open(self) -> list[np.ndarray]:
        if self._arrays is None:
            arrays = []
            for f, n in zip(self._files, np.diff(self._offsets)):
                if not f.is_file():
                    raise FileNotFoundError(f"shard {f} is missing; re-run tokenize with overwrite=True")
                a = np.load(f, mmap_mode="r")
                if a.dtype != np.uint16 or a.shape != (n, self.seq_len - 1):
                    raise ValueError(f"shard {f} is {a.dtype} {a.shape}, the manifest says uint16 "
                                     f"({n}, {self.seq_len - 1}); re-run tokenize with overwrite=True")  # fmt: skip
                arrays.append(a)
            self._arrays = arrays
        return self._arrays

    def __getstate__(self) -> dict:  # pickled for DataLoader workers: reopen the maps there, do not copy them
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.get_batch([index])[0]

    def get_batch(self, indices: Any) -> torch.Tensor:
        """Rows ``indices`` (any order, negatives from the end) -> (len(indices), 1 + H*W) LongTensor."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for a dataset of {n} items")
        idx = np.where(idx < 0, idx + n, idx)
        out = np.empty((len(idx), self.seq_len), np.int64)
        out[:, 0] = self.start_token_id
        shard = np.searchsorted(self._offsets, idx, side="right") - 1
        for s in np.unique(shard):
            rows = shard == s
            local = idx[rows] - self._offsets[s]
            order = np.argsort(local, kind="stable")  # ascending reads from the map: sequential on disk
            out[np.flatnonzero(rows)[order], 1:] = self._open()[s][local[order]]
        return torch.from_numpy(out)

    def __repr__(self) -> str:
        return f"TokenDataset({str(self.directory)!r}, split={self.split!r}, n={len(self)}, {self.height}x{self.width})"


class BatchIterator:
    """Seeded, epoch-shuffled, resumable batches of a dataset, each rank taking its own part of every global batch.

    Epoch e is a permutation of the dataset drawn from ``(seed, e)``; global batch j is its items
    ``j*G : (j+1)*G`` with ``G = batch_size * world_size``, and rank r takes the r-th ``batch_size`` of them, so
    ranks never overlap and together cover the global batch. Iterating runs from the current position to the end
    of the epoch, then moves to the next epoch (iterate again for it). ``drop_last=False`` keeps the last partial
    global batch; with several ranks it is padded from the epoch's start to a multiple of ``world_size`` and split
    evenly, so all ranks see batches of the same size.

    ``state_dict()`` after k batches + ``load_state_dict`` on a new iterator (same dataset size, batch size, seed and
    world size) gives exactly the batches the first would have given next.

    The dataset needs ``__len__`` and ``get_batch(indices)`` (as :class:`TokenDataset`) or ``__getitem__``; one
    with ``set_epoch(epoch)`` (as :class:`AugmentedImages`) is told the epoch before each.
    """

    def __init__(self, dataset: Any, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True) -> None:  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, int(seed)
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.position = 0, 0
        self._perm: tuple[int, np.ndarray | None] = (-1, None)
        if len(self) == 0:
            raise ValueError(f"{len(dataset)} items make no global batch of {batch_size} x {world_size} ranks with "
                             "drop_last=True; use a smaller batch_size or drop_last=False")  # fmt: skip

    def __len__(self) -> int:
        """Batches per epoch."""
        n, g = len(self.dataset), self.batch_size * self.world_size
        return n // g if self.drop_last else -(-n // g)

    def _indices(self, epoch: int, batch: int) -> np.ndarray:
        if self._perm[0] != epoch:  # one permutation per epoch, not per batch
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset)))
        perm = self._perm[1]
        g = self.batch_size * self.world_size
        chunk = perm[batch * g : (batch + 1) * g]
        if len(chunk) < g:  # the last partial global batch (drop_last=False)
            per_rank = -(-len(chunk) // self.world_size)
            chunk = np.resize(np.concatenate([chunk, perm]), per_rank * self.world_size)
            return chunk[self.rank * per_rank : (self.rank + 1) * per_rank]
        return chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __iter__(self) -> Iterator[torch.Tensor]:
        epoch = self.epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        while self.epoch == epoch and self.position < len(self):
            indices = self._indices(epoch, self.position)
            self.position += 1  # before yielding: a state_dict taken now resumes after this batch
            if self.position == len(self):
                self.epoch, self.position = epoch + 1, 0
            if hasattr(self.dataset, "get_batch"):
                yield self.dataset.get_batch(indices)
            else:
                yield torch.stack([torch.as_tensor(self.dataset[int(i)]) for i in indices])

    def state_dict(self) -> dict[str, int]:
        """Where the iteration stands, plus the settings a resume must share."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "batch_size": self.batch_size,
                "world_size": self.world_size, "dataset_len": len(self.dataset)}  # fmt: skip

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state_dict()``; raises ValueError when the settings differ (batches would too)."""
        mine = self.state_dict()
        differ = [k for k in ("seed", "batch_size", "world_size", "dataset_len") if k in state and state[k] != mine[k]]
        if differ:
            changes = ", ".join(f"{k} was {state[k]}, now {mine[k]}" for k in differ)
            raise ValueError(f"cannot resume exactly: {changes}")
        if not 0 <= state["position"] < len(self):
            raise ValueError(f"position {state['position']} is outside an epoch of {len(self)} batches")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
