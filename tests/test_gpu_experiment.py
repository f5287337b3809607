"""scripts/gpu_experiment.sh: the GPU recipe, never run on a GPU yet, runs end to end on the CPU with SMOKE=1."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import easy_images, write_idx

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_experiment.sh"


def _mnist_like(directory: Path, n_train: int = 160, n_test: int = 48) -> Path:
    """MNIST's four gzipped IDX files (28x28 uint8 images, uint8 labels) of two easy classes."""
    directory.mkdir()
    images, labels = easy_images(n_train + n_test, 28)
    for split, part in (("train", slice(0, n_train)), ("t10k", slice(n_train, None))):
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", images[part], gz=True)
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", labels[part], gz=True)
    return directory


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    ig = shutil.which("imagegpt", path=str(Path(sys.executable).parent)) or f"{sys.executable} -m imagegpt"
    full = {**os.environ, "OUT": str(tmp_path / "gpu"), "IG": ig, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=full, timeout=600)


def test_smoke_runs_every_stage_and_a_rerun_skips_the_finished_ones(tmp_path):
    data = _mnist_like(tmp_path / "mnist")
    result = _run(tmp_path, SMOKE="1", DATASETS="mnist", M=str(data))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mnist done after" in result.stdout
    run = tmp_path / "gpu-smoke" / "mnist"  # SMOKE never writes into the real run's folder
    assert not (tmp_path / "gpu").exists()
    train = json.loads((run / "train" / "final" / "config.json").read_text())
    assert (train["n_layer"], train["n_embd"], train["vocab_size"]) == (2, 32, 17)  # the smoke shape, 16 grays
    probe = json.loads((run / "probe" / "probe.json").read_text())
    assert (probe["n_train"], probe["n_test"]) == (64, 32)
    names = [str(r["layer"]) for r in probe["rows"]]
    assert names[:3] == ["0", "1", "2"] and "pixels" in names and len(names) == 5  # + the concatenated middle
    ft = json.loads((run / "finetune" / "finetune.json").read_text())
    assert (ft["n_val"], ft["n_test"], ft["steps"]) == (16, 32, 2) and 0 <= ft["test_acc"] <= 1
    outputs = [run / "train" / "final" / "model.safetensors", run / "probe" / "probe.json",
               run / "finetune" / "finetune.json"]  # fmt: skip
    before = [f.stat().st_mtime_ns for f in outputs]  # each is written by replacing it: a new mtime
    again = _run(tmp_path, SMOKE="1", DATASETS="mnist", M=str(data))
    assert again.returncode == 0, again.stderr[-3000:]
    assert [f.stat().st_mtime_ns for f in outputs] == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_a_gpu_the_real_recipe_refuses_before_any_work(tmp_path):
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("the script checks CUDA with the project's .venv (bash scripts/setup.sh)")
    result = _run(tmp_path, DATASETS="mnist", M=str(tmp_path))
    assert result.returncode == 1 and "no CUDA device" in result.stderr and "SMOKE=1" in result.stderr
    assert not (tmp_path / "gpu").exists()


def test_an_unknown_data_set_or_missing_files_are_named(tmp_path):
    result = _run(tmp_path, SMOKE="1", DATASETS="cifar")
    assert result.returncode == 2 and "unknown data set cifar (fashion, mnist)" in result.stderr
    result = _run(tmp_path, SMOKE="1", DATASETS="mnist", M=str(tmp_path / "nowhere"))
    assert result.returncode == 1 and f"missing {tmp_path}/nowhere/train-images-idx3-ubyte.gz" in result.stderr
