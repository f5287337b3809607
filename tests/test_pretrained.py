"""The models shipped inside the package (emoji in colour, the default; fashion-mnist in gray): load by name
offline, complete their examples, match their cards."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from imagegpt import ImageGPTConfig, ImageGPTForCausalImageModeling
from imagegpt.completion import complete
from imagegpt.metrics import nll_per_sequence
from imagegpt.pretrained import DEFAULT_MODEL, packaged_examples, packaged_model_dir, packaged_models
from imagegpt.processor import ImageGPTImageProcessor

ROOT = Path(__file__).parent.parent
# name: (side, colors, gray palette)
PACKAGED = {"emoji": (32, 512, False), "fashion-mnist": (28, 16, True)}


def card_value(name: str, key: str) -> float:
    text = (packaged_model_dir(name) / "README.md").read_text(encoding="utf-8")
    return float(re.search(rf"^\s*{key}:\s*([0-9.]+)\s*$", text, re.M).group(1))


def test_the_default_model_is_the_colour_one():
    assert DEFAULT_MODEL == "emoji"
    assert set(PACKAGED) <= set(packaged_models())


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_model_loads_by_name(name):
    side, colors, gray = PACKAGED[name]
    model = ImageGPTForCausalImageModeling.from_pretrained(name)
    proc = ImageGPTImageProcessor.from_pretrained(name)
    assert ImageGPTConfig.from_pretrained(name).n_positions == model.config.n_positions == side * side
    assert len(proc.clusters) == model.config.vocab_size - 1 == colors
    assert proc.size == {"height": side, "width": side}
    assert np.allclose(proc.clusters, proc.clusters[:, :1]) == gray  # gray palette: r == g == b
    assert len(packaged_examples(name)) >= 4


@pytest.mark.parametrize("name", PACKAGED)
def test_completing_an_example_keeps_the_given_rows(name):
    model = ImageGPTForCausalImageModeling.from_pretrained(name).eval()
    proc = ImageGPTImageProcessor.from_pretrained(name)
    h, w = proc.size["height"], proc.size["width"]
    example = packaged_examples(name)[0]
    result = complete(model, proc, [str(example)], rows=h // 2, samples=2, seed=0, top_k=8)
    kept = proc(str(example), return_tensors="np")["input_ids"][0, : (h // 2) * w]
    assert result.images.shape == (1, 2, h, w, 3)
    assert (result.ids[0, :, : (h // 2) * w] == kept).all()
    given = proc.decode(kept[None], height=h // 2, width=w)[0]  # the kept rows' pixels, in the palette's colours
    assert (result.images[0, :, : h // 2] == given).all()


def test_colour_completion_is_in_colour():
    """The emoji model's completions of a colour emoji are colour pictures: kept rows and generated rows."""
    model = ImageGPTForCausalImageModeling.from_pretrained("emoji").eval()
    proc = ImageGPTImageProcessor.from_pretrained("emoji")
    examples = [str(p) for p in packaged_examples("emoji")]
    result = complete(model, proc, examples, rows=16, samples=1, seed=0, top_k=40)
    rgb = result.images[:, 0].astype(np.int16)  # (N, 32, 32, 3)
    saturation = rgb.max(-1) - rgb.min(-1)
    assert (saturation[:, :16] > 60).mean() > 0.05  # the given halves hold strong colours
    assert (saturation[:, 16:] > 60).mean() > 0.05  # and so do the painted ones, not gray texture


@pytest.mark.parametrize("name", PACKAGED)
def test_loss_on_the_example_images_matches_the_model_card(name):
    model = ImageGPTForCausalImageModeling.from_pretrained(name).eval()
    proc = ImageGPTImageProcessor.from_pretrained(name)
    ids = proc([str(p) for p in packaged_examples(name)], return_tensors="pt", add_start_token=True)["input_ids"]
    with torch.inference_mode():
        nats = nll_per_sequence(model, ids)
    assert abs(nats.mean().item() - card_value(name, "examples_nats_per_token")) < 2e-3
    # a trained model: far below the palette's color-frequency entropy, the loss of a context-free model
    assert nats.mean().item() < 0.8 * card_value(name, "unigram_entropy_nats")


def test_wheel_contains_the_model_files(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True)  # fmt: skip
    (wheel,) = tmp_path.glob("imagegpt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in PACKAGED:
        folder = f"imagegpt/models/{model}/"
        for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
            assert folder + name in names
        examples = sum(n.startswith(folder + "examples/") and n.endswith(".png") for n in names)
        assert examples == len(packaged_examples(model))
    assert wheel.stat().st_size < 12e6  # both models: a few MB


def test_cli_complete_defaults_to_the_packaged_model_and_examples(tmp_path, capsys):
    from PIL import Image

    from imagegpt.cli import main
    from imagegpt.viz import HEADER_HEIGHT

    out = tmp_path / "grid.png"
    assert main(["complete", "--samples", "2", "--seed", "0", "--out", str(out), "--quiet"]) == 0
    n = len(packaged_examples())
    with Image.open(out) as grid:
        tile = 32 * 8 + 2  # the default model: 32x32 emoji
        assert grid.size == (2 + 4 * tile, HEADER_HEIGHT + 2 + n * tile)  # column labels on top
        assert np.asarray(grid).std() > 10  # a picture, not a blank canvas
