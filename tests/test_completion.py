"""Image-level sampling: completions keep the given rows, streaming yields rows in order, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import randomize_, tiny_config
from imagegpt import ImageGPTForCausalImageModeling
from imagegpt.completion import BLANK, complete, sample, stream_rows
from imagegpt.palette import grayscale_palette
from imagegpt.processor import ImageGPTImageProcessor
from imagegpt.sampling import generate

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.png"))


@pytest.fixture
def model_and_processor():
    # 8x8 images over a 16-gray palette: 64 positions, vocab 17, the conftest's tiny shape
    model = randomize_(ImageGPTForCausalImageModeling(tiny_config()).eval())
    proc = ImageGPTImageProcessor(clusters=grayscale_palette(16), size={"height": 8, "width": 8})
    return model, proc


def test_completion_keeps_the_given_rows(model_and_processor):
    model, proc = model_and_processor
    result = complete(model, proc, [str(p) for p in EXAMPLES], rows=3, samples=2, seed=0, top_k=4)
    quantized = proc(list(map(str, EXAMPLES)), return_tensors="np")["input_ids"]  # (N, 64)
    assert result.ids.shape == (4, 2, 64) and result.images.shape == (4, 2, 8, 8, 3)
    assert (result.ids[:, :, : 3 * 8] == quantized[:, None, : 3 * 8]).all()
    assert (result.ids < 16).all()
    np.testing.assert_array_equal(result.originals, proc.decode(quantized))
    np.testing.assert_array_equal(result.images, proc.decode(result.ids.reshape(8, 64)).reshape(4, 2, 8, 8, 3))
    assert (result.prompts[:, 3:] == BLANK).all() and (result.prompts[:, :3] == result.originals[:, :3]).all()
    assert not (result.ids[:, 0] == result.ids[:, 1]).all()  # two different samples per image


def test_seeded_completions_reproduce(model_and_processor):
    model, proc = model_and_processor
    a = complete(model, proc, str(EXAMPLES[0]), rows=2, samples=3, seed=5, batch_size=2)
    b = complete(model, proc, str(EXAMPLES[0]), rows=2, samples=3, seed=5, batch_size=2)
    np.testing.assert_array_equal(a.ids, b.ids)


def test_greedy_completion_is_greedy_generate(model_and_processor):
    model, proc = model_and_processor
    result = complete(model, proc, str(EXAMPLES[1]), rows=4, do_sample=False)
    ids = proc(str(EXAMPLES[1]), return_tensors="pt", add_start_token=True)["input_ids"]
    expected = generate(model, ids[:, : 1 + 4 * 8], max_length=65)
    np.testing.assert_array_equal(result.ids[0, 0], expected[0, 1:].numpy())


def test_stream_rows_yields_each_row_in_order(model_and_processor):
    model, proc = model_and_processor
    start = torch.full((3, 1), 16)
    rows = list(stream_rows(model, start, 8, 8, do_sample=False))
    assert [r for r, _ in rows] == list(range(8))
    assert all(ids.shape == (3, 8) for _, ids in rows)
    expected = generate(model, start, max_length=65)[:, 1:]
    assert torch.equal(torch.cat([ids for _, ids in rows], dim=1), expected)
    with pytest.raises(ValueError, match="whole number"):
        next(stream_rows(model, torch.full((1, 4), 16), 8, 8))


def test_unconditional_samples(model_and_processor):
    model, proc = model_and_processor
    out = sample(model, proc, 5, batch_size=2, seed=1)
    assert out.ids.shape == (5, 64) and out.images.shape == (5, 8, 8, 3) and out.images.dtype == np.uint8
    assert (out.ids >= 0).all() and (out.ids < 16).all()
    np.testing.assert_array_equal(out.ids, sample(model, proc, 5, batch_size=2, seed=1).ids)


def test_clear_errors(model_and_processor):
    model, proc = model_and_processor
    with pytest.raises(ValueError, match="rows must be an integer in"):
        complete(model, proc, str(EXAMPLES[0]), rows=8)
    wrong = ImageGPTImageProcessor(clusters=grayscale_palette(8), size={"height": 8, "width": 8})
    with pytest.raises(ValueError, match="palette has 8 colors but the model expects 16"):
        sample(model, wrong, 1)
    big = ImageGPTImageProcessor(clusters=grayscale_palette(16), size={"height": 9, "width": 9})
    with pytest.raises(ValueError, match="need 81 positions"):
        sample(model, big, 1)
