"""The model shipped inside the package: loads by name offline, completes its examples, matches its card."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from imagegpt import ImageGPTConfig, ImageGPTForCausalImageModeling
from imagegpt.completion import complete
from imagegpt.metrics import nll_per_sequence
from imagegpt.pretrained import DEFAULT_MODEL, packaged_examples, packaged_model_dir, packaged_models
from imagegpt.processor import ImageGPTImageProcessor

ROOT = Path(__file__).parent.parent


def card_value(key: str) -> float:
    text = (packaged_model_dir(DEFAULT_MODEL) / "README.md").read_text(encoding="utf-8")
    return float(re.search(rf"^\s*{key}:\s*([0-9.]+)\s*$", text, re.M).group(1))


def test_packaged_model_loads_by_name():
    assert DEFAULT_MODEL in packaged_models()
    model = ImageGPTForCausalImageModeling.from_pretrained("fashion-mnist")
    proc = ImageGPTImageProcessor.from_pretrained("fashion-mnist")
    assert ImageGPTConfig.from_pretrained("fashion-mnist").n_positions == model.config.n_positions
    assert len(proc.clusters) == model.config.vocab_size - 1
    assert proc.size["height"] * proc.size["width"] == model.config.n_positions
    assert len(packaged_examples()) >= 4


def test_completing_an_example_keeps_the_given_rows():
    model = ImageGPTForCausalImageModeling.from_pretrained("fashion-mnist").eval()
    proc = ImageGPTImageProcessor.from_pretrained("fashion-mnist")
    h, w = proc.size["height"], proc.size["width"]
    example = packaged_examples()[0]
    result = complete(model, proc, [str(example)], rows=h // 2, samples=2, seed=0, top_k=8)
    kept = proc(str(example), return_tensors="np")["input_ids"][0, : (h // 2) * w]
    assert result.images.shape == (1, 2, h, w, 3)
    assert (result.ids[0, :, : (h // 2) * w] == kept).all()


def test_loss_on_the_example_images_matches_the_model_card():
    model = ImageGPTForCausalImageModeling.from_pretrained("fashion-mnist").eval()
    proc = ImageGPTImageProcessor.from_pretrained("fashion-mnist")
    ids = proc([str(p) for p in packaged_examples()], return_tensors="pt", add_start_token=True)["input_ids"]
    with torch.inference_mode():
        nats = nll_per_sequence(model, ids)
    assert abs(nats.mean().item() - card_value("examples_nats_per_token")) < 2e-3
    # a trained model: far below the palette's color-frequency entropy, the loss of a context-free model
    assert nats.mean().item() < 0.8 * card_value("unigram_entropy_nats")


def test_wheel_contains_the_model_files(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True)  # fmt: skip
    (wheel,) = tmp_path.glob("imagegpt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    folder = "imagegpt/models/fashion-mnist/"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        assert folder + name in names
    assert sum(n.startswith(folder + "examples/") and n.endswith(".png") for n in names) == len(packaged_examples())


def test_cli_complete_defaults_to_the_packaged_model_and_examples(tmp_path, capsys):
    from PIL import Image

    from imagegpt.cli import main
    from imagegpt.viz import HEADER_HEIGHT

    out = tmp_path / "grid.png"
    assert main(["complete", "--samples", "2", "--seed", "0", "--out", str(out), "--quiet"]) == 0
    n = len(packaged_examples())
    with Image.open(out) as grid:
        tile = 28 * 8 + 2
        assert grid.size == (2 + 4 * tile, HEADER_HEIGHT + 2 + n * tile)  # column labels on top
        assert np.asarray(grid).std() > 10  # a picture, not a blank canvas
