"""scripts/prepare_emoji.py: the emoji reader, on a fixture of three emoji from both vendors (tests/data/emoji)."""

import csv
import hashlib
import importlib.util
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagegpt.datasets import load_labeled, open_source
from imagegpt.processor import ImageGPTImageProcessor

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "emoji"


def _module():
    spec = importlib.util.spec_from_file_location("prepare_emoji", ROOT / "scripts" / "prepare_emoji.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_emoji = _module()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("emoji")
    assert prepare_emoji.main(["--cache", str(FIXTURE), "--out", str(out)]) == 0  # unpacked already: no npm
    return out


def _rows(folder):
    with open(folder / "labels.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_labels_one_row_per_file_with_its_emoji(folder):
    rows = _rows(folder)
    # wink and flag-gr have one image per vendor, +1 has a default and five skin tones: (1 + 1 + 6) x 2 vendors
    assert len(rows) == 16
    assert sorted({r["short_name"] for r in rows}) == ["+1", "flag-gr", "wink"]
    by_file = {r["file"]: r for r in rows}
    thumb = by_file["train/google-1f44d-1f3fd.png"]
    assert (thumb["unified"], thumb["base"], thumb["skin"], thumb["vendor"]) == ("1F44D-1F3FD", "1F44D", "1F3FD",
                                                                                 "google")  # fmt: skip
    assert (thumb["category"], thumb["subcategory"]) == ("People & Body", "hand-fingers-closed")
    assert by_file["test/twitter-1f609.png"]["category"] == "Smileys & Emotion"
    assert all((folder / r["file"]).is_file() for r in rows)


def test_split_is_by_emoji_never_by_file(folder):
    """Every file of one emoji (both vendors, every skin tone) is in the same split: no leak."""
    splits = defaultdict(set)
    for r in _rows(folder):
        splits[r["base"]].add(r["split"])
        assert r["file"].startswith(r["split"] + "/")
    assert all(len(s) == 1 for s in splits.values()), splits
    vendors = defaultdict(set)
    for r in _rows(folder):
        vendors[r["base"]].add(r["vendor"])
    assert all(v == {"twitter", "google"} for v in vendors.values())


def test_split_rule_is_fixed_and_about_80_10_10():
    # the documented rule, written out again: sha256 of the base code, first 8 hex digits, mod 100
    for code in ("1F609", "1F44D", "1F1EC-1F1F7"):
        bucket = int(hashlib.sha256(code.encode()).hexdigest()[:8], 16) % 100
        assert prepare_emoji.split_of(code) == ("train" if bucket < 80 else "val" if bucket < 90 else "test")
    assert prepare_emoji.split_of("1f609") == prepare_emoji.split_of("1F609") == "test"  # wink: a test emoji
    assert prepare_emoji.split_of("1F44D") == "train"
    counts = defaultdict(int)
    for i in range(20000):
        counts[prepare_emoji.split_of(f"{i:X}")] += 1
    assert abs(counts["train"] / 20000 - 0.8) < 0.02 and abs(counts["test"] / 20000 - 0.1) < 0.02


def test_images_are_rgb_on_white(folder):
    image = Image.open(folder / "test" / "twitter-1f609.png")
    assert image.mode == "RGB" and image.size == (64, 64)
    pixels = np.asarray(image)
    assert (pixels[0, 0] == 255).all()  # the transparent corner is now white, not black
    src = Image.open(FIXTURE / "twitter" / "package" / "img" / "twitter" / "64" / "1f609.png").convert("RGBA")
    opaque = np.asarray(src)[..., 3] == 255
    assert opaque.any() and (pixels[opaque] == np.asarray(src)[..., :3][opaque]).all()


def test_probe_folders_labels_follow_the_folder_order(folder):
    """imagegpt probe reads <split>/ with <split>_labels.npy: the labels must follow the folder's file order."""
    classes = (folder / "probe" / "classes.txt").read_text(encoding="utf-8").splitlines()
    assert "Component" not in classes and len(classes) == 9
    category = {Path(r["file"]).name: r["category"] for r in _rows(folder)}
    for split in ("train", "test"):
        files = open_source(folder / "probe" / split).files
        labels = np.load(folder / "probe" / f"{split}_labels.npy")
        assert [category[f.name] for f in files] == [classes[i] for i in labels]
        groups = np.load(folder / "probe" / f"{split}_groups.npy")
        base = {Path(r["file"]).name: r["base"] for r in _rows(folder)}
        same = [[base[a.name] == base[b.name] for b in files] for a in files]
        assert same == [[g == h for h in groups] for g in groups]  # one group id per emoji
    processor = ImageGPTImageProcessor(clusters=np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]), size=8)
    ids, y, _ = load_labeled(folder / "probe" / "test", folder / "probe" / "test_labels.npy", processor)
    assert ids.shape == (4, 65) and sorted(classes[i] for i in y) == ["Flags", "Flags", "Smileys & Emotion",
                                                                       "Smileys & Emotion"]  # fmt: skip


def test_refuses_to_write_into_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert prepare_emoji.main(["--cache", str(FIXTURE), "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "keep.txt").read_text() == "mine"
