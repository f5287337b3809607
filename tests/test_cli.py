"""The command line: help texts, and the README's main job end to end on a tiny model."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagegpt.cli import _parser, main
from imagegpt.viz import HEADER_HEIGHT

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.png"))


@pytest.mark.parametrize("command", [[], ["info"], ["init"], ["score"]])
def test_help_texts(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: imagegpt" in out
    if not command:
        assert "examples:" in out and "score" in out


def test_every_option_of_every_command_is_explained():
    (commands,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    silent = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, sub in commands.choices.items()
              for a in sub._actions if not a.help]  # fmt: skip
    assert len(commands.choices) > 10 and silent == []


def test_init_info_score_end_to_end(tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    assert main(["init", "--preset", "tiny", "--out", str(model_dir)]) == 0
    assert {p.name for p in model_dir.iterdir()} == {"config.json", "generation_config.json", "model.safetensors",
                                                "preprocessor_config.json"}
    assert main(["info", str(model_dir)]) == 0
    assert "64 colors" in capsys.readouterr().out
    grid = tmp_path / "grid.png"
    assert main(["score", "--model", str(model_dir), *map(str, EXAMPLES), "--out", str(grid)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("fashion-mnist")]
    assert len(rows) == len(EXAMPLES) == 4
    nats = [float(line.split()[1]) for line in rows]
    # random weights: close to the uniform 64-color entropy, ln 64 = 4.16 nats
    assert all(3.0 < v < 5.5 for v in nats)
    image = np.asarray(Image.open(grid))
    # 4 rows of [original, quantized], 16x16 px upscaled 8x, 2 px padding
    assert image.shape == (HEADER_HEIGHT + 2 + 4 * (128 + 2), 2 + 2 * (128 + 2), 3)  # labels above the columns


def test_init_refuses_to_overwrite_and_errors_are_one_line(tmp_path, capsys):
    model_dir = tmp_path / "m"
    assert main(["init", "--out", str(model_dir)]) == 0
    assert main(["init", "--out", str(model_dir)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["score", "--model", str(tmp_path / "nope"), str(EXAMPLES[0])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imagegpt score: error:") and "Traceback" not in err


def test_init_like_copies_config_and_palette_with_fresh_weights(tmp_path, capsys):
    from safetensors.numpy import load_file

    src = tmp_path / "src"
    assert main(["init", "--preset", "tiny", "--out", str(src), "--seed", "1"]) == 0
    (src / "preprocessor_config.json").write_text(  # a palette init would never write: --like must carry it over
        (src / "preprocessor_config.json").read_text().replace('"height": 16', '"height": 15'))
    assert main(["init", "--like", str(src), "--out", str(tmp_path / "a")]) == 0
    assert main(["init", "--like", str(src), "--out", str(tmp_path / "b")]) == 0
    for name in ("config.json", "preprocessor_config.json"):
        assert json.loads((tmp_path / "a" / name).read_text()) == json.loads((src / name).read_text())
    weights = {d: load_file(tmp_path / d / "model.safetensors") for d in ("src", "a", "b")}
    key = "transformer.h.0.attn.c_attn.weight"
    assert weights["a"][key].shape == weights["src"][key].shape
    assert not np.array_equal(weights["a"][key], weights["src"][key])  # fresh weights, not a copy
    assert all(np.array_equal(weights["a"][k], weights["b"][k]) for k in weights["a"])  # the seed decides them
    capsys.readouterr()
    assert main(["init", "--like", str(src), "--preset", "tiny", "--out", str(tmp_path / "c")]) == 2
    assert "either --preset or --like" in capsys.readouterr().err


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "imagegpt", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: imagegpt" in result.stdout


@pytest.mark.parametrize("command", [["sample"], ["complete"]])
def test_sampling_help_texts(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert "--top-k" in out and "--seed" in out and "--temperature" in out


def test_sample_and_complete_write_png_grids(tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    assert main(["init", "--preset", "tiny", "--out", str(model_dir)]) == 0
    out = tmp_path / "complete.png"
    args = ["--model", str(model_dir), "--rows", "5", "--samples", "3", "--top-k", "8", "--out", str(out)]
    assert main(["complete", *map(str, EXAMPLES[:2]), *args, "--quiet"]) == 0
    tile = 16 * 8 + 2  # 16x16 pixels upscaled 8x, 2-pixel gaps
    with Image.open(out) as grid:
        assert grid.size == (2 + 5 * tile, HEADER_HEIGHT + 2 + 2 * tile)  # [input, 3 completions, original] x 2
        pixels = np.asarray(grid.convert("RGB"))
    first = pixels[HEADER_HEIGHT + 2 : HEADER_HEIGHT + 2 + 128, 2 : 2 + 128]
    assert (first[5 * 8 :] == 128).all()  # the unknown rows of the input are grayed out
    samples = tmp_path / "samples.png"
    assert main(["sample", "--model", str(model_dir), "--n", "5", "--seed", "1", "--out", str(samples), "--quiet"]) == 0
    with Image.open(samples) as grid:
        assert grid.size == (2 + 5 * tile, 2 + tile)  # 5 samples: one row of 5 rather than 3 + 2 with a gap
    assert "wrote" in capsys.readouterr().out


def test_sampling_cli_errors_are_one_line(tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    main(["init", "--preset", "tiny", "--out", str(model_dir)])
    capsys.readouterr()
    assert main(["complete", str(EXAMPLES[0]), "--model", str(model_dir), "--rows", "16"]) == 2
    assert "--rows must be in [0, 15]" in capsys.readouterr().err
    assert main(["sample", "--model", str(model_dir), "--dtype", "bfloat16", "--device", "cpu"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
