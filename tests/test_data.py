"""The pretraining data pipeline: readers (folder, .npy, IDX), tokenize -> shards + manifest, TokenDataset,
BatchIterator (determinism, exact resume, rank partition) and augmentation. Tiny fixtures built in tmp_path."""

from __future__ import annotations

import json
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_idx
from imagegpt.data import (MANIFEST, ArraySource, AugmentedImages, BatchIterator, ImageFolder, TokenDataset,
                           augment_images, open_source, read_idx, tokenize)  # fmt: skip
from imagegpt.palette import grayscale_palette, uniform_palette
from imagegpt.processor import ImageGPTImageProcessor

SIZE = {"height": 8, "width": 8}


def rgb_processor() -> ImageGPTImageProcessor:
    return ImageGPTImageProcessor(clusters=uniform_palette(2), size=SIZE)  # 8 colors, start token 8


def gray_processor() -> ImageGPTImageProcessor:
    return ImageGPTImageProcessor(clusters=grayscale_palette(16), size=SIZE)  # 16 grays, start token 16


@pytest.fixture
def folder(tmp_path):
    """7 readable images of assorted modes and sizes (one in a subfolder), a corrupt .png, a non-image file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "a_rgb.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "b.JPG")
    Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8), "L").save(root / "c_gray.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert("P").save(root / "d_palette.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA").save(root / "sub" / "e_rgba.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "sub" / "f.bmp")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "sub" / "g.webp", lossless=True)
    (root / "sub" / "z_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (root / "notes.txt").write_text("ignored")
    return root, rgb


# --- readers ------------------------------------------------------------------------------------------------------


def test_folder_reader_reads_every_mode_and_skips_the_corrupt_file(folder, caplog):
    root, rgb = folder
    source = open_source(root)
    assert isinstance(source, ImageFolder) and len(source) == 8  # the .txt is not a candidate
    with caplog.at_level(logging.WARNING, logger="imagegpt.datasets"):
        images = list(source)
    assert len(images) == 7 and source.skipped == 1 and source.skipped_files[0].endswith("z_corrupt.png")
    assert "z_corrupt.png" in caplog.text
    assert all(im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 for im in images)
    np.testing.assert_array_equal(images[0], rgb)  # sorted by relative path: a_rgb.png first, exactly read back
    gray = images[2]
    assert gray.shape == (9, 9, 3) and (gray == gray[..., :1]).all()
    palette = Image.open(root / "d_palette.png").convert("RGB")
    np.testing.assert_array_equal(images[3], np.asarray(palette))


def test_npy_and_idx_readers_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    color = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (4, 6, 7), dtype=np.uint8)
    np.save(tmp_path / "color.npy", color)
    np.save(tmp_path / "gray.npy", gray)
    np.testing.assert_array_equal(np.stack(list(open_source(tmp_path / "color.npy"))), color)
    src = open_source(tmp_path / "gray.npy")
    assert src.kind == "images"
    np.testing.assert_array_equal(np.stack(list(src)), np.repeat(gray[..., None], 3, axis=-1))
    for name, gz in (("train-images-idx3-ubyte", False), ("train-images-idx3-ubyte.gz", True)):
        write_idx(tmp_path / name, gray, gz=gz)
        src = open_source(tmp_path / name)
        assert isinstance(src, ArraySource) and len(src) == 4
        np.testing.assert_array_equal(src.read(1, 3)[1], np.repeat(gray[1:3, ..., None], 3, axis=-1))
    shorts = rng.integers(-300, 300, (3, 2), dtype=np.int16)
    write_idx(tmp_path / "x.idx", shorts, code=0x0B)  # big-endian int16 comes back native and equal
    np.testing.assert_array_equal(read_idx(tmp_path / "x.idx"), shorts)
    tokens = rng.integers(0, 8, (3, 64))
    np.save(tmp_path / "tokens.npy", tokens)
    assert open_source(tmp_path / "tokens.npy").kind == "tokens"


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        open_source(tmp_path / "missing")
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(ValueError, match="unknown dataset format"):
        open_source(tmp_path / "data.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        open_source(tmp_path / "empty")
    Image.new("RGB", (4, 4)).save(tmp_path / "one.png")
    with pytest.raises(ValueError, match="single image"):
        open_source(tmp_path / "one.png")
    np.save(tmp_path / "chw.npy", np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="channels first"):
        open_source(tmp_path / "chw.npy")
    np.save(tmp_path / "float.npy", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="must be uint8"):
        open_source(tmp_path / "float.npy")
    np.save(tmp_path / "none.npy", np.zeros((0, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        open_source(tmp_path / "none.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a plain numeric"):
        open_source(tmp_path / "obj.npy")
    write_idx(tmp_path / "labels-idx1-ubyte.gz", np.arange(5, dtype=np.uint8), gz=True)
    with pytest.raises(ValueError, match="labels"):
        open_source(tmp_path / "labels-idx1-ubyte.gz")
    (tmp_path / "bad-idx3-ubyte").write_bytes(b"\x01\x02\x08\x03" + bytes(20))
    with pytest.raises(ValueError, match="not an IDX file"):
        open_source(tmp_path / "bad-idx3-ubyte")
    write_idx(tmp_path / "cut-idx3-ubyte", np.zeros((3, 4, 4), np.uint8))
    data = (tmp_path / "cut-idx3-ubyte").read_bytes()
    (tmp_path / "cut-idx3-ubyte").write_bytes(data[:-5])
    with pytest.raises(ValueError, match="truncated"):
        open_source(tmp_path / "cut-idx3-ubyte")
    (tmp_path / "plain-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="gzip"):
        open_source(tmp_path / "plain-idx3-ubyte.gz")
    np.save(tmp_path / "tok.npy", np.full((4, 64), 9))
    with pytest.raises(ValueError, match=r"must lie in \[0, 8\)"):
        tokenize(tmp_path / "tok.npy", rgb_processor(), tmp_path / "out1")
    np.save(tmp_path / "tok49.npy", np.zeros((4, 49), np.int64))
    with pytest.raises(ValueError, match="size=7 would"):
        tokenize(tmp_path / "tok49.npy", rgb_processor(), tmp_path / "out2")
    with pytest.raises(ValueError, match="no palette"):
        tokenize(tmp_path / "tok49.npy", ImageGPTImageProcessor(size=SIZE), tmp_path / "out3")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()
    with pytest.raises(FileNotFoundError, match="tokenize"):
        TokenDataset(tmp_path / "empty")


# --- tokenize, manifest, TokenDataset -----------------------------------------------------------------------------


def test_tokenize_folder_writes_uint16_shards_and_a_correct_manifest(folder, tmp_path):
    root, _ = folder
    processor = rgb_processor()
    info = tokenize(root, processor, tmp_path / "tok", val_fraction=0.25, shard_size=2, seed=3)
    # 8 candidates, 2 drawn for val; seed 3 draws the unreadable one: val's only shard is cut short to 1 row
    assert (info.train, info.val, info.skipped, info.reused) == (6, 1, 1, False)
    manifest = json.loads((tmp_path / "tok" / MANIFEST).read_text())
    assert manifest == info.manifest
    assert (manifest["height"], manifest["width"], manifest["vocab_size"], manifest["start_token_id"]) == (8, 8, 9, 8)
    assert manifest["skipped"] == 1 and manifest["skipped_files"][0].endswith("z_corrupt.png")
    assert manifest["inputs"]["source"] == str(root.resolve()) and len(manifest["inputs"]["palette_sha256"]) == 64
    rows = {}
    for split in ("train", "val"):
        shards = manifest["splits"][split]["shards"]
        assert all(s["count"] <= 2 for s in shards)
        assert sum(s["count"] for s in shards) == (6 if split == "train" else 1)
        for s in shards:
            array = np.load(tmp_path / "tok" / s["file"])
            assert array.dtype == np.uint16 and array.shape == (s["count"], 64)
        rows[split] = np.concatenate([np.load(tmp_path / "tok" / s["file"]) for s in shards])
    # the shards hold exactly the processor's ids of the readable images, each once
    readable = [f for f in ImageFolder(root).files if "corrupt" not in f.name]
    expected = processor(readable, return_tensors="np")["input_ids"]
    got = np.concatenate([rows["train"], rows["val"]])
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, expected.tolist()))
    assert ImageGPTImageProcessor.from_pretrained(tmp_path / "tok").to_dict() == processor.to_dict()

    ds = TokenDataset(tmp_path / "tok")
    assert len(ds) == 6 and ds.seq_len == 65 and ds.vocab_size == 9
    item = ds[1]
    assert item.dtype == torch.long and item.shape == (65,) and item[0] == 8 and (item[1:] < 8).all()
    np.testing.assert_array_equal(item[1:].numpy(), rows["train"][1])
    batch = ds.get_batch([3, 0, -1])
    np.testing.assert_array_equal(batch[:, 1:].numpy(), rows["train"][[3, 0, 5]])
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers: reopens the maps
    assert torch.equal(clone[2], ds[2]) and len(pickle.dumps(ds)) < 10_000
    assert len(TokenDataset(tmp_path / "tok", "val")) == 1
    with pytest.raises(ValueError, match="available: train, val"):
        TokenDataset(tmp_path / "tok", "test")
    with pytest.raises(IndexError):
        ds[6]


def test_rerun_reuses_mismatch_refuses_overwrite_rebuilds(folder, tmp_path):
    root, _ = folder
    out = tmp_path / "tok"
    first = tokenize(root, rgb_processor(), out, progress=True)
    stamp = os.stat(out / "train-00000.npy").st_mtime_ns
    again = tokenize(root, rgb_processor(), out)
    assert again.reused and again.manifest == first.manifest and os.stat(out / "train-00000.npy").st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="differing: palette_sha256, seed"):
        tokenize(root, gray_processor(), out, seed=1)
    rebuilt = tokenize(root, gray_processor(), out, seed=1, overwrite=True)
    assert not rebuilt.reused and rebuilt.vocab_size == 17 and TokenDataset(out).vocab_size == 17
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "tok"]  # no temp or old dirs left behind
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not empty"):
            tokenize(root, rgb_processor(), tmp_path / "other", overwrite=overwrite)
    assert (tmp_path / "other" / "keep.txt").is_file()
    (out / "val-00000.npy").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        TokenDataset(out, "val")


def test_interrupted_tokenize_leaves_nothing(tmp_path):
    class Failing(ArraySource):
        def read(self, start, stop):
            if start > 0:
                raise KeyboardInterrupt  # as a user's Ctrl-C half way
            return super().read(start, stop)

    source = Failing(np.zeros((10, 8, 8), np.uint8), tmp_path / "x.npy")
    with pytest.raises(KeyboardInterrupt):
        tokenize(source, gray_processor(), tmp_path / "tok", batch_size=4)
    assert list(tmp_path.iterdir()) == []


def test_split_is_deterministic_in_the_seed(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)

    def val_rows(seed, out):
        tokenize(tmp_path / "x.npy", gray_processor(), tmp_path / out, seed=seed, val_fraction=0.2)
        ds = TokenDataset(tmp_path / out, "val")
        return len(ds), ds.get_batch(range(len(ds)))

    n, a = val_rows(0, "a")
    _, b = val_rows(0, "b")
    _, c = val_rows(1, "c")
    assert n == 8 and torch.equal(a, b) and not torch.equal(a, c)


def test_grayscale_idx_end_to_end(tmp_path):
    """A gzipped IDX of 8x8 grays -> tokens -> TokenDataset -> decode: each pixel its nearest of 16 grays."""
    gray = np.random.default_rng(3).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", gray, gz=True)
    processor = gray_processor()
    tokenize(tmp_path / "t10k-images-idx3-ubyte.gz", processor, tmp_path / "tok", val_fraction=0)
    ds = TokenDataset(tmp_path / "tok")
    assert len(ds) == 6 and len(TokenDataset(tmp_path / "tok", "val")) == 0
    decoded = processor.decode(ds.get_batch(range(6)))
    assert (decoded == decoded[..., :1]).all()
    assert np.abs(decoded[..., 0].astype(int) - gray).max() <= 9  # half a step of 255/15, plus rounding


def test_pre_quantized_tokens_skip_quantization(tmp_path):
    tokens = np.random.default_rng(4).integers(0, 8, (10, 64)).astype(np.int32)
    np.save(tmp_path / "x.npy", np.concatenate([np.full((10, 1), 8), tokens], axis=1))  # led by the start token
    info = tokenize(tmp_path / "x.npy", rgb_processor(), tmp_path / "tok", val_fraction=0)
    assert info.train == 10
    np.testing.assert_array_equal(TokenDataset(tmp_path / "tok").get_batch(range(10))[:, 1:].numpy(), tokens)


def test_augment_copies_only_the_training_split(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(5).integers(0, 256, (10, 12, 12, 3), dtype=np.uint8))
    info = tokenize(tmp_path / "x.npy", rgb_processor(), tmp_path / "tok", val_fraction=0.2, augment=2)
    assert (info.train, info.val) == (24, 2)


# --- BatchIterator ------------------------------------------------------------------------------------------------


@pytest.fixture
def indexed(tmp_path):
    """A 2x2-pixel TokenDataset of 50 rows whose ids spell the row's index in base 16."""
    ids = np.array([[(i >> (4 * d)) & 15 for d in range(4)] for i in range(50)])
    np.save(tmp_path / "ids.npy", ids)
    processor = ImageGPTImageProcessor(clusters=grayscale_palette(16), size=2)
    tokenize(tmp_path / "ids.npy", processor, tmp_path / "tok", val_fraction=0, shard_size=7)
    return TokenDataset(tmp_path / "tok")


def row_index(batch: torch.Tensor) -> list[int]:
    assert (batch[:, 0] == 16).all()
    return (batch[:, 1:] * torch.tensor([1, 16, 256, 4096])).sum(1).tolist()


def take(iterator: BatchIterator, k: int) -> list[torch.Tensor]:
    """k batches, across epoch boundaries (each ``for`` runs to the end of an epoch)."""
    out = []
    while len(out) < k:
        for batch in iterator:
            out.append(batch)
            if len(out) == k:
                break
    return out


def test_batches_are_deterministic_and_cover_each_epoch(indexed):
    it = BatchIterator(indexed, 8, seed=0)
    assert len(it) == 6
    epoch0 = [row_index(b) for b in it]
    epoch1 = [row_index(b) for b in it]
    assert all(len(b) == 8 for b in epoch0) and len(set(sum(epoch0, []))) == 48  # 2 dropped, none repeated
    assert epoch0 != epoch1 and it.state_dict()["epoch"] == 2
    assert [row_index(b) for b in BatchIterator(indexed, 8, seed=0)] == epoch0
    assert [row_index(b) for b in BatchIterator(indexed, 8, seed=1)] != epoch0
    last = [row_index(b) for b in BatchIterator(indexed, 8, seed=0, drop_last=False)]
    assert len(last[-1]) == 2 and sorted(sum(last, [])) == list(range(50))


def test_resume_reproduces_the_following_batches(indexed):
    reference = take(BatchIterator(indexed, 8, seed=7), 15)
    for k in (0, 4, 6, 9):  # mid-epoch, at an epoch boundary, in the second epoch
        first = BatchIterator(indexed, 8, seed=7)
        consumed = take(first, k)
        state = json.loads(json.dumps(first.state_dict()))  # as saved in a checkpoint
        resumed = BatchIterator(indexed, 8, seed=7)
        resumed.load_state_dict(state)
        following = take(resumed, 15 - k)
        assert all(torch.equal(a, b) for a, b in zip(consumed + following, reference))
    with pytest.raises(ValueError, match="batch_size was 8, now 5"):
        BatchIterator(indexed, 5, seed=7).load_state_dict(state)


@pytest.mark.parametrize("drop_last", [True, False])
def test_two_ranks_partition_every_global_batch(indexed, drop_last):
    ranks = [BatchIterator(indexed, 4, seed=3, rank=r, world_size=2, drop_last=drop_last) for r in range(2)]
    single = BatchIterator(indexed, 8, seed=3, drop_last=drop_last)
    batches = [[row_index(b) for b in it] for it in ranks]
    assert len(batches[0]) == len(batches[1]) == len(single) == (6 if drop_last else 7)
    for j, whole in enumerate(row_index(b) for b in single):
        a, b = batches[0][j], batches[1][j]
        assert len(a) == len(b) and not set(a) & set(b)
        if len(whole) == 8:
            assert a + b == whole  # rank r takes the r-th batch_size of the global batch
        else:  # the last partial global batch (2 items): split evenly, one each
            assert sorted(a + b) == sorted(whole)
    with pytest.raises(ValueError, match="rank"):
        BatchIterator(indexed, 4, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="no global batch"):
        BatchIterator(indexed, 30, seed=0, world_size=2)


# --- augmentation -------------------------------------------------------------------------------------------------


def test_augment_images_is_seeded_and_crops_and_flips():
    images = np.random.default_rng(6).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    a = augment_images(images, 8, np.random.default_rng(0))
    b = augment_images(images, 8, np.random.default_rng(0))
    c = augment_images(images, 8, np.random.default_rng(1))
    assert a.shape == (6, 8, 8, 3) and a.dtype == np.uint8 and np.array_equal(a, b) and not np.array_equal(a, c)
    plain = augment_images(images, (8, 8), np.random.default_rng(0), scale=1.0)  # no resize room: flips only
    flipped = [np.array_equal(p, im[:, ::-1]) for p, im in zip(plain, images)]
    assert all(f or np.array_equal(p, im) for f, p, im in zip(flipped, plain, images)) and 0 < sum(flipped) < 6
    const = augment_images([np.full((10, 6, 3), 77, np.uint8)], (4, 5), np.random.default_rng(0))
    assert const.shape == (1, 4, 5, 3) and (const == 77).all()
    with pytest.raises(ValueError, match="scale"):
        augment_images(images, 8, np.random.default_rng(0), scale=0.5)


def test_on_the_fly_augmentation_is_resumable(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(8).integers(0, 256, (12, 10, 10, 3), dtype=np.uint8))
    dataset = AugmentedImages(tmp_path / "x.npy", rgb_processor(), seed=0)
    reference = take(BatchIterator(dataset, 4, seed=1), 5)
    assert reference[0].shape == (4, 65) and (reference[0][:, 0] == 8).all() and (reference[0][:, 1:] < 8).all()
    first = BatchIterator(AugmentedImages(tmp_path / "x.npy", rgb_processor(), seed=0), 4, seed=1)
    take(first, 2)
    resumed = BatchIterator(AugmentedImages(tmp_path / "x.npy", rgb_processor(), seed=0), 4, seed=1)
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(take(resumed, 3), reference[2:]))
