"""A catalogue of bad inputs (issue 13): each one, given to the CLI, ends in exactly one line that names the problem,
a non-zero exit status and no traceback; log warnings may come before it. Library-level checks of the same
guards follow. Tiny models (8x8 images, 16 grays), a few steps."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagegpt import ImageGPTConfig, ImageGPTForCausalImageModeling, cli
from imagegpt.data import ArraySource, tokenize
from imagegpt.palette import grayscale_palette
from imagegpt.processor import ImageGPTImageProcessor
from imagegpt.run_dir import RunLock
from test_training import synthetic_images

TRAIN = ["--quiet", "--set", "batch_size=4", "--set", "max_steps=2", "--set", "model.n_embd=16", "--set",
         "model.n_head=2", "--set", "model.n_layer=1", "--set", "device=cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("catalogue"))


def make_base(root: Path) -> Path:
    """tokens/, a finished 2-step run/, a 16-color model/ and two 8x8 PNGs in ``root`` (scripts/reliability_sweep.py
    uses it too)."""
    processor = ImageGPTImageProcessor(clusters=grayscale_palette(16), size={"height": 8, "width": 8})
    tokenize(ArraySource(synthetic_images(32)), processor, root / "tokens", val_fraction=0.25)
    assert cli.main(["train", "--data", str(root / "tokens"), "--out", str(root / "run"), *TRAIN]) == 0
    torch.manual_seed(0)
    model = ImageGPTForCausalImageModeling(ImageGPTConfig(vocab_size=17, n_positions=64, n_embd=16, n_head=2,
                                                          n_layer=1))  # fmt: skip
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    for i, array in enumerate(synthetic_images(2, seed=3)):
        Image.fromarray(array).save(root / f"{i}.png")
    return root


def copy(base: Path, name: str, tmp_path: Path) -> Path:
    shutil.copytree(base / name, tmp_path / name)
    return tmp_path / name


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def model_with(base: Path, tmp_path: Path, *, clusters=None, weights=None, config=None) -> Path:
    m = copy(base, "model", tmp_path)
    if clusters is not None:
        text = (m / "preprocessor_config.json").read_text()
        data = json.loads(text)
        data["clusters"] = clusters(data["clusters"])
        (m / "preprocessor_config.json").write_text(json.dumps(data))  # NaN is written as the JSON literal NaN
    if weights is not None:
        model = ImageGPTForCausalImageModeling.from_pretrained(m)
        with torch.no_grad():
            weights(model)
        model.save_pretrained(m)
    if config is not None:
        (m / "config.json").write_bytes(config)
    return m


def train_argv(base, tmp_path, *extra, out=None):
    return ["train", "--data", str(base / "tokens"), "--out", str(out or tmp_path / "new"), *TRAIN, *extra]


def resume_argv(base, tmp_path, *extra, corrupt=None):
    run = copy(base, "run", tmp_path)
    if corrupt is not None:
        corrupt(run)
    return ["train", "--out", str(run), "--resume", "--quiet", *extra]


def score_argv(model, base, *images):
    return ["score", "--model", str(model), *(str(i) for i in images or [base / "0.png"])]


def nan_tiff(tmp_path: Path) -> Path:
    Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32), mode="F").save(tmp_path / "nan.tif")
    return tmp_path / "nan.tif"


def not_files(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "gone.png").symlink_to(tmp_path / "missing.png")
    os.mkfifo(folder / "pipe.png")
    return folder


def nan_weights(model):
    model.transformer.h[0].mlp.c_fc.weight.fill_(float("nan"))


def hold_lock(tmp_path):
    run = tmp_path / "locked"
    lock = RunLock(run).acquire()
    return lock, run


def state_file(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip() / "trainer_state.pt"


CASES = {
    # training settings
    "lr 1e39": (lambda b, t: train_argv(b, t, "--set", "lr=1e39"), r"lr = 1e\+39 does not fit a float32"),
    "lr nan": (lambda b, t: train_argv(b, t, "--set", "lr=nan"), "lr must be a finite number, got nan"),
    "grad_clip nan": (lambda b, t: train_argv(b, t, "--set", "grad_clip=nan"), "grad_clip must be a finite number"),
    "max_time nan": (lambda b, t: train_argv(b, t, "--set", "max_time_minutes=nan"), "max_time_minutes must be a"),
    "set device tpu": (lambda b, t: train_argv(b, t, "--set", "device=tpu"), "device must be auto, cpu, cuda"),
    "--device tpu": (lambda b, t: train_argv(b, t)[:-2] + ["--device", "tpu"], "not a device here: use auto, cpu, cuda"),
    "model typo": (lambda b, t: train_argv(b, t, "--set", "model.n_layerz=1"), "did you mean 'model.n_layer'"),
    "toml model typo": (lambda b, t: train_argv(b, t, "--config", str(_toml(t, "[model]\nn_layers = 1\n"))),
                        "unknown model setting 'model.n_layers'; did you mean 'model.n_layer'"),
    "setting typo": (lambda b, t: train_argv(b, t, "--set", "batchsize=4"), "did you mean 'batch_size'"),
    "diverges": (lambda b, t: train_argv(b, t, "--set", "lr=1e30", "--set", "warmup_steps=0", "--set", "min_lr=0"),
                 "training diverged at step 1.*lower learning rate"),
    # resume
    "resume model change": (lambda b, t: resume_argv(b, t, "--set", "model.n_embd=32"), "cannot change model"),
    "resume batch change": (lambda b, t: resume_argv(b, t, "--set", "batch_size=8"), "cannot change batch_size"),
    "resume data change": (lambda b, t: resume_argv(b, t, "--data", str(t)), "cannot change data"),
    "resume nothing": (lambda b, t: ["train", "--out", str(t / "none"), "--resume"], "nothing to resume"),
    "truncated state": (lambda b, t: resume_argv(b, t, "--set", "max_steps=3", corrupt=lambda r: state_file(r).write_bytes(
        state_file(r).read_bytes()[:300])), "trainer_state.pt is not a readable training state"),
    "non-checkpoint state": (lambda b, t: resume_argv(b, t, "--set", "max_steps=3", corrupt=lambda r: torch.save(
        {"hello": 1}, state_file(r))), "trainer_state.pt is no training state"),
    "latest not utf-8": (lambda b, t: resume_argv(b, t, "--set", "max_steps=3", corrupt=lambda r: (
        r / "checkpoints" / "latest").write_bytes(b"\xff\xfe\x00")), "checkpoints/latest is not UTF-8 text"),
    "bad log line": (lambda b, t: resume_argv(b, t, "--set", "max_steps=3", corrupt=lambda r: (r / "log.jsonl").write_text(
        "oops\n" + (r / "log.jsonl").read_text())), "log.jsonl, line 1, is not a log record"),
    # models, palettes and images
    "config.json list": (lambda b, t: score_argv(model_with(b, t, config=b"[1, 2]"), b),
                         "config.json holds a JSON list, not an object"),
    "config.json not utf-8": (lambda b, t: score_argv(model_with(b, t, config=b"\xff\xfe{}"), b), "config.json is not UTF-8"),
    "nan cluster": (lambda b, t: score_argv(model_with(b, t, clusters=lambda c: [[float("nan")] * 3] + c[1:]), b),
                    r"clusters\[0\]\[0\] is nan: palette colors must be finite and lie in \[-1, 1\]"),
    "cluster out of range": (lambda b, t: score_argv(model_with(b, t, clusters=lambda c: c[:-1] + [[2.0, 0, 0]]), b),
                             r"clusters\[15\]\[0\] is 2.0: palette colors must be finite"),
    "'NaN' string cluster": (lambda b, t: score_argv(model_with(b, t, clusters=lambda c: [["NaN", 0, 0]] + c[1:]), b),
                             r"clusters\[0\]\[0\] is 'NaN', not a number"),
    "8-color palette, 16-color model": (lambda b, t: score_argv(model_with(b, t, clusters=lambda c: c[::2]), b),
                                        "quantized with a 8-color palette but the model predicts 16 colors"),
    "nan weights score": (lambda b, t: score_argv(model_with(b, t, weights=nan_weights), b),
                          "log-likelihoods are NaN or infinite: its weights hold NaN"),
    "nan weights complete": (lambda b, t: ["complete", str(b / "0.png"), "--model", str(model_with(b, t, weights=nan_weights)),
                                           "--quiet", "--samples", "1", "--out", str(t / "c.png")],
                             "logits are NaN or infinite: its weights hold NaN"),
    "all-NaN float TIFF": (lambda b, t: score_argv(b / "model", b, nan_tiff(t)), "holds 64 NaN or infinite values"),
    "no images, only a dangling symlink and a FIFO": (lambda b, t: ["tokenize", str(not_files(t)), "--palette",
        str(b / "model"), "--out", str(t / "tok")], r"no images found under .*\(2 entries skipped"),
}  # fmt: skip


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.toml"
    path.write_text(text)
    return path


def run_cli(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(argv)  # in-process: an uncaught exception here is a traceback, and fails the test
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, pattern: str) -> None:
    assert rc != 0 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING:")]
    assert len(lines) == 1 and lines[0].startswith("imagegpt ") and " error: " in lines[0], err
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line(case, base, tmp_path, capsys):
    make_argv, pattern = CASES[case]
    rc, _, err = run_cli(make_argv(base, tmp_path), capsys)
    assert_one_line_error(rc, err, pattern)


@pytest.mark.parametrize("limit", [20, 40])  # 64 pixels: above twice the limit (an error) / above it (a warning)
def test_decompression_bomb_is_one_clear_line(limit, base, monkeypatch, capsys):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    rc, _, err = run_cli(score_argv(base / "model", base), capsys)
    assert_one_line_error(rc, err, r"0.png is too large to read safely.*MAX_IMAGE_PIXELS")


def test_a_locked_run_directory_names_the_holder(base, tmp_path, capsys):
    lock, run = hold_lock(tmp_path)
    try:
        rc, _, err = run_cli(train_argv(base, tmp_path, out=run), capsys)
    finally:
        lock.release()
    assert_one_line_error(rc, err, f"in use by another training run \\(PID {os.getpid()}")


def test_disk_full_is_one_clear_line(base, tmp_path, monkeypatch, capsys):
    real = Path.write_bytes

    def full(self, data):
        if self.name.startswith(".model.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    run = copy(base, "run", tmp_path)
    monkeypatch.setattr(Path, "write_bytes", full)
    rc, _, err = run_cli(["train", "--out", str(run), "--resume", "--set", "max_steps=4"], capsys)
    assert_one_line_error(rc, err, r"error: the disk is full: could not write checkpoint step-0000004 into .*checkpoints "
                          r"\(No space left on device\); the previous checkpoint .*step-0000002 is intact")


def test_resume_prints_and_records_a_safe_change(base, tmp_path, capsys):
    run = copy(base, "run", tmp_path)
    rc, out, err = run_cli(["train", "--out", str(run), "--resume", "--quiet", "--set", "max_steps=3"], capsys)
    assert rc == 0 and "resume: max_steps 2 -> 3" in out and "completed at step 3 (1 this run)" in out, err
    assert json.loads((run / "train_config.json").read_text())["batch_size"] == 4  # kept, not reset to 32


def test_tokenize_counts_entries_it_cannot_read(base, tmp_path, monkeypatch, capsys):
    folder = not_files(tmp_path)
    shutil.copy(base / "0.png", folder / "a.png")
    (folder / "sub").mkdir()
    shutil.copy(base / "1.png", folder / "sub" / "b.png")
    real_scandir = os.scandir

    def scandir(path="."):  # an unreadable subfolder (chmod 000 does not stop root, so the OS error is simulated)
        if str(path).endswith("sub"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    rc, out, err = run_cli(["tokenize", str(folder), "--palette", str(base / "model"), "--out", str(tmp_path / "t"),
                            "--val-fraction", "0"], capsys)  # fmt: skip
    assert rc == 0 and "1 train + 0 val images" in out and "3 unreadable skipped" in out, err
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["skipped"] == 3 and {Path(p).name for p in manifest["skipped_files"]} == {"gone.png", "pipe.png",
                                                                                              "sub"}  # fmt: skip


# --- the same guards at the library level -------------------------------------------------------------------------
def test_library_guards():
    from imagegpt.images import to_uint8_rgb

    with pytest.raises(ValueError, match="NaN or infinite"):
        to_uint8_rgb(np.full((4, 4), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        to_uint8_rgb(Image.fromarray(np.full((4, 4), np.inf, dtype=np.float32), mode="F"))
    with pytest.raises(ValueError, match=r"clusters\[1\]\[2\] is nan"):
        ImageGPTImageProcessor(clusters=[[0, 0, 0], [0, 0, float("nan")]])
    with pytest.raises(ValueError, match=r"clusters\[0\]\[1\] is -1.5"):
        ImageGPTImageProcessor(clusters=np.array([[0, -1.5, 0]], dtype=np.float32))
    assert ImageGPTImageProcessor(clusters=[[-1, 1, 0]]).clusters.dtype == np.int64  # integers stay as transformers'
    with pytest.raises(ValueError, match=r"clusters\[0\]\[1\] is None, not a number"):
        ImageGPTImageProcessor(clusters=[[0, None, 0]])
