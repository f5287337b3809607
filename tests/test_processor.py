"""ImageGPTImageProcessor against transformers' on real photos, every input kind, JSON both ways, bad inputs."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from imagegpt.processor import ImageGPTImageProcessor, color_quantize

SIZE = {"height": 32, "width": 32}


@pytest.fixture(scope="module")
def photos():
    """scikit-learn's two bundled photos (china.jpg, flower.jpg), 427x640 RGB."""
    datasets = pytest.importorskip("sklearn.datasets")
    return [Image.fromarray(a) for a in datasets.load_sample_images().images]


@pytest.fixture(scope="module")
def palettes(photos):
    """A random 512-color palette and one fitted to the photos with k-means (64 colors)."""
    cluster = pytest.importorskip("sklearn.cluster")
    rng = np.random.default_rng(0)
    pixels = np.concatenate([np.asarray(p).reshape(-1, 3) for p in photos]) / 127.5 - 1
    pixels = pixels[rng.choice(len(pixels), 20000, replace=False)]
    fitted = cluster.MiniBatchKMeans(64, random_state=0, n_init=1, max_iter=20).fit(pixels).cluster_centers_
    return {"random512": rng.uniform(-1, 1, (512, 3)), "kmeans64": fitted}


@pytest.fixture(scope="module")
def hf_processor_cls(transformers):
    return transformers.ImageGPTImageProcessor


def _ids(processor, images, **kw):
    return np.asarray(processor(images, return_tensors="np", **kw)["input_ids"])


@pytest.mark.parametrize("palette", ["random512", "kmeans64"])
@pytest.mark.parametrize("size", [32, 18])
def test_ids_identical_to_transformers_on_photos(photos, palettes, hf_processor_cls, palette, size):
    clusters = palettes[palette]
    theirs = hf_processor_cls(clusters=clusters, size={"height": size, "width": size})
    ours = ImageGPTImageProcessor(clusters=clusters, size={"height": size, "width": size})
    expected = _ids(theirs, photos)
    assert expected.shape == (2, size * size)
    np.testing.assert_array_equal(_ids(ours, photos), expected)
    assert len(np.unique(expected)) > 10  # a real test: many colors in use


@pytest.mark.parametrize("resample", [Image.Resampling.NEAREST, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS])
def test_resample_options_match(photos, palettes, hf_processor_cls, resample):
    kw = dict(clusters=palettes["kmeans64"], size=SIZE, resample=resample)
    np.testing.assert_array_equal(_ids(ImageGPTImageProcessor(**kw), photos),
                                  _ids(hf_processor_cls(**kw), photos))  # fmt: skip


MODES = ["RGB", "L", "LA", "P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "I;16", "F", "1", "HSV", "LAB"]


@pytest.mark.parametrize("mode", MODES)
def test_every_pil_mode(photos, palettes, hf_processor_cls, mode):
    """Ours takes every mode. transformers takes only RGB; for other modes we compare with transformers on the
    RGB image our conversion produces (opaque images: Pillow's convert("RGB"); alpha: composited on white)."""
    photo = photos[1].resize((80, 60))
    image = photo.convert(mode) if mode not in ("I;16", "I", "F") else photo.convert("L").convert(mode)
    ours = ImageGPTImageProcessor(clusters=palettes["kmeans64"], size=SIZE)
    theirs = hf_processor_cls(clusters=palettes["kmeans64"], size=SIZE)
    got = _ids(ours, image)
    if mode in ("I", "I;16", "F"):  # high-bit grayscale is scaled to 8 bits: same as the 8-bit gray image
        rgb = photo.convert("L").convert("RGB")
    elif mode in ("LA", "PA", "RGBA"):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    else:
        rgb = image.convert("RGB")
    np.testing.assert_array_equal(got, _ids(theirs, rgb))


def test_transparency_is_white_and_16_bit_is_scaled():
    clusters = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])  # black, white
    ours = ImageGPTImageProcessor(clusters=clusters, size={"height": 4, "width": 4})
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert (_ids(ours, transparent) == 1).all()
    bright16 = Image.fromarray(np.full((4, 4), 60000, np.uint16))  # I;16: 60000/65535 is near white
    assert (_ids(ours, bright16) == 1).all()


def test_numpy_and_torch_inputs_in_every_layout(photos, palettes, hf_processor_cls):
    clusters = palettes["random512"]
    expected = _ids(hf_processor_cls(clusters=clusters, size=SIZE), photos[0])
    ours = ImageGPTImageProcessor(clusters=clusters, size=SIZE)
    hwc = np.asarray(photos[0])
    inputs = {
        "hwc uint8": hwc,
        "chw uint8": hwc.transpose(2, 0, 1),
        "hwc float": hwc / 255.0,
        "chw float32": (hwc / 255.0).astype(np.float32).transpose(2, 0, 1),
        "torch chw": torch.from_numpy(hwc.transpose(2, 0, 1).copy()),
        "torch hwc float": torch.from_numpy(hwc / 255.0),
    }
    for name, image in inputs.items():
        np.testing.assert_array_equal(_ids(ours, image), expected, err_msg=name)
    gray = np.asarray(photos[0].convert("L"))
    np.testing.assert_array_equal(_ids(ours, gray), _ids(ours, photos[0].convert("L")))


def test_batches_lists_and_return_types(photos, palettes, tmp_path):
    ours = ImageGPTImageProcessor(clusters=palettes["kmeans64"], size=SIZE)
    batch = _ids(ours, photos)
    np.testing.assert_array_equal(batch[1], _ids(ours, photos[1])[0])  # batch == per image
    stacked = np.stack([np.asarray(p.resize((64, 48))) for p in photos])  # (N, H, W, 3) array = a batch
    assert _ids(ours, stacked).shape == (2, 1024)
    path = tmp_path / "photo.png"
    photos[0].save(path)
    np.testing.assert_array_equal(_ids(ours, [path, str(path)]), np.stack([batch[0], batch[0]]))
    pt = ours(photos, return_tensors="pt")
    assert pt.input_ids.dtype == torch.int64 and pt.input_ids.shape == (2, 1024)
    plain = ours(photos)["input_ids"]
    assert isinstance(plain, list) and plain[0].shape == (1024,)
    pixels = ours(photos, do_color_quantize=False, return_tensors="np")["pixel_values"]
    assert pixels.shape == (2, 3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1


def test_start_token_and_decode(photos, palettes):
    clusters = palettes["kmeans64"]
    ours = ImageGPTImageProcessor(clusters=clusters, size=SIZE)
    ids = ours(photos, return_tensors="pt", add_start_token=True).input_ids
    assert ids.shape == (2, 1025) and (ids[:, 0] == 64).all() and ours.start_token_id == 64
    images = ours.decode(ids)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, ours.decode(ids[:, 1:]))
    colors = np.rint(127.5 * (clusters + 1)).astype(np.uint8)
    np.testing.assert_array_equal(images[0, 0, 0], colors[ids[0, 1]])
    assert ours.decode(ids[0, 1:]).shape == (32, 32, 3)
    # decoding then encoding the palette image is a fixed point: its pixels are palette colors
    np.testing.assert_array_equal(_ids(ours, images), ids[:, 1:].numpy())


def test_chunked_quantization_equals_one_shot_and_bounds_memory(palettes):
    rng = np.random.default_rng(1)
    pixels = rng.uniform(-1, 1, (64, 64, 64, 3)).astype(np.float32)  # 262,144 pixels
    clusters = palettes["random512"]
    small = color_quantize(pixels, clusters, chunk_size=1000)
    np.testing.assert_array_equal(small, color_quantize(pixels, clusters, chunk_size=len(pixels.reshape(-1, 3))))
    full_matrix = pixels.size // 3 * len(clusters) * 8  # 1 GiB of float64 distances if done in one go
    tracemalloc.start()
    color_quantize(pixels, clusters, chunk_size=4096)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < full_matrix / 20, f"peak {peak / 2**20:.0f} MiB"


def test_json_round_trips_both_ways(palettes, hf_processor_cls, tmp_path, photos):
    ours = ImageGPTImageProcessor(clusters=palettes["kmeans64"], size={"height": 18, "width": 20}, resample=3)
    ours.save_pretrained(tmp_path / "ours")
    data = json.loads((tmp_path / "ours" / "preprocessor_config.json").read_text())
    assert data["image_processor_type"] == "ImageGPTImageProcessor" and len(data["clusters"]) == 64
    theirs = hf_processor_cls.from_pretrained(tmp_path / "ours")
    np.testing.assert_array_equal(np.asarray(theirs.clusters), ours.clusters)
    np.testing.assert_array_equal(_ids(theirs, photos), _ids(ours, photos))
    theirs.save_pretrained(tmp_path / "theirs")
    back = ImageGPTImageProcessor.from_pretrained(tmp_path / "theirs")
    np.testing.assert_array_equal(back.clusters, ours.clusters)
    assert back.size == {"height": 18, "width": 20} and back.resample == 3
    np.testing.assert_array_equal(_ids(back, photos), _ids(theirs, photos))
    assert ImageGPTImageProcessor.from_pretrained(tmp_path / "theirs", size=42).size == {"height": 42, "width": 42}


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda p: ([], {}), ValueError, "empty list"),
        (lambda p: (np.zeros((8, 8, 2), np.uint8), {}), ValueError, "no channel axis of 1, 3 or 4"),
        (lambda p: (np.zeros((5, 8, 8, 5), np.uint8), {}), ValueError, "no channel axis"),
        (lambda p: (np.zeros((0, 8, 3), np.uint8), {}), ValueError, "0-sized"),
        (lambda p: (Image.new("RGB", (0, 4)), {}), ValueError, "0-sized"),
        (lambda p: (p / "missing.png", {}), FileNotFoundError, "image file not found"),
        (lambda p: (p / "notes.txt", {}), ValueError, "not an image Pillow can read"),
        (lambda p: (np.full((4, 4, 3), 2.5), {}), ValueError, r"values in \[0, 1\]"),
        (lambda p: (np.full((4, 4, 3), 300, np.int32), {}), ValueError, "0..255"),
        (lambda p: ({"a": 1}, {}), TypeError, "unsupported image type dict"),
        (lambda p: (np.zeros((4, 4, 3), np.uint8), {"return_tensors": "tf"}), ValueError, "return_tensors"),
        (lambda p: (np.zeros((4, 4, 3), np.uint8), {"do_resise": True}), TypeError, "unknown argument"),
    ],
)
def test_bad_inputs(tmp_path, make, error, match):
    (tmp_path / "notes.txt").write_text("not an image")
    image, kwargs = make(tmp_path)
    processor = ImageGPTImageProcessor(clusters=[[0.0, 0.0, 0.0]], size={"height": 4, "width": 4})
    with pytest.raises(error, match=match):
        processor(image, **kwargs)


def test_config_and_decode_errors():
    with pytest.raises(ValueError, match="needs clusters"):
        ImageGPTImageProcessor(size=SIZE)(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(K, 3\)"):
        ImageGPTImageProcessor(clusters=[[0.0, 0.0]])
    with pytest.raises(ValueError, match="size must be"):
        ImageGPTImageProcessor(size={"height": 4})
    processor = ImageGPTImageProcessor(clusters=[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], size={"height": 2, "width": 2})
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 2\)"):
        processor.decode([[0, 1, 2, 0]])
    with pytest.raises(ValueError, match="do not make 2x2 images"):
        processor.decode([[0, 1, 1]])
