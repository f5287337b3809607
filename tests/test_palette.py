"""Palettes (fixed and fitted by k-means), grids and likelihood metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import tiny_config
from imagegpt import ImageGPTForCausalImageModeling
from imagegpt.metrics import nats_to_bits, nll_per_sequence
from imagegpt.palette import (color_frequencies, fit_palette, grayscale_palette, palette_inertia, save_palette,
                              uniform_palette, unigram_entropy)
from imagegpt.processor import ImageGPTImageProcessor, color_quantize
from imagegpt.viz import image_grid


def test_uniform_palette_covers_the_cube():
    p = uniform_palette(8)
    assert p.shape == (512, 3) and p.min() == -1 and p.max() == 1
    assert len(np.unique(p, axis=0)) == 512
    assert uniform_palette(1).shape == (1, 3)
    with pytest.raises(ValueError, match="levels must be a positive integer"):
        uniform_palette(0)


def test_grayscale_palette():
    p = grayscale_palette(16)
    assert p.shape == (16, 3) and (p[:, 0] == p[:, 1]).all() and (p[:, 1] == p[:, 2]).all()


def test_image_grid_layout_and_nearest_upscaling():
    a = np.zeros((2, 3, 3), np.uint8)
    a[0, 0] = 255
    grid = np.asarray(image_grid([[a, a], [a]], scale=4, pad=1))
    assert grid.shape == (1 + 2 * (8 + 1), 1 + 2 * (12 + 1), 3)
    assert (grid[1:5, 1:5] == 255).all() and (grid[1:5, 5:9] == 0).all()  # one pixel -> a 4x4 block
    with pytest.raises(ValueError, match="non-empty"):
        image_grid([])


def test_nll_per_sequence_equals_manual_loss():
    model = ImageGPTForCausalImageModeling(tiny_config()).eval()
    ids = torch.randint(0, 16, (3, 9))
    ids[:, 0] = 16
    nll = nll_per_sequence(model, ids, batch_size=2)
    with torch.no_grad():
        expected = torch.stack([model(ids[i : i + 1], labels=ids[i : i + 1]).loss for i in range(3)])
    torch.testing.assert_close(nll, expected)
    assert nats_to_bits(math.log(2)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="start token 16"):
        nll_per_sequence(model, ids[:, 1:])


def _blobs(n=20000, k=8, noise=3.0, seed=0):
    """uint8 RGB pixels around ``k`` random colors at least 40 apart (per channel max), and those colors."""
    rng = np.random.default_rng(seed)
    centers = [rng.integers(20, 236, 3)]
    while len(centers) < k:
        c = rng.integers(20, 236, 3)
        if min(np.abs(c - d).max() for d in centers) >= 40:
            centers.append(c)
    centers = np.array(centers)
    pixels = centers[rng.integers(0, k, n)] + rng.normal(0, noise, (n, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), centers


def _to_unit(u8):
    return ((u8.astype(np.float64) / 255).astype(np.float32) - 0.5) / 0.5  # the processor's arithmetic


def test_fit_palette_recovers_separated_clusters():
    pixels, centers = _blobs()
    palette = fit_palette(pixels, 8)
    assert palette.shape == (8, 3) and palette.dtype == np.float32 and np.abs(palette).max() <= 1
    found = (palette + 1) * 127.5
    for c in centers:  # every true color has a palette color within 1.5 (of 255), one each
        assert np.abs(found - c).max(axis=1).min() < 1.5
    assert len(np.unique(color_quantize(_to_unit(centers), palette))) == 8
    luma = palette.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert (np.diff(luma) >= 0).all()  # sorted by luminance
    # images (N, H, W, 3) and floats already in [-1, 1] give the same palette as the flat uint8 pixels
    np.testing.assert_array_equal(fit_palette(pixels.reshape(20, 25, 40, 3), 8), palette)
    np.testing.assert_array_equal(fit_palette(_to_unit(pixels), 8), palette)


def test_fit_palette_is_reproducible():
    pixels, _ = _blobs(n=8000, k=12, noise=25)
    a = fit_palette(pixels, 32, seed=3, batch_size=512)
    np.testing.assert_array_equal(a, fit_palette(pixels, 32, seed=3, batch_size=512, progress=True))
    np.testing.assert_array_equal(a, fit_palette(torch.from_numpy(pixels), 32, seed=3, batch_size=512))
    assert not np.array_equal(a, fit_palette(pixels, 32, seed=4, batch_size=512))


def test_fit_palette_leaves_no_cluster_empty():
    rng = np.random.default_rng(1)
    # one dominant color, a few common ones and a long tail of rare ones (each seen once or twice)
    common = np.repeat(rng.integers(0, 256, (5, 3)), 2000, axis=0)
    rare = rng.integers(0, 256, (60, 3))
    pixels = np.concatenate([np.full((20000, 3), 128), common, rare, rare[:20]]).astype(np.uint8)
    distinct = len(np.unique(pixels, axis=0))
    for k in (48, distinct):
        palette = fit_palette(pixels, k, batch_size=256, max_iter=50)
        assert len(np.unique(palette, axis=0)) == k
        assert np.bincount(color_quantize(_to_unit(pixels), palette), minlength=k).min() > 0
    # k equal to the number of distinct colors: exactly those colors, and a perfect fit
    assert palette_inertia(pixels, palette) < 1e-6
    # a capped sample that misses rare colors still finds them when k needs them
    palette = fit_palette(pixels, distinct, sample_size=1000)
    assert palette_inertia(pixels, palette) < 1e-6


def test_grayscale_fit():
    rng = np.random.default_rng(2)
    levels = np.array([10, 60, 140, 230])
    images = np.clip(levels[rng.integers(0, 4, (50, 8, 8))] + rng.normal(0, 2, (50, 8, 8)), 0, 255).astype(np.uint8)
    palette = fit_palette(images, 4, grayscale=True)
    assert palette.shape == (4, 3) and (palette == palette[:, :1]).all()
    np.testing.assert_allclose((palette[:, 0] + 1) * 127.5, levels, atol=1.0)
    # gray images fitted in RGB give grays too; RGB input with grayscale=True is fitted by luminance
    rgb_fit = fit_palette(images, 4)
    np.testing.assert_allclose(rgb_fit, palette, atol=1e-5)
    colored = np.stack([images, images, images], axis=-1)
    colored[..., 0] = np.clip(colored[..., 0].astype(int) + 10, 0, 255)
    lum = fit_palette(colored, 4, grayscale=True)
    assert (lum == lum[:, :1]).all() and np.all(np.diff(lum[:, 0]) > 0)
    with pytest.raises(ValueError, match=r"k=300 is larger than the number of distinct grays .*choose k <="):
        fit_palette(images, 300, grayscale=True)
    # many distinct float grays: 1-D k-means in torch; on uniform grays the optimum is 8 equal bins
    uniform = np.random.default_rng(5).uniform(-1, 1, 5000).astype(np.float32)
    fitted = fit_palette(uniform, 8, grayscale=True, progress=True)
    assert (fitted == fitted[:, :1]).all()
    np.testing.assert_allclose(fitted[:, 0], np.linspace(-0.875, 0.875, 8), atol=0.05)


def test_inertia_no_worse_than_sklearn():
    cluster = pytest.importorskip("sklearn.cluster")
    rng = np.random.default_rng(3)  # a smooth, photo-like spread of colors: no obvious clusters
    base = rng.integers(0, 256, (40, 3))
    pixels = np.clip(base[rng.integers(0, 40, 30000)] + rng.normal(0, 18, (30000, 3)), 0, 255).astype(np.uint8)
    ours = fit_palette(pixels, 64)
    theirs = cluster.MiniBatchKMeans(64, random_state=0, n_init=1).fit(_to_unit(pixels)).cluster_centers_
    assert palette_inertia(pixels, ours) <= palette_inertia(pixels, np.clip(theirs, -1, 1)) * 1.001


def test_palette_inertia_equals_brute_force():
    pixels, _ = _blobs(n=3000, k=5, noise=20)
    palette = np.random.default_rng(4).uniform(-1, 1, (7, 3)).astype(np.float32)
    x = _to_unit(pixels).astype(np.float64)
    expected = ((x[:, None] - palette[None].astype(np.float64)) ** 2).sum(-1).min(1).mean()
    assert palette_inertia(pixels, palette) == pytest.approx(expected, rel=1e-5)
    assert palette_inertia(_to_unit(pixels), palette) == pytest.approx(expected, rel=1e-5)
    gray = pixels[:, 0].reshape(30, 100)  # gray pixels count as R = G = B
    x = np.repeat(_to_unit(gray).reshape(-1, 1), 3, 1).astype(np.float64)
    expected = ((x[:, None] - palette[None].astype(np.float64)) ** 2).sum(-1).min(1).mean()
    assert palette_inertia(gray[None], palette) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "pixels, k, match",
    [
        (np.zeros((10, 3), np.int64), 2, "uint8 .* or float in \\[-1, 1\\], got dtype int64"),
        (np.zeros((10, 4), np.uint8), 2, "not \\(N, 3\\) RGB pixels"),
        (np.zeros((2, 4, 4, 2), np.uint8), 2, "not \\(N, 3\\) RGB pixels"),
        (np.zeros((0, 3), np.uint8), 2, "no pixels"),
        (np.full((10, 3), 2.0), 2, "float pixels must lie in \\[-1, 1\\]"),
        (np.full((10, 3), np.nan), 2, "float pixels must lie in \\[-1, 1\\]"),
        (np.arange(30, dtype=np.uint8).reshape(10, 3), 0, "k must be a positive integer"),
        (np.arange(30, dtype=np.uint8).reshape(10, 3), 11, "k=11 is larger than the number of distinct colors in "
                                                           "the pixels \\(10\\); choose k <= 10"),
    ],
)
def test_fit_palette_errors(pixels, k, match):
    with pytest.raises(ValueError, match=match):
        fit_palette(pixels, k)


def test_unigram_entropy_by_hand():
    ids = np.array([[0, 0, 1, 2], [0, 0, 1, 3]])
    expected = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 2 * 0.125 * math.log(0.125))
    np.testing.assert_allclose(color_frequencies(ids, 5), [0.5, 0.25, 0.125, 0.125, 0.0])
    palette = uniform_palette(2)[:5]
    assert unigram_entropy(ids, palette) == pytest.approx(expected, abs=1e-12)
    assert unigram_entropy(torch.from_numpy(ids), palette) == pytest.approx(expected, abs=1e-12)
    # pixels are quantized first: each pixel here sits exactly on the palette color of the id above
    colors = np.rint((palette + 1) * 127.5).astype(np.uint8)
    assert unigram_entropy(colors[ids], palette) == pytest.approx(expected, abs=1e-12)
    assert unigram_entropy(palette[ids.ravel()], palette) == pytest.approx(expected, abs=1e-12)
    assert unigram_entropy(np.zeros(10, np.int64), palette) == 0.0
    with pytest.raises(ValueError, match="drop the start token 5"):
        color_frequencies(np.array([0, 5]), 5)


def test_saved_palette_loads_in_ours_and_transformers(transformers, tmp_path):
    from transformers.models.imagegpt.image_processing_pil_imagegpt import ImageGPTImageProcessorPil

    pixels, _ = _blobs(n=6000, k=10, noise=30, seed=5)
    palette = fit_palette(pixels, 24)
    path = save_palette(palette, tmp_path / "proc", size=16, resample=3)
    assert path == tmp_path / "proc" / "preprocessor_config.json" and path.is_file()
    data = json.loads(path.read_text())
    assert len(data["clusters"]) == 24 and data["size"] == {"height": 16, "width": 16} and data["resample"] == 3
    ours = ImageGPTImageProcessor.from_pretrained(tmp_path / "proc")
    theirs = ImageGPTImageProcessorPil.from_pretrained(tmp_path / "proc")
    np.testing.assert_array_equal(ours.clusters, palette)
    np.testing.assert_array_equal(np.asarray(theirs.clusters), palette)
    images = [pixels[i * 400 : i * 400 + 400].reshape(20, 20, 3) for i in range(3)]
    expected = np.asarray(theirs(images, return_tensors="np")["input_ids"])
    assert expected.shape == (3, 256) and len(np.unique(expected)) > 8
    np.testing.assert_array_equal(np.asarray(ours(images, return_tensors="np")["input_ids"]), expected)
    with pytest.raises(ValueError, match="palette must be an array of shape"):
        save_palette(palette[:, :2], tmp_path / "bad")
