"""scripts/mnist_experiment.sh: the fine-tune it runs for each variant (IG=echo prints the commands)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    data, out = tmp_path / "mnist", tmp_path / "out"
    data.mkdir(exist_ok=True)
    out.mkdir(exist_ok=True)
    for name in FILES:
        (data / f"{name}.gz").touch()  # only their presence is checked before a command runs
    (out / "pixels28.json").write_text("{}")  # step 6 runs Python on the real files: skipped when its output exists
    full = {**os.environ, "OUT": str(out), "IG": "echo", **env}
    return subprocess.run(["bash", str(ROOT / "scripts" / "mnist_experiment.sh"), str(data)],
                          capture_output=True, text=True, env=full, timeout=60)  # fmt: skip


def _finetune(stdout: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.startswith("finetune ")]
    return line


def test_pretrained_fine_tune_uses_the_final_model_and_keeps_the_documented_names(tmp_path):
    result = _run(tmp_path, FT_STEPS="14400")
    assert result.returncode == 0, result.stderr
    line = _finetune(result.stdout)
    assert line.startswith(f"finetune --model {tmp_path}/out/train/final ")
    assert line.endswith(f"--seed 0 --quiet --out {tmp_path}/out/finetune-14400")
    assert "--no-augment" in line and not any(x.startswith("init ") for x in result.stdout.splitlines())


@pytest.mark.parametrize("seed", ["0", "3"])
def test_scratch_fine_tune_starts_from_a_fresh_twin_of_the_final_model(tmp_path, seed):
    result = _run(tmp_path, FT_STEPS="14400", FT_INIT="scratch", FT_SEED=seed)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    fresh = f"{tmp_path}/out/scratch-init-seed{seed}"  # one per seed: the seed picks the weights
    init = lines.index(f"init --like {tmp_path}/out/train/final --seed {seed} --out {fresh}")
    line = _finetune(result.stdout)
    assert lines.index(line) == init + 1  # written just before the fine-tune that starts from it
    assert line.startswith(f"finetune --model {fresh} ")
    name = "finetune-14400-scratch" + ("" if seed == "0" else f"-seed{seed}")
    assert line.endswith(f"--seed {seed} --quiet --out {tmp_path}/out/{name}")


def _probed(stdout: str) -> list[str]:
    """The models that step 3 and 4 probe, in order."""
    return [line.split("--model ")[1].split()[0] for line in stdout.splitlines() if line.startswith("probe ")]


@pytest.mark.parametrize("seed", ["0", "1"])
def test_pretraining_seed_reaches_train_and_probe_steps_pick_the_earlier_checkpoints(tmp_path, seed):
    result = _run(tmp_path, PT_SEED=seed, PROBE_STEPS="1500")
    assert result.returncode == 0, result.stderr
    (train,) = [line for line in result.stdout.splitlines() if line.startswith("train ")]
    assert train.endswith(f"--set seed={seed} --quiet")
    assert _probed(result.stdout) == [f"{tmp_path}/out/train/final", f"{tmp_path}/out/train/checkpoints/step-0001500"]
    assert _probed(_run(tmp_path, PROBE_STEPS="").stdout) == [f"{tmp_path}/out/train/final"]


BAD = [({"FT_INIT": "random"}, "FT_INIT must be pretrained or scratch, got random"),
       ({"FT_SEED": "-1"}, "FT_SEED must be a non-negative integer, got -1"),
       ({"PT_SEED": "one"}, "PT_SEED must be a non-negative integer, got one")]


@pytest.mark.parametrize(("env", "message"), BAD)
def test_bad_variants_are_refused_before_any_command(tmp_path, env, message):
    result = _run(tmp_path, **env)
    assert result.returncode == 2 and message in result.stderr and result.stdout == ""
