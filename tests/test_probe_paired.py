"""scripts/probe_paired.py: McNemar's paired test between two probed layers, refit from a probe's feature caches."""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
from conftest import easy_idx_args  # noqa: E402
from imagegpt.probe import blas_threads, probe_layers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import probe_paired  # noqa: E402


def _probe_dir(tmp_path: Path) -> tuple[Path, list[str]]:
    """A probe directory as `imagegpt probe` writes it: layer 1 carries the class, layer 2 only noise."""
    rng = np.random.default_rng(0)
    y, ty = rng.integers(0, 3, 300), rng.integers(0, 3, 200)

    def feats(labels):
        good = np.eye(3)[labels] * 1.5 + rng.normal(size=(len(labels), 3))
        return {1: good.astype(np.float32), 2: rng.normal(size=(len(labels), 3)).astype(np.float32)}

    train, test = feats(y), feats(ty)
    d = tmp_path / "probe"
    d.mkdir()
    for name, f in (("train", train), ("test", test)):
        np.savez(d / f"features_{name}.npz", key=np.array("k"), **{f"layer_{k}": v for k, v in f.items()})
    rows = probe_layers(train, y, test, ty, Cs=[0.1, 1], max_iter=500, concat=[1, 2], average=[1, 2])
    (d / "probe.json").write_text(json.dumps({"n_train": 300, "n_test": 200, "n_layer": 2, "rows": rows}))
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "ty.npy", ty)
    return d, ["--labels", str(tmp_path / "y.npy"), "--test-labels", str(tmp_path / "ty.npy"), "--max-iter", "500"]


def test_paired_test_of_two_layers(tmp_path, capsys):
    d, labels = _probe_dir(tmp_path)
    res = probe_paired.main([str(d), "1", "2", *labels])
    rows = json.loads((d / "probe.json").read_text())["rows"]
    acc1, acc2 = rows[0]["test_acc"], rows[1]["test_acc"]
    assert acc1 > acc2 + 0.2  # the informative layer wins clearly
    # the discordant counts add up to the accuracy gap, and the gap this large is far from chance
    assert (res["only_a"] - res["only_b"]) / 200 == pytest.approx(acc1 - acc2)
    assert res["z"] > 3 and res["p"] < 1e-3
    assert "McNemar" in capsys.readouterr().out


def test_refuses_a_refit_that_does_not_reproduce_the_probe(tmp_path, capsys):
    d, labels = _probe_dir(tmp_path)
    meta = json.loads((d / "probe.json").read_text())
    meta["rows"][0]["test_acc"] -= 0.05  # as if the probe had run with other settings
    (d / "probe.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit):
        probe_paired.main([str(d), "1", "2", *labels])
    assert "pass the probe's own --max-iter" in capsys.readouterr().err


@pytest.mark.parametrize("layer, missing, message", [("7", None, "was not probed"), ("1+7", None, "was not probed"),
                                                     ("1", "features_test.npz", "is missing")])
def test_clear_errors(tmp_path, capsys, layer, missing, message):
    d, labels = _probe_dir(tmp_path)
    if missing:
        (d / missing).unlink()
    with pytest.raises(SystemExit):
        probe_paired.main([str(d), layer, "2", *labels])
    assert message in capsys.readouterr().err


def test_reads_the_probes_own_max_iter_and_seed(tmp_path, capsys):
    """`imagegpt probe` records max_iter and seed in probe.json, so the refit needs no flag and reproduces it."""
    from imagegpt.cli_probe import COMMANDS, add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    data, out = easy_idx_args(tmp_path, 48, 32), tmp_path / "out"
    args = parser.parse_args(["probe", "--model", "fashion-mnist", *data, "--layers", "1", "4", "--max-iter", "300",
                              "--seed", "3", "--device", "cpu", "--quiet", "--val-fraction", "0.25",
                              "--out", str(out)])  # fmt: skip
    assert COMMANDS[args.command](args) == 0
    meta = json.loads((out / "probe.json").read_text())
    assert meta["max_iter"] == 300 and meta["seed"] == 3
    assert meta["blas_threads"] == blas_threads() >= 1  # what a refit needs to reproduce an unconverged fit
    labels = [data[data.index("--labels") + 1], data[data.index("--test-labels") + 1]]
    res = probe_paired.main([str(out), "1", "4", "--labels", labels[0], "--test-labels", labels[1]])
    assert res["only_a"] + res["only_b"] <= 16  # 16 test images
    assert "test accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a flag that contradicts the record is refused, not silently used
        probe_paired.main([str(out), "1", "4", "--labels", labels[0], "--test-labels", labels[1], "--max-iter", "50"])
    assert "differs from the probe's own, 300" in capsys.readouterr().err


def test_refits_with_the_probes_blas_threads(tmp_path, monkeypatch):
    """An lbfgs fit stopped at max_iter unconverged ends elsewhere with another BLAS thread count (it did on a real
    probe: 0.8242 against 0.8247), so the refit runs with the count probe.json records, whatever this process has."""
    import imagegpt.probe as probe

    d, labels = _probe_dir(tmp_path)
    recorded = 2 if probe.blas_threads() == 1 else 1  # not this process's own count
    meta = json.loads((d / "probe.json").read_text())
    (d / "probe.json").write_text(json.dumps({**meta, "blas_threads": recorded}))
    seen, fit = [], probe._fit
    monkeypatch.setattr(probe, "_fit", lambda *a: (seen.append(probe.blas_threads()), fit(*a))[1])
    probe_paired.main([str(d), "1", "2", *labels])
    assert seen == [recorded, recorded]
    assert probe.blas_threads() != recorded  # the limit ends with the refit


@pytest.mark.parametrize("row", ["1+2", "mean(1,2)"])
def test_concatenated_and_averaged_rows_are_refit_from_the_layer_caches(tmp_path, capsys, row):
    d, labels = _probe_dir(tmp_path)
    rows = {str(r["layer"]): r for r in json.loads((d / "probe.json").read_text())["rows"]}
    res = probe_paired.main([str(d), row, "1", *labels])  # stops unless the refit reproduces probe.json's row
    assert (res["only_a"] - res["only_b"]) / 200 == pytest.approx(rows[row]["test_acc"] - rows["1"]["test_acc"])
    assert f"{row}: C = {rows[row]['C']:g}, test accuracy {rows[row]['test_acc']:.4f}" in capsys.readouterr().out


def _pixel_probe(tmp_path: Path, *extra: str) -> tuple[Path, list[str]]:
    """A real `imagegpt probe --pixels` of the bundled fashion-mnist model; its directory and image arguments."""
    from imagegpt.cli_probe import COMMANDS, add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    data, out = easy_idx_args(tmp_path, 64, 40), tmp_path / "out"
    args = parser.parse_args(["probe", "--model", "fashion-mnist", *data, "--layers", "1", "2", "--pixels",
                              "--C", "0.01", "1", "--max-iter", "300", "--device", "cpu", "--quiet",
                              "--val-fraction", "0.25", "--out", str(out), *extra])  # fmt: skip
    assert COMMANDS[args.command](args) == 0
    return out, data


def test_pixels_against_a_layer_on_the_same_test_images(tmp_path, capsys):
    out, data = _pixel_probe(tmp_path)
    meta = json.loads((out / "probe.json").read_text())
    pixels = next(r for r in meta["rows"] if r["layer"] == "pixels")
    args = [str(out), "pixels", "2", *data]  # --data, --labels, --test-data, --test-labels: the probe's own
    res = probe_paired.main(args)  # C from the pixels row, and the refit must reproduce its accuracy
    layer2 = next(r for r in meta["rows"] if r["layer"] == 2)
    assert (res["only_a"] - res["only_b"]) / 24 == pytest.approx(pixels["test_acc"] - layer2["test_acc"])
    assert f"pixels: C = {pixels['C']:g}, test accuracy {pixels['test_acc']:.4f}\n" in capsys.readouterr().out
    # a probe run without --pixels: C is picked here as the probe picks it; the same C, the same accuracy
    meta["rows"] = [r for r in meta["rows"] if r["layer"] != "pixels"]
    (out / "probe.json").write_text(json.dumps(meta))
    assert probe_paired.main([*args, "--pixel-Cs", "0.01", "1"]) == res
    assert f"pixels: C = {pixels['C']:g}, test accuracy {pixels['test_acc']:.4f} (C picked here)" in \
        capsys.readouterr().out


@pytest.mark.parametrize("grouped", [False, True])
def test_pixel_C_is_picked_on_the_probes_own_validation_split(tmp_path, monkeypatch, capsys, grouped):
    """Without a pixels row, C is picked on the split the probe used: its --val-fraction (0.25 here) and --groups,
    which probe.json records (a default 0.1 split and no groups would pick on other images)."""
    groups = np.arange(40) // 4  # ten groups of four training images
    np.save(tmp_path / "groups.npy", groups)
    out, data = _pixel_probe(tmp_path, *(["--groups", str(tmp_path / "groups.npy")] if grouped else []))
    meta = json.loads((out / "probe.json").read_text())
    assert meta["val_fraction"] == 0.25 and meta["groups"] == (str(tmp_path / "groups.npy") if grouped else None)
    meta["rows"] = [r for r in meta["rows"] if r["layer"] != "pixels"]
    (out / "probe.json").write_text(json.dumps(meta))
    seen, pick = [], probe_paired.pick_C
    monkeypatch.setattr(probe_paired, "pick_C", lambda *a, **kw: (seen.append(kw), pick(*a, **kw))[1])
    probe_paired.main([str(out), "pixels", "2", *data, "--pixel-Cs", "0.01", "1"])
    assert seen[0]["val_fraction"] == 0.25
    assert np.array_equal(seen[0]["groups"], groups) if grouped else seen[0]["groups"] is None
    if grouped:  # the recorded groups are gone: a clear error, not a C picked on another split
        (tmp_path / "groups.npy").unlink()
        with pytest.raises(SystemExit):
            probe_paired.main([str(out), "pixels", "2", *data])
        assert "held out whole groups for validation, but its --groups cannot be read" in capsys.readouterr().err


def test_pixels_need_the_probes_own_images(tmp_path, capsys):
    out, data = _pixel_probe(tmp_path)
    given = dict(zip(data[::2], data[1::2]))  # flag -> path
    labels = ["--labels", given["--labels"], "--test-labels", given["--test-labels"]]
    with pytest.raises(SystemExit):
        probe_paired.main([str(out), "pixels", "1", *labels])
    assert "pixels needs the probe's images: --data and --test-data" in capsys.readouterr().err
    swapped = ["--data", given["--test-data"], "--test-data", given["--data"]]  # 24 images for 40 labels
    with pytest.raises(SystemExit):
        probe_paired.main([str(out), "pixels", "1", *labels, *swapped])
    assert "holds 40 labels for 24 images" in capsys.readouterr().err
