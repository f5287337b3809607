"""The CLI behaves the same everywhere: help texts, options checked before any work, notices, grid layout."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
from PIL import Image

from imagegpt.cli import _parser, grid_columns, main
from imagegpt.cli_checks import HelpFormatter
from imagegpt.pretrained import packaged_examples


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_help_has_an_example_and_states_its_defaults(name, capsys):
    parser = _subcommands()[name]
    with pytest.raises(SystemExit):
        main([name, "--help"])
    out = capsys.readouterr().out
    assert "example" in out, f"{name} --help shows no example"
    formatter = HelpFormatter(name)
    for action in parser._actions:
        if action.default in (None, False, argparse.SUPPRESS, []) or not action.option_strings:
            continue
        assert "default" in formatter._get_help_string(action).lower(), f"{name} {action.option_strings[0]}"


def test_train_help_lists_every_setting_with_default_and_meaning(capsys):
    from imagegpt.train_config import TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "see imagegpt.train_config" not in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and " = " in line}
    for field in dataclasses.fields(TrainConfig):
        line = lines.get(field.name)
        assert line is not None, f"train --help does not list {field.name}"
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        shown = [f"{k}={v}" for k, v in default.items()] if isinstance(default, dict) else [
            repr(default) if isinstance(default, str) else str(default)]  # fmt: skip
        assert all(f" = {s}" in line or f"{s}" in line.split(" = ", 1)[1] for s in shown), line
        meaning = line.split(" = ", 1)[1].split(maxsplit=1)
        assert len(meaning) == 2 and len(meaning[1]) > 5, f"{field.name} has no meaning in train --help"


def test_score_defaults_to_the_packaged_model_and_its_examples(capsys):
    assert main(["score"]) == 0
    out = capsys.readouterr().out
    names = {p.name for p in packaged_examples()}
    assert sum(line.split()[0] in names for line in out.splitlines()) == len(names) > 0


@pytest.mark.parametrize("argv,message", [
    (["score", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["sample", "--seed", str(2**64)], "--seed must be an integer in [0, 2**63 - 1"),
    (["complete", "--seed", "-1"], "--seed must be an integer in"),
    (["sample", "--device", "tpu"], "--device 'tpu' is not a device here"),
    (["score", "--device", "tpu"], "--device 'tpu' is not a device here"),
    (["complete", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["sample", "--temperature", "0"], "use --greedy"),
    (["sample", "--temperature", "-1"], "--temperature must be > 0"),
    (["sample", "--n", "0"], "--n must be a positive integer"),
    (["complete", "--samples", "0"], "--samples must be a positive integer"),
    (["complete", "--batch-size", "-2"], "--batch-size must be a positive integer"),
    (["sample", "--threads", "0"], "--threads must be a positive integer"),
    (["complete", "--out", "grid.txt"], "give an image file name ending in .png"),
    (["sample", "--out", "grid"], "give an image file name ending in .png"),
    (["complete", "--rows", "32"], "--rows must be in [0, 31]"),
    (["probe", "--data", "x", "--labels", "y", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["finetune", "--data", "x", "--labels", "y", "--lr", "0"], "--lr must be > 0"),
    (["finetune", "--data", "x", "--labels", "y", "--device", "tpu"], "not a device here"),
    (["fit-palette", "x", "--out", "p", "--k", "0"], "--k must be a positive integer"),
    (["tokenize", "x", "--palette", "p", "--out", "t", "--val-fraction", "1.5"], "--val-fraction must be in"),
    (["init", "--out", "m", "--seed", str(2**70)], "--seed must be an integer in"),
])  # fmt: skip
def test_options_are_checked_before_any_model_loads(argv, message, capsys, monkeypatch):
    from imagegpt import ImageGPTForCausalImageModeling

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(ImageGPTForCausalImageModeling, "from_pretrained", no_loading)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_output_must_be_writable(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["sample", "--out", str(blocker / "grid.png")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    (tmp_path / "dir.png").mkdir()
    assert main(["complete", "--out", str(tmp_path / "dir.png")]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_mistyped_model_lists_the_packaged_names(capsys):
    assert main(["complete", "--model", "fashion-mnst"]) == 2
    err = capsys.readouterr().err
    assert "packaged: emoji, fashion-mnist" in err and "did you mean 'fashion-mnist'" in err


def test_colour_and_non_square_images_get_a_notice(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    rgb = np.zeros((30, 40, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red: colour, and 40x30 is not square
    Image.fromarray(rgb).save(photo)
    assert main(["score", "--model", "fashion-mnist", str(photo)]) == 0
    err = capsys.readouterr().err
    assert "notice: photo.png is 40x30: resized to 28x28 (aspect ratio not kept)" in err
    assert "notice: photo.png is in colour and the model's palette is gray" in err
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((28, 28), 90, dtype=np.uint8)).save(gray)
    assert main(["score", "--model", "fashion-mnist", str(gray)]) == 0
    assert "notice" not in capsys.readouterr().err
    Image.fromarray(np.full((56, 56), 90, dtype=np.uint8)).save(gray)  # a plain rescale: no news
    assert main(["score", "--model", "fashion-mnist", str(gray)]) == 0
    assert "notice" not in capsys.readouterr().err


def test_top_k_above_the_number_of_colors_is_noted(tmp_path, capsys):
    out = tmp_path / "c.png"
    argv = ["complete", str(packaged_examples("fashion-mnist")[0]), "--model", "fashion-mnist", "--rows", "27",
            "--samples", "1", "--top-k", "40", "--quiet"]  # fmt: skip
    assert main([*argv, "--out", str(out)]) == 0
    assert "--top-k 40 is more than the model's 16 colors" in capsys.readouterr().err


def test_a_directory_of_images_expands_and_an_empty_one_is_an_error(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in packaged_examples("fashion-mnist")[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    assert main(["score", "--model", "fashion-mnist", str(folder)]) == 0
    assert sum(line.startswith("test-") for line in capsys.readouterr().out.splitlines()) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["score", str(empty)]) == 2
    assert "is a directory with no images" in capsys.readouterr().err


def test_completion_grid_labels_its_columns(tmp_path):
    from imagegpt.viz import HEADER_HEIGHT

    out = tmp_path / "c.png"
    argv = ["complete", str(packaged_examples("fashion-mnist")[0]), "--model", "fashion-mnist", "--rows", "27",
            "--samples", "2", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    tile = 28 * 8 + 2
    with Image.open(out) as grid:
        assert grid.size == (2 + 4 * tile, HEADER_HEIGHT + 2 + tile)
        header = np.asarray(grid.convert("L"))[:HEADER_HEIGHT]
    for col in range(4):  # every column's label is drawn (dark text on the white strip)
        assert (header[:, 2 + col * tile : (col + 1) * tile] < 100).any()


@pytest.mark.parametrize("n,cols", [(16, 4), (9, 3), (12, 4), (10, 5), (6, 3), (7, 3), (1, 1), (2, 2)])
def test_sample_grids_have_no_empty_cells_when_a_tidy_layout_exists(n, cols):
    assert grid_columns(n) == cols
