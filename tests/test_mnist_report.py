"""scripts/mnist_report.py: tables and the fine-tune plot from a miniature runs/mnist written here."""

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


def test_report_tables_and_plot(tmp_path):
    out, images = tmp_path / "runs", tmp_path / "images" / "new"  # the report makes its --images folder
    log = [{"step": s, "loss": 0.3, "elapsed_s": s / 10, **({"val_loss": 0.5 - s / 10000} if s % 500 == 0 else {})}
           for s in range(100, 1001, 100)]  # fmt: skip
    _write(out / "train" / "log.jsonl", "\n".join(json.dumps(r) for r in log) + "\n")
    rows = [{"layer": i, "C": 100.0, "val_acc": 0.9, "test_acc": 0.90 + i / 100} for i in range(3)]
    extra = [{"layer": "1+2", "C": 1.0, "val_acc": 0.9, "test_acc": 0.95},
             {"layer": "pixels", "C": 0.1, "val_acc": 0.8, "test_acc": 0.8}]  # fmt: skip
    _write(out / "probe" / "probe.json", {"rows": rows + extra})
    _write(out / "probe-step500" / "probe.json", {"rows": rows[:2]})
    for name, steps, accs in (("finetune", 100, [0.9, 0.95]), ("finetune-300", 300, [0.9, 0.93, 0.96, 0.97])):
        hist = [{"step": i * 100, "val_acc": a} for i, a in enumerate(accs)]
        _write(out / name / "history.json", hist)
        res = {"steps": steps, "n_train": 1000, "seconds": 60.0 * steps / 100, "best_step": hist[-1]["step"],
               "best_val_acc": accs[-1], "test_acc": accs[-1] - 0.01, "config": {"batch_size": 32}}  # fmt: skip
        _write(out / name / "finetune.json", res)
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "mnist_report.py"), "--out", str(out),
                          "--images", str(images)], capture_output=True, text=True, check=True)  # fmt: skip
    lines = res.stdout.splitlines()
    assert lines[0].startswith("pretraining: 1000 steps in 100.0 s") and "0.4500 (500), 0.4000 (1000)" in lines[0]
    probe_rows = [line for line in lines if line.startswith("| step")]
    # sorted by step: the step-500 checkpoint first, then the final one (its step is the log's last)
    assert probe_rows[0].startswith("| step 500 | 0.4500 | 0.9000, 0.9100 | - | - |")
    assert probe_rows[1] == "| step 1000 | 0.4000 | 0.9000, 0.9100, 0.9200 | 0.9500 (C=1) | 0.8000 (C=0.1) |"
    ft = [line for line in lines if line.startswith("| finetune")]
    assert ft == ["| finetune | 100 (3.20) | 1.0 | 100: 0.950 | 0.9400 |",
                  "| finetune-300 | 300 (9.60) | 3.0 | 300: 0.970 | 0.9600 |"]  # fmt: skip
    plot = np.asarray(Image.open(images / "mnist-finetune-epochs.png").convert("RGB"))
    assert plot.shape == (440, 720, 3) and (plot < 200).any()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "mnist_report.py"), "--out", str(out), "--images",
                    str(images), "--finetune-image", "other.png"], capture_output=True, check=True)  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(images / "other.png").convert("RGB")), plot)  # same runs, same plot
