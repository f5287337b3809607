"""Fine-tuning: the joint loss is the two losses it names, a short run learns an easy task and keeps its best
model atomically (transformers loads it), early stopping, clear errors, confusion matrix, and the CLI end to end."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import easy_idx_args, easy_images, tiny_config
from imagegpt import ImageGPTForCausalImageModeling
from imagegpt.datasets import load_labeled
from imagegpt.finetune import (FinetuneConfig, _save_atomic, confusion_matrix, evaluate_classifier, finetune,
                               init_head_from_probe, joint_loss)
from imagegpt.heads import ImageGPTForImageClassification
from imagegpt.palette import grayscale_palette
from imagegpt.processor import ImageGPTImageProcessor
from imagegpt.training import compute_loss
from imagegpt.viz import plot_confusion


@pytest.fixture
def pretrained(tmp_path):
    """A tiny causal model over 8x8 images and 16 grays, saved with its palette."""
    path = tmp_path / "pretrained"
    ImageGPTForCausalImageModeling(tiny_config()).save_pretrained(path)
    processor = ImageGPTImageProcessor(clusters=grayscale_palette(16), size={"height": 8, "width": 8})
    processor.save_pretrained(path)
    return path, processor


def _data(processor, n: int, seed: int = 0):
    gray, labels = easy_images(n, 8, seed)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    ids = processor(list(rgb), return_tensors="np", add_start_token=True, input_data_format="channels_last")
    return ids["input_ids"], labels.astype(np.int64), rgb


def test_joint_loss_is_classification_plus_weighted_next_pixel_loss(pretrained):
    path, processor = pretrained
    ids, labels, _ = _data(processor, 6)
    ids, labels = torch.as_tensor(ids), torch.as_tensor(labels)
    clf_model = ImageGPTForImageClassification.from_pretrained(path, num_labels=2)
    causal = ImageGPTForCausalImageModeling.from_pretrained(path)
    total, clf, gen = joint_loss(clf_model, causal.lm_head, ids, labels, gen_weight=0.5)
    with torch.no_grad():
        want_clf = F.cross_entropy(clf_model(ids[:, :-1]).logits, labels)
        want_gen = compute_loss(causal, ids, "autoregressive")  # the pretraining loss of the same weights
    torch.testing.assert_close(clf, want_clf)
    torch.testing.assert_close(gen, want_gen)
    torch.testing.assert_close(total, want_clf + 0.5 * want_gen)
    _, _, unused = joint_loss(clf_model, causal.lm_head, ids, labels, gen_weight=0.0)
    assert unused.item() == 0.0


@pytest.mark.parametrize("gen_weight", [0.0, 0.5])
def test_short_finetune_learns_and_keeps_the_best_model(pretrained, tmp_path, gen_weight):
    path, processor = pretrained
    ids, labels, images = _data(processor, 96)
    cfg = FinetuneConfig(batch_size=16, max_steps=40, lr=3e-3, warmup_steps=5, eval_interval=10, patience=0,
                         gen_weight=gen_weight, progress=False)  # fmt: skip
    out = tmp_path / "ft"
    result = finetune(path, (ids[:64], labels[:64], images[:64]), (ids[64:], labels[64:]), out, cfg,
                      label_names=["top", "bottom"])  # fmt: skip
    history = result["history"]
    assert [r["step"] for r in history] == [10, 20, 30, 40] and result["stopped"] == "max_steps"
    assert history[-1]["clf_loss"] < 0.5 * history[0]["clf_loss"]
    assert (history[-1]["gen_loss"] > 0) == (gen_weight > 0)
    assert result["best_val_acc"] == max(r["val_acc"] for r in history) >= 0.9
    best = ImageGPTForImageClassification.from_pretrained(out / "best")
    assert best.config.id2label == {0: "top", 1: "bottom"}
    acc, pred = evaluate_classifier(best, ids[64:], labels[64:])
    assert acc == result["best_val_acc"] and pred.shape == (32,)
    assert ImageGPTImageProcessor.from_pretrained(out / "best").clusters.shape == (16, 3)
    assert json.loads((out / "history.json").read_text()) == json.loads(json.dumps(history))


def test_probe_init_folds_the_fitted_probe_into_the_head(pretrained):
    path, processor = pretrained
    ids, labels, _ = _data(processor, 64)
    model = ImageGPTForImageClassification.from_pretrained(path, num_labels=2)
    before, _ = evaluate_classifier(model, ids, labels)
    train_acc = init_head_from_probe(model, ids, labels)
    after, _ = evaluate_classifier(model, ids, labels)
    # the head's predictions are the probe's: the feature scaling is folded into the weight exactly
    assert after == pytest.approx(train_acc, abs=1 / 64) and after >= 0.9 > before


def test_finetune_from_a_probe_starts_from_its_accuracy(pretrained, tmp_path):
    path, processor = pretrained
    ids, labels, images = _data(processor, 96)
    cfg = FinetuneConfig(batch_size=16, max_steps=10, lr=1e-3, warmup_steps=2, eval_interval=5, patience=0,
                         probe_init=64, augment=False, progress=False)  # fmt: skip
    result = finetune(path, (ids[:64], labels[:64], None), (ids[64:], labels[64:]), tmp_path / "ft", cfg)
    first = result["history"][0]
    assert first["step"] == 0 and first["loss"] is None and first["val_acc"] >= 0.9
    assert [r["step"] for r in result["history"]] == [0, 5, 10]
    assert result["best_val_acc"] >= first["val_acc"]


def test_saved_classifier_loads_in_transformers_with_equal_logits(pretrained, tmp_path, transformers):
    path, processor = pretrained
    ids, labels, images = _data(processor, 32)
    cfg = FinetuneConfig(batch_size=8, max_steps=4, eval_interval=2, progress=False)
    finetune(path, (ids[:24], labels[:24], images[:24]), (ids[24:], labels[24:]), tmp_path / "ft", cfg)
    ours = ImageGPTForImageClassification.from_pretrained(tmp_path / "ft" / "best")
    theirs = transformers.ImageGPTForImageClassification.from_pretrained(tmp_path / "ft" / "best").eval()
    x = torch.as_tensor(ids[:, :-1])
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, rtol=1e-5, atol=1e-5)


def test_early_stopping_and_time_limit(pretrained, tmp_path):
    path, processor = pretrained
    ids, labels, images = _data(processor, 32)
    train, val = (ids[:24], labels[:24], images[:24]), (ids[24:], labels[24:])
    frozen = FinetuneConfig(batch_size=8, max_steps=50, lr=1e-12, eval_interval=2, patience=2, progress=False)
    result = finetune(path, train, val, tmp_path / "a", frozen)  # nothing moves: no evaluation can improve
    assert result["stopped"] == "early_stopping" and result["steps"] == 6 and result["best_step"] == 2
    assert (tmp_path / "a" / "best").is_dir() and (tmp_path / "a" / "last").is_dir()  # step 2's model and step 6's
    timed = FinetuneConfig(batch_size=8, max_steps=50, eval_interval=100, max_time_minutes=0.0, progress=False)
    result = finetune(path, train, val, tmp_path / "b", timed)
    assert result["stopped"] == "max_time_minutes" and result["steps"] == 1 and (tmp_path / "b" / "best").is_dir()


def test_a_crash_while_saving_keeps_the_previous_best(pretrained, tmp_path, monkeypatch):
    path, processor = pretrained
    model = ImageGPTForImageClassification.from_pretrained(path, num_labels=2)
    target = tmp_path / "run" / "best"
    _save_atomic(model, processor, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def broken(directory, *args, **kwargs):
        (directory / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        _save_atomic(model, processor, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["best"]  # no temporary directory left behind


def test_bad_inputs_give_clear_errors(pretrained, tmp_path):
    path, processor = pretrained
    ids, labels, images = _data(processor, 16)
    cfg = FinetuneConfig(max_steps=1, progress=False)
    with pytest.raises(ValueError, match="labels for"):
        finetune(path, (ids, labels[:5], images), (ids, labels), tmp_path, cfg)
    with pytest.raises(ValueError, match="augmentation needs the training images"):
        finetune(path, (ids, labels, None), (ids, labels), tmp_path, cfg)
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\)"):
        finetune(path, (ids, labels, images), (ids, labels + 5), tmp_path, cfg, num_labels=2)
    with pytest.raises(ValueError, match="label names"):
        finetune(path, (ids, labels, images), (ids, labels), tmp_path, cfg, label_names=["a"])
    big = np.concatenate([ids, ids[:, 1:]], axis=1)  # 128 pixels for a 64-position model
    with pytest.raises(ValueError, match="do not fit"):
        finetune(path, (big, labels, None), (big, labels), tmp_path, FinetuneConfig(augment=False, progress=False))
    with pytest.raises(ValueError, match="batch_size"):
        FinetuneConfig(batch_size=0)
    with pytest.raises(ValueError, match="dtype must be"):
        FinetuneConfig(dtype="float16")
    with pytest.raises(ValueError, match="bfloat16 .* CUDA only"):
        finetune(path, (ids, labels, images), (ids, labels), tmp_path,
                 FinetuneConfig(dtype="bfloat16", device="cpu", progress=False))  # fmt: skip
    bert = tmp_path / "bert"
    ImageGPTForCausalImageModeling(tiny_config(bidirectional=True)).save_pretrained(bert)
    processor.save_pretrained(bert)
    with pytest.raises(ValueError, match="bidirectional"):
        finetune(bert, (ids, labels, images), (ids, labels), tmp_path, FinetuneConfig(gen_weight=1.0))


def test_confusion_matrix_and_its_picture(tmp_path):
    matrix = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    plot_confusion(matrix, ["a", "b", "c"], tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as img:
        assert img.format == "PNG" and img.width > 3 * 44
    with pytest.raises(ValueError, match="square"):
        plot_confusion(matrix, ["a", "b"], tmp_path / "d.png")


def test_validation_accuracy_plot_draws_the_measured_points(tmp_path):
    from imagegpt.viz import plot_loss_curve

    records = [{"step": 0, "val_acc": 0.5, "loss": None}, {"step": 10, "val_acc": 0.9, "loss": 0.3}]
    plot_loss_curve(records, tmp_path / "acc.png", curves=[("val_acc", "val")], ylabel="validation accuracy")
    pixels = np.asarray(Image.open(tmp_path / "acc.png").convert("RGB")).reshape(-1, 3)
    blue = (np.abs(pixels.astype(int) - (31, 119, 180)).sum(axis=1) < 30).sum()
    assert blue > 100  # the line and its dots; the loss (one point, no curve asked for) draws nothing orange
    assert (np.abs(pixels.astype(int) - (255, 127, 14)).sum(axis=1) < 30).sum() == 0


def _cli_parser() -> argparse.ArgumentParser:
    """The parser of the CLI's probe and finetune commands."""
    from imagegpt.cli_probe import add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    return parser


def _test_acc(directory, model_dir) -> float:
    """Test accuracy of the classifier in model_dir on the test IDX files of easy_idx_args(directory, ...)."""
    ids, labels = load_labeled(directory / "test-images-idx3-ubyte", directory / "test-labels-idx1-ubyte",
                               ImageGPTImageProcessor.from_pretrained(model_dir))[:2]  # fmt: skip
    return evaluate_classifier(ImageGPTForImageClassification.from_pretrained(model_dir), ids, labels)[0]


def test_cli_scores_the_last_step_when_the_best_came_earlier(tmp_path):
    from imagegpt.cli_probe import COMMANDS

    parser = _cli_parser()
    out = tmp_path / "out"  # lr 1e-12: nothing moves, so no step improves on the probe-initialized start
    args = parser.parse_args(["finetune", "--model", "fashion-mnist", *easy_idx_args(tmp_path, 40, 32),
                              "--val-size", "8", "--steps", "2", "--batch-size", "4", "--eval-interval", "1",
                              "--lr", "1e-12", "--device", "cpu", "--quiet", "--probe-init", "16",
                              "--out", str(out)])  # fmt: skip
    assert COMMANDS[args.command](args) == 0
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["best_step"] == 0 and summary["steps"] == 2
    assert summary["test_acc"] == _test_acc(tmp_path, out / "best")
    assert summary["test_acc_last"] == _test_acc(tmp_path, out / "last")


def test_cli_finetune_end_to_end(tmp_path, capsys):
    from imagegpt.cli_probe import COMMANDS

    parser = _cli_parser()
    out = tmp_path / "out"
    args = parser.parse_args(["finetune", "--model", "fashion-mnist", *easy_idx_args(tmp_path, 40, 32),
                              "--label-names", "top,bottom", "--val-size", "8", "--steps", "2", "--batch-size", "4",
                              "--eval-interval", "1", "--gen-weight", "0.5", "--device", "cpu", "--quiet",
                              "--probe-init", "16", "--out", str(out)])  # fmt: skip
    assert COMMANDS[args.command](args) == 0
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["n_train"] == 24 and summary["n_val"] == 8 and summary["n_test"] == 8
    assert summary["labels"] == ["top", "bottom"] and np.sum(summary["confusion"]) == 8
    assert 0 <= summary["test_acc"] <= 1 and [r["step"] for r in summary["history"]] == [0, 1, 2]
    assert (out / "confusion.png").is_file() and (out / "best" / "model.safetensors").is_file()
    assert Image.open(out / "val_acc.png").size == (720, 440)
    assert "test accuracy" in capsys.readouterr().out
    assert summary["steps"] == 2 and summary["last_val_acc"] == summary["history"][-1]["val_acc"]
    assert summary["test_acc_last"] == _test_acc(tmp_path, out / "last")
    data = ["--data", str(tmp_path / "train-images-idx3-ubyte"), "--labels", str(tmp_path / "train-labels-idx1-ubyte")]
    bad = parser.parse_args(["finetune", *data, "--label-names", "a,b,c", "--val-size", "8", "--out", str(out)])
    with pytest.raises(ValueError, match="--label-names gives 3 names"):
        COMMANDS[bad.command](bad)
    bad = parser.parse_args(["finetune", *data, "--out", str(out)])  # the default 1000 held out of 32 images
    with pytest.raises(ValueError, match=r"--val-size must lie in \[1, 32\)"):
        COMMANDS[bad.command](bad)


@pytest.mark.parametrize("flags, flip, scale", [([], True, 1.125), (["--no-flip"], False, 1.125),
                                                (["--no-crop"], True, 1.0)])
def test_cli_no_flip_and_no_crop_choose_the_augmentation(tmp_path, monkeypatch, flags, flip, scale):
    # digits: a mirrored 2 is not a 2, so --no-flip keeps the random crops and drops the flips; tiny images:
    # --no-crop keeps the flips and drops the crops (a 1.125x resize and crop distorts a 14x14 garment)
    import imagegpt.finetune as ft
    from imagegpt.cli_probe import COMMANDS

    seen = []

    def spy(images, size, rng, **kwargs):
        seen.append((kwargs["flip"], kwargs["scale"]))
        return augment_images(images, size, rng, **kwargs)

    augment_images = ft.augment_images
    monkeypatch.setattr(ft, "augment_images", spy)
    parser = _cli_parser()
    args = parser.parse_args(["finetune", "--model", "fashion-mnist", *easy_idx_args(tmp_path, 40, 32), "--val-size",
                              "8", "--steps", "2", "--batch-size", "4", "--device", "cpu", "--quiet",
                              *flags, "--out", str(tmp_path / "out")])  # fmt: skip
    assert COMMANDS[args.command](args) == 0
    assert seen == [(flip, scale)] * 2  # one augmented batch per step
    neither = parser.parse_args(["finetune", "--model", "fashion-mnist", *easy_idx_args(tmp_path, 40, 32),
                                 "--no-crop", "--no-flip", "--out", str(tmp_path / "out2")])  # fmt: skip
    with pytest.raises(ValueError, match="--no-crop with --no-flip leaves no augmentation: use --no-augment"):
        COMMANDS[neither.command](neither)


def test_flip_only_augmentation_trains_on_the_images_or_their_mirrors(pretrained, tmp_path, monkeypatch):
    # crop=False: every training sequence is a training image's own tokens, or those of its left-right mirror
    import imagegpt.finetune as ft

    path, processor = pretrained
    ids, labels, images = _data(processor, 48)
    seen = []

    def spy(model, lm_head, batch, batch_labels, gen_weight=0.0):
        seen.append(batch.detach().cpu().numpy())
        return joint_loss(model, lm_head, batch, batch_labels, gen_weight)

    monkeypatch.setattr(ft, "joint_loss", spy)
    cfg = FinetuneConfig(batch_size=8, max_steps=6, eval_interval=3, crop=False, progress=False)
    finetune(path, (ids[:32], labels[:32], images[:32]), (ids[32:], labels[32:]), tmp_path / "ft", cfg)
    grid = ids[:32, 1:].reshape(32, 8, 8)
    plain = {row.tobytes() for row in ids[:32]}
    mirrored = {np.concatenate([ids[i, :1], grid[i, :, ::-1].ravel()]).tobytes() for i in range(32)}
    rows = [row for batch in seen for row in batch]
    assert len(rows) == 6 * 8 and all(r.astype(ids.dtype).tobytes() in plain | mirrored for r in rows)
    assert any(r.astype(ids.dtype).tobytes() in mirrored - plain for r in rows)  # some flips happened
    assert any(r.astype(ids.dtype).tobytes() in plain - mirrored for r in rows)
    with pytest.raises(ValueError, match="neither crop nor flip"):
        FinetuneConfig(crop=False, flip=False)
