"""Linear probes: pooled features match the model's hidden states, the probe learns, the CLI runs end to end."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import easy_idx_args, tiny_config
from imagegpt import ImageGPTForCausalImageModeling
from imagegpt.heads import ImageGPTForImageClassification
from imagegpt.model import ImageGPTModel

pytest.importorskip("sklearn")

from imagegpt.probe import (  # noqa: E402
    _cache_key, extract_features, fit_probe, mcnemar, plot_probe, probe_layers, raw_pixel_baseline, refit_probe,
    row_features)


def _ids(n: int, length: int, vocab: int = 17, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab - 1, (n, length), generator=g)
    ids[:, 0] = vocab - 1  # the start token
    return ids


@pytest.mark.parametrize("cls", [ImageGPTForCausalImageModeling, ImageGPTForImageClassification, ImageGPTModel])
def test_features_are_pooled_hidden_states(cls):
    model = cls(tiny_config()).eval()
    ids = _ids(5, 17)
    feats = extract_features(model, ids, batch_size=2)  # batches of 2, 2, 1: batching must not matter
    base = getattr(model, "transformer", model)
    with torch.no_grad():
        hidden = base(ids[:, :-1], output_hidden_states=True).hidden_states
    assert sorted(feats) == list(range(base.config.n_layer + 1)) == list(range(len(hidden)))
    for k, x in feats.items():
        assert x.dtype == np.float32 and x.shape == (5, 32)
        np.testing.assert_allclose(x, hidden[k].mean(dim=1).numpy(), rtol=1e-5, atol=1e-5)
    assert sorted(extract_features(model, ids, layers=[2, 0])) == [0, 2]
    with pytest.raises(ValueError, match="layers"):
        extract_features(model, ids, layers=[3])
    with pytest.raises(ValueError, match="start token"):
        extract_features(model, ids[:, 1:])


def test_bert_features_see_every_pixel_unmasked():
    """A bidirectional (BERT) model was trained on the H*W pixels with the start id as its [MASK]: its features
    come from ids[:, 1:], never from a sequence that opens with a [MASK] and drops the last pixel."""
    model = ImageGPTModel(tiny_config(bidirectional=True)).eval()
    ids = _ids(3, 17)
    feats = extract_features(model, ids)
    with torch.no_grad():
        hidden = model(ids[:, 1:], output_hidden_states=True).hidden_states
        causal_window = model(ids[:, :-1], output_hidden_states=True).hidden_states
    for k, x in feats.items():
        np.testing.assert_allclose(x, hidden[k].mean(dim=1).numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(feats[2], causal_window[2].mean(dim=1).numpy(), atol=1e-4)


def test_feature_cache_hits_and_misses(tmp_path):
    model = ImageGPTForCausalImageModeling(tiny_config()).eval()
    ids, cache = _ids(4, 17), tmp_path / "f.npz"
    first = extract_features(model, ids, cache_path=cache)
    assert cache.is_file()
    again = extract_features(model, ids, cache_path=cache)
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)  # other weights: the cache must not answer
    changed = extract_features(model, ids, cache_path=cache)
    assert not np.allclose(changed[0], first[0])


def test_feature_cache_answers_a_subset_of_its_layers_and_keeps_them(tmp_path, monkeypatch):
    model = ImageGPTForCausalImageModeling(tiny_config()).eval()
    ids, cache = _ids(4, 17), tmp_path / "f.npz"
    few = extract_features(model, ids, layers=[0, 2], cache_path=cache)
    full = extract_features(model, ids, cache_path=cache)  # layer 1 is missing: the model runs, the cache grows
    assert sorted(full) == [0, 1, 2]
    np.testing.assert_array_equal(full[2], few[2])
    with np.load(cache) as z:
        assert sorted(n for n in z.files if n.startswith("layer_")) == ["layer_0", "layer_1", "layer_2"]

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran although the cache held the layers")

    monkeypatch.setattr(model.transformer, "forward", no_model)
    one = extract_features(model, ids, layers=[1], cache_path=cache)
    assert list(one) == [1]
    np.testing.assert_array_equal(one[1], full[1])
    with np.load(cache) as z:  # a subset read leaves the cache whole
        assert sorted(n for n in z.files if n.startswith("layer_")) == ["layer_0", "layer_1", "layer_2"]


def test_a_damaged_feature_cache_is_recomputed_and_replaced(tmp_path):
    model = ImageGPTForCausalImageModeling(tiny_config()).eval()
    ids, cache = _ids(4, 17), tmp_path / "f.npz"
    cache.write_bytes(b"not an npz")
    feats = extract_features(model, ids, cache_path=cache)
    again = extract_features(model, ids)
    for k in again:
        np.testing.assert_array_equal(feats[k], again[k])
    with np.load(cache) as z:
        assert sorted(n for n in z.files if n.startswith("layer_")) == ["layer_0", "layer_1", "layer_2"]


def test_feature_cache_key_does_not_depend_on_the_thread_count():
    # a float32 sum over a large tensor rounds differently when split over another number of threads: a probe
    # run with OMP_NUM_THREADS=1 beside one with 2 missed the other's cache and ran the model again
    decoder = ImageGPTForCausalImageModeling(tiny_config(n_embd=256, n_head=4, n_layer=1)).transformer
    ids = torch.zeros(2, 5, dtype=torch.long)
    threads = torch.get_num_threads()
    try:
        keys = set()
        for n in (1, 2, 3, 4):
            torch.set_num_threads(n)
            keys.add(_cache_key(decoder, ids))
    finally:
        torch.set_num_threads(threads)
    assert len(keys) == 1


def _separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x[:, 0] += np.where(y == 1, 4.0, -4.0)  # one informative direction, far apart
    return x, y


def test_probe_separates_and_picks_c_on_validation():
    x, y = _separable(300, 0)
    vx, vy = _separable(100, 1)
    res = fit_probe(x, y, vx, vy, Cs=(0.01, 1.0))
    assert res.val_acc >= 0.95 and res.C in (0.01, 1.0)
    assert (res.model.predict(vx) == vy).mean() == res.val_acc
    # validation labels that contradict the data make every C equally bad: the tie goes to the smallest C
    flipped = fit_probe(x, y, vx, np.full_like(vy, 7), Cs=(10.0, 0.1))
    assert flipped.C == 0.1 and flipped.val_acc == 0.0


def test_probe_layers_rows_and_baseline():
    x, y = _separable(200, 0)
    tx, ty = _separable(100, 1)
    noise = np.random.default_rng(2)
    train = {0: noise.normal(size=(200, 4)), 1: x}
    test = {0: noise.normal(size=(100, 4)), 1: tx}
    rows = probe_layers(train, y, test, ty, concat=[0, 1], Cs=(0.1, 1.0))
    assert [r["layer"] for r in rows] == [0, 1, "0+1"]
    assert all(0 <= r["val_acc"] <= 1 and 0 <= r["test_acc"] <= 1 for r in rows)
    assert rows[1]["test_acc"] >= 0.95 and rows[2]["test_acc"] >= 0.95
    images = np.zeros((60, 4, 4), np.uint8)
    labels = np.arange(60) % 2
    images[labels == 1, :2] = 255
    base = raw_pixel_baseline(images[:40], labels[:40], images[40:], labels[40:], Cs=(1.0,))
    assert base["layer"] == "pixels" and base["test_acc"] == 1.0
    with pytest.raises(ValueError, match=r"layers \[5\] of '0\+5' have no features \(extracted: \[0, 1\]\)"):
        probe_layers(train, y, test, ty, concat=[0, 5])


def test_row_features_rebuild_each_kind_of_row_from_its_name():
    """What scripts/probe_paired.py refits a probe.json row on: the features probe_layers fitted it on."""
    f = {1: np.ones((3, 2), np.float32), 2: np.arange(6, dtype=np.float32).reshape(3, 2)}
    assert row_features(f, 2) is f[2] and row_features(f, "2") is f[2]
    np.testing.assert_array_equal(row_features(f, "1+2"), np.concatenate([f[1], f[2]], axis=1))
    np.testing.assert_array_equal(row_features(f, "mean(1,2)"), (f[1] + f[2]) / 2)
    for bad in ("pixels", "1+x", "mean(1,", ""):
        with pytest.raises(ValueError, match="names no probe row"):
            row_features(f, bad)
    with pytest.raises(ValueError, match=r"layers \[3\] of 'mean\(1,3\)' have no features"):
        row_features(f, "mean(1,3)")


def test_probe_of_averaged_layers_is_the_mean_of_their_features():
    x, y = _separable(200, 0)
    tx, ty = _separable(100, 1)
    rng = np.random.default_rng(3)
    # layer 1 holds the signal, layer 2 the same signal plus noise: their mean keeps it, one layer's dimensions
    train = {1: x, 2: x + rng.normal(scale=0.5, size=x.shape)}
    test = {1: tx, 2: tx + rng.normal(scale=0.5, size=tx.shape)}
    rows = probe_layers(train, y, test, ty, average=[1, 2], concat=[1, 2], Cs=(1.0,))
    assert [r["layer"] for r in rows] == [1, 2, "1+2", "mean(1,2)"]
    assert rows[-1]["test_acc"] >= 0.95
    mean_only = probe_layers({0: (train[1] + train[2]) / 2}, y, {0: (test[1] + test[2]) / 2}, ty, Cs=(1.0,))
    assert mean_only[0]["test_acc"] == rows[-1]["test_acc"] and mean_only[0]["val_acc"] == rows[-1]["val_acc"]
    with pytest.raises(ValueError, match=r"layers \[7\] of 'mean\(1,7\)'"):
        probe_layers(train, y, test, ty, average=[1, 7])


def test_pixel_baseline_counts_gray_pixels_once():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (40, 4, 4), dtype=np.uint8)
    labels = (gray.reshape(40, -1).mean(1) > 127).astype(int)
    as_rgb = np.repeat(gray[..., None], 3, axis=-1)  # what load_labeled returns for gray images
    row = raw_pixel_baseline(as_rgb[:30], labels[:30], as_rgb[30:], labels[30:], Cs=(1.0,))
    assert row["dims"] == 16
    assert row == raw_pixel_baseline(gray[:30], labels[:30], gray[30:], labels[30:], Cs=(1.0,))
    color = as_rgb.copy()
    color[..., 2] = 0
    assert raw_pixel_baseline(color[:30], labels[:30], color[30:], labels[30:], Cs=(1.0,))["dims"] == 48
    with pytest.raises(ValueError, match="differ in size"):
        raw_pixel_baseline(gray[:30], labels[:30], gray[30:, :2], labels[30:], Cs=(1.0,))


def test_plot_probe_writes_png(tmp_path):
    rows = [{"layer": i, "C": 1.0, "val_acc": 0.5 + i / 10, "test_acc": 0.4 + i / 10} for i in range(5)]
    rows.append({"layer": "pixels", "C": 1.0, "val_acc": 0.6, "test_acc": 0.55})
    path = tmp_path / "probe.png"
    plot_probe(rows, path)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (720, 440)


def test_cli_probe_on_easy_idx_data(tmp_path, capsys):
    from imagegpt.cli_probe import COMMANDS, add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(["probe", "--model", "fashion-mnist", *easy_idx_args(tmp_path, 48, 32),
                              "--concat", "3", "4", "--average", "2", "4", "--pixels", "--device", "cpu", "--quiet",
                              "--val-fraction", "0.25", "--out", str(out)])  # fmt: skip
    assert COMMANDS[args.command](args) == 0
    result = json.loads((out / "probe.json").read_text())
    layers = [r["layer"] for r in result["rows"]]
    assert layers == [0, 1, 2, 3, 4, "3+4", "mean(2,4)", "pixels"] and result["n_layer"] == 4
    assert result["n_train"] == 32 and result["n_test"] == 16
    for r in result["rows"]:
        assert 0 <= r["val_acc"] <= 1 and 0 <= r["test_acc"] <= 1
    assert all(r["test_acc"] > 0.9 for r in result["rows"][1:])
    assert (out / "probe.png").is_file() and (out / "features_train.npz").is_file()
    assert "test acc" in capsys.readouterr().out


def test_validation_holds_out_whole_groups():
    """With groups (e.g. one id per emoji, shared by its drawings), no group straddles the train/val split."""
    from imagegpt.probe import _split

    groups = np.repeat(np.arange(50), np.arange(50) % 7 + 1)  # groups of 1-7 examples
    tr, va = _split(len(groups), 0.2, seed=0, groups=groups)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(groups)))
    assert not set(groups[tr]) & set(groups[va])
    assert abs(len(va) / len(groups) - 0.2) < 0.05
    assert (_split(len(groups), 0.2, 0, groups)[1] == va).all()  # seeded
    with pytest.raises(ValueError, match="one id per training example"):
        _split(len(groups), 0.2, 0, groups[:-1])


def test_cli_probe_groups_must_match_the_training_images(tmp_path, capsys):
    from imagegpt.cli_probe import COMMANDS, add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    data = easy_idx_args(tmp_path, 48, 32)
    np.save(tmp_path / "groups.npy", np.arange(32) // 2)  # pairs of the 32 training images: one group each
    args = parser.parse_args(["probe", "--model", "fashion-mnist", *data, "--groups", str(tmp_path / "groups.npy"),
                              "--device", "cpu", "--quiet", "--layers", "4", "--val-fraction", "0.25",
                              "--out", str(tmp_path / "out")])  # fmt: skip
    assert COMMANDS[args.command](args) == 0
    assert json.loads((tmp_path / "out" / "probe.json").read_text())["rows"][0]["test_acc"] > 0.9
    np.save(tmp_path / "groups.npy", np.arange(31))
    with pytest.raises(ValueError, match="31 group ids for the 32 labels"):
        COMMANDS[args.command](args)


def test_mcnemar_counts_and_exact_p():
    a = np.array([1] * 10 + [0] * 2 + [1] * 50, bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 50, bool)
    res = mcnemar(a, b)
    assert (res["only_a"], res["only_b"]) == (10, 2)
    assert res["z"] == pytest.approx(8 / 12**0.5)
    assert res["p"] == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 2 P(X <= 2), X ~ Bin(12, 1/2)
    assert mcnemar(a, a)["p"] == 1.0  # no discordant examples: nothing to tell them apart
    with pytest.raises(ValueError, match="different examples"):
        mcnemar(a, a[:5])


def test_refit_probe_is_what_probe_layers_scores():
    rng = np.random.default_rng(1)
    y, ty = rng.integers(0, 2, 200), rng.integers(0, 2, 100)
    x = (np.eye(2)[y] + rng.normal(size=(200, 2))).astype(np.float32)
    tx = (np.eye(2)[ty] + rng.normal(size=(100, 2))).astype(np.float32)
    row = probe_layers({1: x}, y, {1: tx}, ty, Cs=[0.1, 10], max_iter=300)[0]
    acc = (refit_probe(x, y, row["C"], max_iter=300).predict(tx) == ty).mean()
    assert acc == row["test_acc"]
