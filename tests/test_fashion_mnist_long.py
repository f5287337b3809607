"""scripts/fashion_mnist_long.sh finetune: the commands it runs for each variant (IG=echo prints them)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    data = tmp_path / "fm"
    data.mkdir(exist_ok=True)
    for name in FILES:
        (data / f"{name}.gz").touch()  # only their presence is checked before a command runs
    full = {**os.environ, "F": str(data), "OUT": str(tmp_path / "out"), "IG": "echo", **env}
    return subprocess.run(["bash", str(ROOT / "scripts" / "fashion_mnist_long.sh"), "finetune", "6000"],
                          capture_output=True, text=True, env=full, timeout=60)  # fmt: skip


def test_pretrained_fine_tune_names_and_checkpoint(tmp_path):
    out = _run(tmp_path, FT_AUGMENT="0", FT_SEED="1").stdout
    assert f"finetune --model {tmp_path}/out/train/checkpoints/step-0006000" in out
    assert f"--seed 1 --quiet --out {tmp_path}/out/finetune-noaug-step6000-seed1" in out
    assert "init" not in out.split("finetune")[0]


@pytest.mark.parametrize("seed", ["0", "2"])
def test_scratch_fine_tune_starts_from_a_fresh_model_like_the_checkpoint(tmp_path, seed):
    result = _run(tmp_path, FT_AUGMENT="0", FT_INIT="scratch", FT_SEED=seed)
    assert result.returncode == 0, result.stderr
    init, finetune = result.stdout.strip().splitlines()
    fresh = f"{tmp_path}/out/scratch-init-step6000-seed{seed}"  # one per seed: the seed picks the weights
    assert init == f"init --like {tmp_path}/out/train/checkpoints/step-0006000 --seed {seed} --out {fresh}"
    assert finetune.startswith(f"finetune --model {fresh} ")
    name = "finetune-noaug-step6000-scratch" + ("" if seed == "0" else f"-seed{seed}")
    assert finetune.endswith(f"--out {tmp_path}/out/{name}")


def test_unknown_init_is_refused(tmp_path):
    result = _run(tmp_path, FT_INIT="random")
    assert result.returncode == 2 and "FT_INIT must be pretrained or scratch, got random" in result.stderr
