"""ImageGPTImageProcessor against transformers' (the oracle) on real photos, every input kind, JSON both ways,
bad inputs, decode and bounded-memory quantization.

The oracle is transformers' PIL backend (ImageGPTImageProcessorPil). It takes only RGB (and 3-channel)
inputs by default; with do_convert_rgb=True it converts like we always do, so most modes compare directly.
"""

from __future__ import annotations

import json
import logging
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from imagegpt.processor import BatchFeature, ImageGPTImageProcessor, color_quantize

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
def hf(transformers):
    """transformers' PIL-backend processor class: the oracle. Where torchvision is installed,
    transformers.ImageGPTImageProcessor is a torchvision-based one that resizes differently, so ask for the PIL
    backend by name."""
    for name in ("transformers", "transformers.models.auto.image_processing_auto"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return getattr(transformers, "ImageGPTImageProcessorPil", transformers.ImageGPTImageProcessor)


@pytest.fixture(scope="module")
def translucent(photos):
    """A small photo whose alpha runs from 0 to 255 across it: transparency that matters."""
    rgba = photos[1].resize((80, 60)).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 80).astype(np.uint8), (60, 1))))
    return rgba


def _ids(processor, images, **kw):
    return np.asarray(processor(images, return_tensors="np", **kw)["input_ids"])


@pytest.mark.parametrize("palette", ["random512", "kmeans64"])
@pytest.mark.parametrize("size", [32, 18])
def test_ids_identical_to_transformers_on_photos(photos, palettes, hf, palette, size):
    clusters = palettes[palette]
    theirs = hf(clusters=clusters, size={"height": size, "width": size})
    ours = ImageGPTImageProcessor(clusters=clusters, size={"height": size, "width": size})
    expected = _ids(theirs, photos)
    assert expected.shape == (2, size * size)
    np.testing.assert_array_equal(_ids(ours, photos), expected)
    assert len(np.unique(expected)) > 10  # a real test: many colors in use


def test_defaults_and_float32_tensor_palette(photos, palettes, hf):
    ours, theirs = ImageGPTImageProcessor(), hf()
    assert ours.size == dict(theirs.size) == {"height": 256, "width": 256}
    assert ours.resample == int(theirs.resample) == Image.Resampling.BILINEAR
    assert ours.do_resize and ours.do_normalize and ours.do_color_quantize and ours.clusters is None
    clusters = torch.tensor(palettes["kmeans64"], dtype=torch.float32)  # float32 distances, as transformers
    kw = dict(clusters=clusters, size=SIZE)
    np.testing.assert_array_equal(_ids(ImageGPTImageProcessor(**kw), photos), _ids(hf(**kw), photos))


@pytest.mark.parametrize("resample", [Image.Resampling.NEAREST, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS])
def test_resample_options_match(photos, palettes, hf, resample):
    kw = dict(clusters=palettes["kmeans64"], size=SIZE, resample=resample)
    expected = _ids(hf(**kw), photos)
    np.testing.assert_array_equal(_ids(ImageGPTImageProcessor(**kw), photos), expected)
    np.testing.assert_array_equal(_ids(ImageGPTImageProcessor(**{**kw, "resample": int(resample)}), photos), expected)


def test_call_overrides_match_transformers(photos, palettes, hf):
    ours = ImageGPTImageProcessor(clusters=palettes["random512"], size=SIZE)
    theirs = hf(clusters=palettes["random512"], size=SIZE)
    kw = dict(size=18, clusters=palettes["kmeans64"], resample=Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(_ids(ours, photos, **kw), _ids(theirs, photos, **kw))
    assert _ids(ours, photos, size=(12, 20)).shape == (2, 240)
    mine, their_list = ours(photos)["input_ids"], theirs(photos)["input_ids"]  # return_tensors=None: lists
    assert isinstance(mine, list) and len(mine) == len(their_list) == 2
    assert all(np.array_equal(m, t) and m.dtype == t.dtype for m, t in zip(mine, their_list))
    assert torch.equal(ours(photos, return_tensors="pt").input_ids, theirs(photos, return_tensors="pt").input_ids)
    for kw in ({}, {"do_normalize": False}, {"do_resize": False, "do_rescale": False}):
        image = photos[0].resize((24, 16)) if "do_resize" in kw else photos[0]
        mine = ours(image, do_color_quantize=False, return_tensors="np", **kw)["pixel_values"]
        np.testing.assert_array_equal(mine, theirs(image, do_color_quantize=False, return_tensors="np", **kw)["pixel_values"])
        assert mine.dtype == np.float32


MODES = ["RGB", "L", "LA", "P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr", "HSV", "1", "I", "I;16", "I;16B", "F"]


@pytest.mark.parametrize("mode", MODES)
def test_every_pil_mode_equals_transformers_do_convert_rgb(translucent, palettes, hf, mode):
    """Where transformers converts (do_convert_rgb=True), our always-on conversion gives the same ids. Its
    default (do_convert_rgb unset) raises on all these modes but RGB (and misreads YCbCr/HSV as RGB)."""
    image = translucent.convert(mode)
    kw = dict(clusters=palettes["kmeans64"], size=SIZE)
    np.testing.assert_array_equal(_ids(ImageGPTImageProcessor(**kw), image), _ids(hf(**kw, do_convert_rgb=True), image))


def test_modes_transformers_mishandles(translucent, photos, palettes, hf):
    """Deliberate differences, compared with transformers on the RGB image we state we make from them."""
    kw = dict(clusters=palettes["kmeans64"], size=SIZE)
    ours, theirs = ImageGPTImageProcessor(**kw), hf(**kw, do_convert_rgb=True)
    # La (Pillow can't convert it to RGB or RGBA; transformers raises): as the same image in LA
    np.testing.assert_array_equal(_ids(ours, translucent.convert("La")), _ids(theirs, translucent.convert("La").convert("LA")))
    # RGBa (premultiplied): transformers keeps the premultiplied colors (on black); we composite on white
    rgba = translucent.convert("RGBa").convert("RGBA")
    np.testing.assert_array_equal(_ids(ours, translucent.convert("RGBa")), _ids(theirs, rgba))
    # LAB: transformers takes its "A" (a*) band for alpha; we use Pillow's convert("RGB")
    lab = photos[0].convert("LAB")
    np.testing.assert_array_equal(_ids(ours, lab), _ids(theirs, lab.convert("RGB")))
    # 16-bit data is scaled to 8 bits (Pillow and transformers clip at 255); F in [0, 1] is scaled by 255
    gray = np.asarray(photos[0].convert("L"))
    expected = _ids(theirs, photos[0].convert("L"))
    np.testing.assert_array_equal(_ids(ours, Image.fromarray(gray.astype(np.uint16) * 257)), expected)
    np.testing.assert_array_equal(_ids(ours, Image.fromarray((gray / 255).astype(np.float32), "F")), expected)
    np.testing.assert_array_equal(_ids(ours, Image.fromarray(gray.astype(np.int32) * 65793, "I")), expected)


def test_transparency_is_white_and_palette_transparency(palettes, hf):
    clusters = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])  # black, white
    ours = ImageGPTImageProcessor(clusters=clusters, size={"height": 4, "width": 4})
    assert (_ids(ours, Image.new("RGBA", (4, 4), (0, 0, 0, 0))) == 1).all()
    assert (_ids(ours, np.zeros((4, 4, 4), np.uint8)) == 1).all()
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 200, 30, 30])
    p.paste(1, (0, 0, 4, 8))
    p.info["transparency"] = 0  # the black half is transparent
    kw = dict(clusters=palettes["kmeans64"], size=SIZE)
    got = _ids(ImageGPTImageProcessor(**kw), p)
    np.testing.assert_array_equal(got, _ids(hf(**kw, do_convert_rgb=True), p))
    assert got[0, -1] == _ids(ImageGPTImageProcessor(**kw), Image.new("RGB", (8, 8), "white"))[0, 0]


def test_paths_load_like_transformers(translucent, photos, palettes, hf, tmp_path):
    """Paths: EXIF orientation applied and alpha dropped, as transformers' load_image."""
    png, jpg = tmp_path / "a.png", tmp_path / "b.jpg"
    translucent.save(png)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    photos[0].resize((60, 40)).save(jpg, exif=exif)
    kw = dict(clusters=palettes["kmeans64"], size={"height": 20, "width": 24})
    ours, theirs = ImageGPTImageProcessor(**kw), hf(**kw)
    for path in (png, jpg):
        np.testing.assert_array_equal(_ids(ours, path), _ids(theirs, str(path)), err_msg=path.name)
    assert not np.array_equal(_ids(ours, jpg), _ids(ours, Image.open(jpg)))  # in-memory images: no EXIF turn


def test_numpy_and_torch_inputs_in_every_layout(photos, palettes, hf):
    clusters = palettes["random512"]
    expected = _ids(hf(clusters=clusters, size=SIZE), photos[0])
    ours = ImageGPTImageProcessor(clusters=clusters, size=SIZE)
    hwc = np.asarray(photos[0])
    inputs = {
        "hwc uint8": hwc,
        "chw uint8": hwc.transpose(2, 0, 1),
        "hwc int64": hwc.astype(np.int64),
        "hwc float64 [0,1]": hwc / 255.0,
        "chw float32 [0,1]": (hwc / 255.0).astype(np.float32).transpose(2, 0, 1),
        "hwc float 0..255": hwc.astype(np.float32),
        "torch chw": torch.from_numpy(hwc.transpose(2, 0, 1).copy()),
        "torch hwc float": torch.from_numpy(hwc / 255.0),
    }
    for name, image in inputs.items():
        np.testing.assert_array_equal(_ids(ours, image), expected, err_msg=name)
    assert _ids(ours, torch.from_numpy(hwc / 255.0).to(torch.bfloat16)).shape == (1, 1024)
    gray = np.asarray(photos[0].convert("L"))
    expected_gray = _ids(hf(clusters=clusters, size=SIZE, do_convert_rgb=True), gray[:, :, None])
    for image in (gray, gray[:, :, None], gray[None], photos[0].convert("L")):
        np.testing.assert_array_equal(_ids(ours, image), expected_gray)


def test_rgba_arrays_and_ambiguous_layouts_match_transformers(translucent, palettes, hf):
    kw = dict(clusters=palettes["kmeans64"], size=SIZE)
    ours, theirs = ImageGPTImageProcessor(**kw), hf(**kw, do_convert_rgb=True)
    rgba = np.asarray(translucent)
    np.testing.assert_array_equal(_ids(ours, rgba), _ids(theirs, rgba))  # numpy alpha blend, round half even
    np.testing.assert_array_equal(_ids(ours, torch.from_numpy(rgba.transpose(2, 0, 1).copy())), _ids(theirs, rgba))
    ambiguous = np.asarray(translucent.convert("RGB"))[:3, :, :3].copy()  # (3, 80, 3): both ends could be C
    np.testing.assert_array_equal(_ids(ours, ambiguous), _ids(hf(**kw), ambiguous))  # channels first, as theirs
    as_hwc = _ids(ours, ambiguous, input_data_format="channels_last")
    np.testing.assert_array_equal(as_hwc, _ids(ours, Image.fromarray(ambiguous)))


def test_batches_lists_and_return_types(photos, palettes, tmp_path):
    ours = ImageGPTImageProcessor(clusters=palettes["kmeans64"], size=SIZE)
    batch = _ids(ours, photos)
    np.testing.assert_array_equal(batch[1], _ids(ours, photos[1])[0])  # batch == per image
    stacked = np.stack([np.asarray(p.resize((64, 48))) for p in photos])  # (N, H, W, 3) array = a batch
    np.testing.assert_array_equal(_ids(ours, stacked), _ids(ours, list(stacked)))
    np.testing.assert_array_equal(_ids(ours, torch.from_numpy(stacked)), _ids(ours, list(stacked)))
    path = tmp_path / "photo.png"
    photos[0].save(path)
    np.testing.assert_array_equal(_ids(ours, [path, (str(path), [photos[0]])]), np.stack([batch[0]] * 3))
    pt = ours(photos, return_tensors="pt")
    assert isinstance(pt, BatchFeature) and pt.input_ids is pt["input_ids"]
    assert pt.input_ids.dtype == torch.int64 and pt.input_ids.shape == (2, 1024)
    assert pt.to("cpu").input_ids.device.type == "cpu"
    plain = ours(photos)["input_ids"]
    assert isinstance(plain, list) and plain[0].shape == (1024,) and plain[0].dtype == np.int64
    pixels = ours(photos, do_color_quantize=False, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, 32, 32) and pixels.dtype == torch.float32 and -1 <= pixels.min() < pixels.max() <= 1


def test_start_token_and_decode(photos, palettes):
    clusters = palettes["kmeans64"]
    ours = ImageGPTImageProcessor(clusters=clusters, size=SIZE)
    ids = ours(photos, return_tensors="pt", add_start_token=True).input_ids
    assert ids.shape == (2, 1025) and (ids[:, 0] == 64).all() and ours.start_token_id == 64
    np.testing.assert_array_equal(ids[:, 1:].numpy(), _ids(ours, photos))
    images = ours.decode(ids)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, ours.decode(ids[:, 1:]))
    colors = np.rint(127.5 * (clusters + 1)).astype(np.uint8)
    np.testing.assert_array_equal(images, colors[ids[:, 1:].numpy()].reshape(2, 32, 32, 3))
    assert ours.decode(ids[0, 1:]).shape == (32, 32, 3)
    assert ours.decode(ids[0, 1:].tolist()).shape == (32, 32, 3)
    assert ours.decode(ids[:, 1:129], height=8, width=16).shape == (2, 8, 16, 3)
    # decoding then encoding is a fixed point: the decoded pixels are palette colors
    np.testing.assert_array_equal(_ids(ours, images), ids[:, 1:].numpy())
    with_token = ImageGPTImageProcessor(clusters=clusters, size=SIZE, add_start_token=True)
    np.testing.assert_array_equal(_ids(with_token, photos), ids.numpy())
    assert _ids(with_token, photos, add_start_token=False).shape == (2, 1024)


def test_chunked_quantization_equals_transformers_kernel(palettes, transformers):
    """Chunks of any size (a lone last pixel included) give transformers' one-shot argmin, ties and all."""
    from transformers.models.imagegpt.image_processing_pil_imagegpt import color_quantize as hf_quantize

    rng = np.random.default_rng(1)
    pixels = ((rng.integers(0, 16, (16385, 3)) / 255).astype(np.float32) - 0.5) / 0.5  # 16385 = 4 * 4096 + 1
    level = ((np.arange(0, 16, 2) / 255).astype(np.float32) - 0.5) / 0.5  # odd pixel values tie between two
    ties = np.stack(np.meshgrid(level, level, level, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    random512 = palettes["random512"]
    for clusters in (random512, random512.astype(np.float32), ties, rng.integers(-1, 2, (27, 3))):
        expected = hf_quantize(pixels, clusters)
        for chunk in (1000, 4096, 16384, 20000):
            np.testing.assert_array_equal(color_quantize(pixels, clusters, chunk_size=chunk), expected)
        np.testing.assert_array_equal(color_quantize(pixels[:2001], clusters, chunk_size=2), expected[:2001])
    assert color_quantize(pixels[:1], palettes["random512"]) == hf_quantize(pixels[:1], palettes["random512"])


def test_quantization_memory_is_bounded(palettes):
    """tracemalloc sees numpy's buffers: one 4096 x 512 float64 chunk (16 MiB), not the 1 GiB full matrix."""
    rng = np.random.default_rng(2)
    pixels = rng.uniform(-1, 1, (256, 32, 32, 3)).astype(np.float32)  # 256 images of 32x32: 262,144 pixels
    full_matrix = pixels.size // 3 * 512 * 8
    tracemalloc.start()
    ImageGPTImageProcessor(clusters=palettes["random512"], size=SIZE, do_resize=False)(
        pixels / 2 + 0.5, input_data_format="channels_last", return_tensors="np")  # fmt: skip
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < full_matrix / 20, f"peak {peak / 2**20:.0f} MiB"


def test_json_round_trips_both_ways(palettes, hf, tmp_path, photos):
    ours = ImageGPTImageProcessor(clusters=palettes["kmeans64"], size={"height": 18, "width": 20}, resample=3)
    ours.save_pretrained(tmp_path / "ours")
    data = json.loads((tmp_path / "ours" / "preprocessor_config.json").read_text())
    assert data["image_processor_type"] == "ImageGPTImageProcessor" and len(data["clusters"]) == 64
    assert data["size"] == {"height": 18, "width": 20} and data["resample"] == 3
    theirs = hf.from_pretrained(tmp_path / "ours")
    np.testing.assert_array_equal(np.asarray(theirs.clusters), ours.clusters)
    assert json.loads(theirs.to_json_string()) == json.loads(ours.to_json_string())
    reread = ImageGPTImageProcessor.from_pretrained(tmp_path / "ours")  # same file, same value types as theirs
    assert {k: type(v) for k, v in theirs.to_dict().items()} == {k: type(v) for k, v in reread.to_dict().items()}
    np.testing.assert_array_equal(_ids(theirs, photos), _ids(ours, photos))
    theirs.save_pretrained(tmp_path / "theirs")
    back = ImageGPTImageProcessor.from_pretrained(tmp_path / "theirs")
    np.testing.assert_array_equal(back.clusters, ours.clusters)
    assert back.size == {"height": 18, "width": 20} and back.resample == 3
    assert json.loads(back.to_json_string()) == json.loads(theirs.to_json_string())
    np.testing.assert_array_equal(_ids(back, photos), _ids(theirs, photos))
    assert ImageGPTImageProcessor.from_pretrained(tmp_path / "theirs", size=42).size == {"height": 42, "width": 42}
    again = ImageGPTImageProcessor.from_json_file(tmp_path / "theirs" / "preprocessor_config.json")
    assert ImageGPTImageProcessor.from_dict(again.to_dict(), do_resize=False).to_dict() == {**back.to_dict(), "do_resize": False}
    tokened = ImageGPTImageProcessor(clusters=palettes["kmeans64"], add_start_token=True)
    tokened.save_pretrained(tmp_path / "tok")
    assert ImageGPTImageProcessor.from_pretrained(tmp_path / "tok").add_start_token
    hf.from_pretrained(tmp_path / "tok")  # transformers still loads it


def test_unknown_settings(caplog):
    with caplog.at_level(logging.WARNING, logger="imagegpt.processor"):
        ImageGPTImageProcessor(image_processor_type="ImageGPTImageProcessor", processor_class="X", do_convert_rgb=True)
        assert not caplog.records
        ImageGPTImageProcessor(do_center_crop=True)
        assert "do_center_crop" in caplog.text


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda p: ([], {}), ValueError, "empty list"),
        (lambda p: (np.zeros((8, 8, 2), np.uint8), {}), ValueError, "no channel axis of 1, 3 or 4"),
        (lambda p: (np.zeros((5, 8, 8, 5), np.uint8), {}), ValueError, "no channel axis"),
        (lambda p: (np.zeros((8, 8, 3), np.uint8), {"input_data_format": "channels_first"}), ValueError, "no channel axis"),
        (lambda p: (np.zeros((2, 2, 2, 2, 3), np.uint8), {}), ValueError, "2 or 3 dimensions"),
        (lambda p: (np.zeros((0, 8, 3), np.uint8), {}), ValueError, "0-sized"),
        (lambda p: (Image.new("RGB", (0, 4)), {}), ValueError, "0-sized"),
        (lambda p: (p / "missing.png", {}), FileNotFoundError, "image file not found"),
        (lambda p: ("https://example.com/cat.png", {}), FileNotFoundError, "URLs are not downloaded"),
        (lambda p: (p / "notes.txt", {}), ValueError, "not an image Pillow can read"),
        (lambda p: (np.full((4, 4, 3), 2.5), {}), ValueError, r"values in \[0, 1\]"),
        (lambda p: (np.full((4, 4, 3), -0.5), {}), ValueError, r"values in \[0, 1\]"),
        (lambda p: (np.full((4, 4, 3), 300, np.int32), {}), ValueError, "0..255"),
        (lambda p: (np.full((4, 4, 3), 1 + 1j), {}), TypeError, "dtype"),
        (lambda p: ({"a": 1}, {}), TypeError, "unsupported image type dict"),
        (lambda p: (None, {}), TypeError, "unsupported image type NoneType"),
        (lambda p: ([np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)], {"do_resize": False}), ValueError, "different sizes"),
        (lambda p: (np.zeros((4, 4, 3), np.uint8), {"return_tensors": "tf"}), ValueError, "return_tensors"),
        (lambda p: (np.zeros((4, 4, 3), np.uint8), {"do_resise": True}), TypeError, "unknown argument"),
        (lambda p: (np.zeros((4, 4, 3), np.uint8), {"input_data_format": "hwc"}), ValueError, "input_data_format"),
        (lambda p: (np.zeros((4, 4, 3), np.uint8), {"clusters": [[0.0, 0.0, 0.0, 0.0]]}), ValueError, r"\(K, 3\)"),
        (lambda p: (np.zeros((4, 4, 3), np.uint8), {"size": {"shortest_edge": 4}}), ValueError, "size must be"),
    ],
)  # fmt: skip
def test_bad_inputs(tmp_path, make, error, match):
    (tmp_path / "notes.txt").write_text("not an image")
    image, kwargs = make(tmp_path)
    processor = ImageGPTImageProcessor(clusters=[[0.0, 0.0, 0.0]], size={"height": 4, "width": 4})
    with pytest.raises(error, match=match):
        processor(image, **kwargs)


def test_config_and_decode_errors():
    with pytest.raises(ValueError, match="needs clusters"):
        ImageGPTImageProcessor(size=SIZE)(np.zeros((4, 4, 3), np.uint8))
    for bad in ([[0.0, 0.0]], [0.0, 0.0, 0.0], np.zeros((0, 3))):
        with pytest.raises(ValueError, match=r"shape \(K, 3\)"):
            ImageGPTImageProcessor(clusters=bad)
    with pytest.raises(ValueError, match=r"clusters\[0\]\[0\] is 'a', not a number"):  # names the value (issue 13)
        ImageGPTImageProcessor(clusters=[["a", "b", "c"]])
    for kw, match in [({"size": {"height": 4}}, "size must be"), ({"size": 0}, "positive"),
                      ({"resample": 9}, "Pillow filter"), ({"resample": "bilinear"}, "Pillow filter"),
                      ({"image_mean": [0.5, 0.5]}, "image_mean"), ({"chunk_size": 1}, "chunk_size")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            ImageGPTImageProcessor(**kw)
    with pytest.raises(ValueError, match="decode needs clusters"):
        ImageGPTImageProcessor().decode([0])
    processor = ImageGPTImageProcessor(clusters=[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], size={"height": 2, "width": 2})
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 2\)"):
        processor.decode([[0, 1, 2, 0]])
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 2\)"):
        processor.decode([[0, 1, -1, 0]])
    with pytest.raises(ValueError, match="do not make 2x2 images"):
        processor.decode([[0, 1, 1]])
    with pytest.raises(ValueError, match="do not make 2x2 images"):
        processor.decode([[0, 0, 1, 1, 0]])  # 5 = 4 + 1, but not led by the start token 2
    with pytest.raises(ValueError, match="integer ids"):
        processor.decode([[0.5, 1.0, 1.0, 0.0]])
