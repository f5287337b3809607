"""scripts/input_ceiling.py: the same small CNN on raw, resized and tokenized images of a miniature data set."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imagegpt.datasets import load_labeled
from imagegpt.palette import grayscale_palette, save_palette
from imagegpt.processor import ImageGPTImageProcessor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import input_ceiling  # noqa: E402


def _data(tmp_path: Path, n: int, name: str, seed: int) -> tuple[Path, Path]:
    """Class 0 bright on the left half, class 1 on the right half, plus noise: easy for any CNN."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, :, 14 * c:14 * c + 14] += 180
    np.save(tmp_path / f"{name}.npy", x)
    np.save(tmp_path / f"{name}_labels.npy", y)
    return tmp_path / f"{name}.npy", tmp_path / f"{name}_labels.npy"


def test_gray_versions_are_the_models_pixels(tmp_path):
    images, labels = _data(tmp_path, 20, "train", 0)
    save_palette(grayscale_palette(4), tmp_path / "palette", size=14)
    processor = ImageGPTImageProcessor.from_pretrained(tmp_path / "palette")
    versions, y = input_ceiling.gray_versions(str(images), str(labels), processor)
    assert versions["raw"].shape == (20, 1, 28, 28) and versions["tokens"].shape == (20, 1, 14, 14)
    assert np.allclose(versions["raw"], np.load(images)[:, None] / 127.5 - 1)
    grays = processor.clusters.mean(1)
    assert np.isin(versions["tokens"], grays.astype(np.float32)).all()  # only palette grays
    # each token is the palette gray nearest its resized pixel
    nearest = grays[np.abs(versions["resized"][..., None] - grays).argmin(-1)]
    assert np.allclose(versions["tokens"], nearest, atol=1e-6)
    # exactly the pixels the model reads: the ids of load_labeled (probe, finetune), start token dropped
    ids, y_model, _ = load_labeled(str(images), str(labels), processor)
    gray32 = np.asarray(processor.clusters, np.float32).mean(1)
    assert np.array_equal(versions["tokens"][:, 0], gray32[ids[:, 1:]].reshape(-1, 14, 14))
    assert np.array_equal(y, np.load(labels)) and np.array_equal(y, y_model)
    np.save(tmp_path / "short_labels.npy", np.load(labels)[:19])
    with pytest.raises(ValueError, match="holds 19 labels for 20 images"):
        input_ceiling.gray_versions(str(images), str(tmp_path / "short_labels.npy"), processor)


def test_script_trains_three_cnns_and_writes_json(tmp_path):
    train, test = _data(tmp_path, 300, "train", 1), _data(tmp_path, 100, "test", 2)
    save_palette(grayscale_palette(4), tmp_path / "palette", size=14)
    out = tmp_path / "ceiling.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "input_ceiling.py"), "--train", *map(str, train),
           "--test", *map(str, test), "--palette", str(tmp_path / "palette"), "--epochs", "3", "--val-size", "50",
           "--out", str(out)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [rows[k]["side"] for k in ("raw", "resized", "tokens")] == [28, 14, 14]
    for r in rows.values():
        assert len(r["history"]) == 3 and 1 <= r["best_epoch"] <= 3
        assert r["test_acc"] > 0.9  # left or right half: learnable from every version
    assert "| tokens | 14x14 |" in result.stdout
    bad = subprocess.run([*cmd[:-4], "--val-size", "300", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--val-size 300 leaves no training images" in bad.stderr
