"""scripts/fashion_mnist_report.py: the study, long-run and fine-tune tables and plots from a miniature runs/fm."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def _train_run(run: Path, n_layer: int, steps: int) -> None:
    cfg = {"model": {"n_layer": n_layer, "n_embd": 64}, "objective": "autoregressive", "lr": 2e-3, "batch_size": 32}
    _write(run / "train_config.json", cfg)
    log = [{"step": s, "loss": 0.6, "elapsed_s": s * 0.6, **({"val_loss": 0.6 - s / 10000} if s % 500 == 0 else {})}
           for s in range(100, steps + 1, 100)]  # fmt: skip
    _write(run / "log.jsonl", "\n".join(json.dumps(r) for r in log) + "\n")


def _rows(accs: list[float], mean: float | None = None) -> dict:
    rows = [{"layer": i, "C": 10.0, "val_acc": a, "test_acc": a} for i, a in enumerate(accs)]
    if mean is not None:
        rows.append({"layer": f"mean({','.join(str(i) for i in range(1, len(accs)))})", "C": 1.0, "test_acc": mean})
    return {"rows": rows}


def test_report_tables_and_plots(tmp_path):
    out, images = tmp_path / "fm", tmp_path / "images" / "new"  # the report makes its --images folder
    _train_run(out / "base" / "train", 2, 1000)
    _write(out / "base" / "probe" / "probe.json", _rows([0.3, 0.80, 0.79]))
    _train_run(out / "long" / "train", 2, 2000)
    _write(out / "long" / "probe-step1000" / "probe.json", _rows([0.3, 0.81, 0.82], mean=0.815))
    _write(out / "long" / "probe-step2000" / "probe.json", _rows([0.3, 0.83, 0.82]))
    hist = [{"step": s, "val_acc": a} for s, a in ((0, 0.80), (300, 0.85), (600, 0.87))]
    _write(out / "long" / "finetune-noaug-step2000" / "history.json", hist)
    res = {"steps": 600, "n_train": 9600, "seconds": 120.0, "best_step": 600, "best_val_acc": 0.87,
           "test_acc": 0.865, "config": {"batch_size": 64}}  # fmt: skip
    _write(out / "long" / "finetune-noaug-step2000" / "finetune.json", res)
    cmd = [sys.executable, str(ROOT / "scripts" / "fashion_mnist_report.py"), "--out", str(out), "--images",
           str(images), "--pixels", "0.8", "--study-pixels", "0.79", "--finetune-image", "ft.png"]  # fmt: skip
    lines = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
    # the study: wall minutes from the log, the last validation loss, best layer 1 (not the last)
    assert "| base | 2 x 64 | autoregressive, 0.002 | 10.0 | 0.5000 | 0.800, 0.790 | 0.8000 (1) | 0.7900 |" in lines
    # the long run: probes sorted by step, epochs of 57,000 images, the mean row where there is one
    steps = [line for line in lines if line.startswith("| step")]
    assert steps == ["| step 1000 | 32,000 (0.56) | 0.5000 | 0.810, 0.820 | 0.8200 (2) | 0.8150 |",
                     "| step 2000 | 64,000 (1.12) | 0.4000 | 0.830, 0.820 | 0.8300 (1) | nan |"]  # fmt: skip
    # the fine-tune: epochs from its own batch size (64), not a fixed 32
    ft = [line for line in lines if line.startswith("| finetune")]
    assert ft == ["| finetune-noaug-step2000 | 600 (4.00) | 2.0 | 0.800, 0.850, 0.870 | 600 | 0.8650 |"]
    for name in ("fmnist-study-depth.png", "fmnist-long-loss.png", "fmnist-probe-vs-compute.png", "ft.png"):
        plot = np.asarray(Image.open(images / name).convert("RGB"))
        assert plot.shape == (440, 720, 3) and (plot < 200).any(), name
    assert not (images / "fmnist-long-finetune.png").exists()


def test_a_variant_pretrained_longer_gets_a_row_per_probed_checkpoint_and_a_depth_plot(tmp_path):
    out, images = tmp_path / "fm", tmp_path / "images"
    _train_run(out / "deep-2000" / "train", 3, 2000)
    _write(out / "deep-2000" / "probe" / "probe.json", _rows([0.3, 0.80, 0.83, 0.81]))
    _write(out / "deep-2000" / "probe-step1000" / "probe.json", _rows([0.3, 0.79, 0.80, 0.80]))
    _write(out / "lr4e-3-2000" / "train" / "log.jsonl", "")  # not probed yet: no table
    _write(out / "deep-old" / "probe" / "probe.json", _rows([0.3, 0.5]))  # not a length: ignored
    cmd = [sys.executable, str(ROOT / "scripts" / "fashion_mnist_report.py"), "--out", str(out), "--images",
           str(images), "--study-pixels", "0.79"]  # fmt: skip
    lines = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
    assert "deep-2000: 2000 steps, 20.0 min of pretraining" in lines
    assert not any("lr4e-3" in line or "deep-old" in line for line in lines)
    steps = [line for line in lines if line.startswith("| step")]  # checkpoints in order, the final model last
    assert steps == ["| step 1000 | 0.5000 | 0.790, 0.800, 0.800 | 0.8000 (2) | 0.8000 |",
                     "| step 2000 | 0.4000 | 0.800, 0.830, 0.810 | 0.8300 (2) | 0.8100 |"]  # fmt: skip
    plot = np.asarray(Image.open(images / "fmnist-deep-2000-depth.png").convert("RGB"))
    assert plot.shape == (440, 720, 3) and (plot < 200).any()
    assert not (images / "fmnist-deep-old-depth.png").exists()


def test_repeats_with_other_seeds_get_a_row_each_their_mean_and_a_plot(tmp_path):
    out, images = tmp_path / "fm", tmp_path / "images"
    for name, accs in (("deep-2000", [0.3, 0.80, 0.83, 0.81]), ("deep-2000-seed1", [0.3, 0.82, 0.81, 0.80]),
                       ("deep-2000-seed2", [0.3, 0.81, 0.82, 0.78])):  # fmt: skip
        _train_run(out / name / "train", 3, 2000)
        _write(out / name / "probe" / "probe.json", _rows(accs))
    _write(out / "deep-2000-seedx" / "probe" / "probe.json", _rows([0.3, 0.1, 0.1, 0.1]))  # not a seed: ignored
    _train_run(out / "base-750" / "train", 2, 750)  # one seed only: no seeds table
    _write(out / "base-750" / "probe" / "probe.json", _rows([0.3, 0.80, 0.79]))
    _write(out / "base-750-seed1" / "train" / "log.jsonl", "")  # its repeat is not probed yet
    cmd = [sys.executable, str(ROOT / "scripts" / "fashion_mnist_report.py"), "--out", str(out), "--images",
           str(images), "--study-pixels", "0.79"]  # fmt: skip
    lines = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
    assert "deep-2000, 3 seeds (final models):" in lines
    assert not any(line.startswith("base-750,") for line in lines)
    i = lines.index("| seed | val loss | test acc per layer, 1 to the last | best layer | last |")
    assert lines[i + 2 : i + 6] == ["| 0 | 0.4000 | 0.800, 0.830, 0.810 | 0.8300 (2) | 0.8100 |",
                                    "| 1 | 0.4000 | 0.820, 0.810, 0.800 | 0.8200 (1) | 0.8000 |",
                                    "| 2 | 0.4000 | 0.810, 0.820, 0.780 | 0.8200 (2) | 0.7800 |",
                                    "| mean | | 0.810, 0.820, 0.797 | 0.8200 (2) | 0.7967 |"]  # fmt: skip
    plot = np.asarray(Image.open(images / "fmnist-deep-2000-seeds-depth.png").convert("RGB"))
    assert plot.shape == (440, 720, 3) and (plot < 200).any()
    assert not (images / "fmnist-base-750-seeds-depth.png").exists()
