"""The demo's computations without a web server: uploads, models, streamed rows, surprise, pictures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from imagegpt import ImageGPTForCausalImageModeling
from imagegpt.demo_core import (BLANK_COLOR, MAX_PIXELS, MAX_UPLOAD_BYTES, DemoInputError, ModelChoices,
                                example_images, fit_note, quantize, read_image, stream_complete, stream_sample,
                                surprise)  # fmt: skip
from imagegpt.demo_render import PAD, display_scale, heat_map, strip, with_cut
from imagegpt.metrics import nll_per_sequence
from imagegpt.palette import grayscale_palette
from imagegpt.pretrained import DEFAULT_MODEL, packaged_examples, packaged_models
from imagegpt.processor import ImageGPTImageProcessor

from conftest import tiny_config


@pytest.fixture(scope="module")
def fmnist():
    return ModelChoices().get("fashion-mnist")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """An 8x8 model over 16 grays with random weights: fast to stream."""
    path = tmp_path_factory.mktemp("tiny")
    ImageGPTForCausalImageModeling(tiny_config()).save_pretrained(path)
    ImageGPTImageProcessor(clusters=grayscale_palette(16), size=8).save_pretrained(path)
    return path


def _save(tmp_path, image: Image.Image, name: str, **kwargs) -> str:
    path = tmp_path / name
    image.save(path, **kwargs)
    return str(path)


def test_examples_cover_every_packaged_model():
    examples = example_images()
    for name in packaged_models():
        assert [p for p, model, _ in examples if model == name] == packaged_examples(name)
    assert examples[0][1] == DEFAULT_MODEL  # the default model's examples first
    labels = {label for _, model, label in examples if model == "fashion-mnist"}
    assert {"ankle-boot", "sneaker", "bag"} <= labels


def test_model_choices_offer_given_models_first_then_packaged(tiny_dir):
    choices = ModelChoices([str(tiny_dir)])
    assert choices.names[0] == str(tiny_dir) and set(packaged_models()) <= set(choices.names)
    assert ModelChoices().names[0] == DEFAULT_MODEL
    entry = choices.get(str(tiny_dir))
    assert (entry.height, entry.width, entry.colors) == (8, 8, 16)
    assert choices.get(str(tiny_dir)) is entry  # loaded once
    with pytest.raises(DemoInputError, match="unknown model"):
        choices.get("nope")


def test_model_palette_mismatch_is_a_clear_message(tmp_path):
    ImageGPTForCausalImageModeling(tiny_config()).save_pretrained(tmp_path)
    ImageGPTImageProcessor(clusters=grayscale_palette(8), size=8).save_pretrained(tmp_path)  # 8 colors, model 16
    with pytest.raises(DemoInputError, match="does not match its palette: the palette has 8 colors, the model "
                       "predicts 16"):  # fmt: skip
        ModelChoices([str(tmp_path)]).get(str(tmp_path))
    missing = tmp_path / "empty"
    missing.mkdir()
    with pytest.raises(DemoInputError, match="cannot be loaded"):
        ModelChoices([str(missing)]).get(str(missing))


def test_read_image_converts_odd_modes_and_says_so(tmp_path):
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    rgb, notes = read_image(_save(tmp_path, Image.fromarray(gray), "gray.png"))
    assert rgb.shape == (32, 32, 3) and (rgb[..., 0] == gray).all() and notes == []

    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:4] = (0, 0, 0, 255)  # top opaque black, bottom fully transparent
    rgb, notes = read_image(_save(tmp_path, Image.fromarray(rgba, "RGBA"), "a.png"))
    assert (rgb[:4] == 0).all() and (rgb[4:] == 255).all() and "composited on white" in notes[0]

    wide = Image.fromarray((gray.astype(np.uint16) * 257).astype(np.uint16))  # 16-bit gray
    rgb, notes = read_image(_save(tmp_path, wide, "16.png"))
    assert np.abs(rgb[..., 0].astype(int) - gray).max() <= 1 and "16-bit" in notes[0]

    rgb, notes = read_image(_save(tmp_path, Image.new("RGB", (6, 5), (200, 30, 10)).convert("P"), "p.png"))
    assert rgb.shape == (5, 6, 3) and "palette" in notes[0]

    rgb, notes = read_image(_save(tmp_path, Image.new("CMYK", (6, 6), (0, 255, 255, 0)), "c.jpg"))
    assert rgb.shape == (6, 6, 3) and rgb[..., 0].mean() > 200 and rgb[..., 1].mean() < 60 and "CMYK" in notes[0]


@pytest.mark.parametrize("case", ["text", "truncated", "empty", "none", "too_big", "too_many_pixels"])
def test_read_image_rejects_bad_uploads_with_a_message(tmp_path, case):
    path = tmp_path / "upload.png"
    if case == "text":
        path.write_text("not an image")
        expected = "is not an image this demo can read"
    elif case == "truncated":
        Image.new("RGB", (64, 64), "red").save(path)
        path.write_bytes(path.read_bytes()[:60])
        expected = "could not be decoded|is not an image"
    elif case == "empty":
        path.write_bytes(b"")
        expected = "empty or missing"
    elif case == "none":
        path = None
        expected = "no image yet"
    elif case == "too_big":
        with open(path, "wb") as f:
            f.truncate(MAX_UPLOAD_BYTES + 1)
        expected = f"limited to {MAX_UPLOAD_BYTES // 2**20} MiB"
    else:
        side = math.isqrt(MAX_PIXELS) + 1
        Image.new("1", (side, side)).save(path)  # a few KB on disk, 16.8 M pixels
        expected = "megapixels"
    with pytest.raises(DemoInputError, match=expected):
        read_image(path)


def test_palette_fit_warning(fmnist):
    gray = np.tile(np.linspace(0, 255, 28).astype(np.uint8)[:, None, None], (1, 28, 3))
    red = np.zeros((28, 28, 3), dtype=np.uint8)
    red[..., 0] = 255
    assert fit_note(fmnist, quantize(fmnist, gray)[3]) is None
    error = quantize(fmnist, red)[3]
    assert error > 100 and "represents this image poorly" in fit_note(fmnist, error)


def test_stream_complete_keeps_rows_and_streams_in_order(tiny_dir):
    entry = ModelChoices([str(tiny_dir)]).get(str(tiny_dir))
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 20, 1), dtype=np.uint8).repeat(3, axis=2)
    quantized = quantize(entry, rgb)[2]
    frames = list(stream_complete(entry, rgb, rows=3, samples=2, seed=1))
    assert [f.rows_done for f in frames] == list(range(3, 9))
    final = frames[-1].images
    assert final.shape == (2, 8, 8, 3)
    for frame in frames:
        assert (frame.images[:, :3] == quantized[:3]).all()  # the kept rows are the input's
        assert (frame.images[:, : frame.rows_done] == final[:, : frame.rows_done]).all()  # rows never change
        assert (frame.images[:, frame.rows_done :] == BLANK_COLOR).all()  # the rest is not painted yet
    assert frames[1].first_row_seconds is not None and frames[-1].seconds >= frames[1].seconds
    again = list(stream_complete(entry, rgb, rows=3, samples=2, seed=1))[-1].images
    assert (again == final).all()  # same seed, same completions
    for bad, message in (({"rows": 8}, "rows to keep"), ({"samples": 0}, "samples"),
                         ({"temperature": 0}, "temperature"), ({"top_p": 0}, "top-p")):  # fmt: skip
        with pytest.raises(DemoInputError, match=message):
            next(stream_complete(entry, rgb, **{"rows": 3, "samples": 1, **bad}))


def test_stream_sample(tiny_dir):
    entry = ModelChoices([str(tiny_dir)]).get(str(tiny_dir))
    frames = list(stream_sample(entry, 3, top_k=4, top_p=0.9, seed=0))
    assert [f.rows_done for f in frames] == list(range(0, 9))
    assert frames[-1].images.shape == (3, 8, 8, 3) and (frames[0].images == BLANK_COLOR).all()


def test_surprise_matches_the_models_likelihood(fmnist):
    path = packaged_examples("fashion-mnist")[0]
    rgb = read_image(path)[0]
    quantized, bits, bpd = surprise(fmnist, rgb)
    assert bits.shape == (28, 28) and (bits >= 0).all() and quantized.shape == (28, 28, 3)
    ids = fmnist.processor([str(path)], return_tensors="pt", add_start_token=True)["input_ids"]
    with torch.inference_mode():
        nats = nll_per_sequence(fmnist.model, ids).item()
    assert bpd == pytest.approx(nats / math.log(2), rel=1e-4)


def test_pictures():
    images = [np.full((4, 5, 3), v, dtype=np.uint8) for v in (0, 100, 200)]
    scale = display_scale(4, 5, side=20)
    assert scale == 4
    out = strip(images, scale)
    assert out.shape == (4 * scale + 2 * PAD, PAD + 3 * (5 * scale + PAD), 3)
    x = PAD + 2 * (5 * scale + PAD)
    assert (out[PAD : PAD + 4 * scale, x : x + 5 * scale] == 200).all()
    cut = with_cut(images[0], 2, scale, dim_below=True)
    assert tuple(cut[2 * scale, 0]) != (0, 0, 0) and (cut[0] == 0).all() and cut[-1, 0, 0] > 100
    bits = np.arange(20, dtype=np.float64).reshape(4, 5) / 4
    picture, vmax = heat_map(images[1], bits, scale)
    assert vmax == 5 and picture.shape[0] == 4 * scale + 2 * PAD
    heat = picture[PAD : PAD + 4 * scale, PAD + 5 * scale + PAD :][:, : 5 * scale].astype(int).sum(-1)
    assert heat[0, 0] < heat[-1, -1]  # more surprise, brighter


def test_a_colour_model_streams_colour(tmp_path):
    from imagegpt.palette import uniform_palette

    ImageGPTForCausalImageModeling(tiny_config(vocab_size=9)).save_pretrained(tmp_path)
    ImageGPTImageProcessor(clusters=uniform_palette(2), size=8).save_pretrained(tmp_path)  # 8 corners of the cube
    entry = ModelChoices([str(tmp_path)]).get(str(tmp_path))
    assert "a 8-color RGB palette" in entry.describe()
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # red, which this palette holds exactly
    assert quantize(entry, rgb)[3] == 0 and fit_note(entry, 0.0) is None
    final = list(stream_complete(entry, rgb, rows=4, samples=3, seed=0))[-1].images
    assert (final[:, :4] == (255, 0, 0)).all()
    corners = {tuple(c) for c in final.reshape(-1, 3)}
    assert corners <= {(r, g, b) for r in (0, 255) for g in (0, 255) for b in (0, 255)}
