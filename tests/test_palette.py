"""Palettes, grids and likelihood metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import tiny_config
from imagegpt import ImageGPTForCausalImageModeling
from imagegpt.metrics import nats_to_bits, nll_per_sequence
from imagegpt.palette import grayscale_palette, uniform_palette
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
