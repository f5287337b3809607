"""scripts/fashion_mnist_study.sh: where each variant's run goes and what it trains (IG=echo prints the commands)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _run(tmp_path: Path, variant: str, **env: str) -> subprocess.CompletedProcess:
    data = tmp_path / "fm"
    data.mkdir(exist_ok=True)
    for name in FILES:
        (data / f"{name}.gz").touch()  # only their presence is checked before a command runs
    full = {**os.environ, "F": str(data), "OUT": str(tmp_path / "out"), "IG": "echo", **env}
    return subprocess.run(["bash", str(ROOT / "scripts" / "fashion_mnist_study.sh"), variant],
                          capture_output=True, text=True, env=full, timeout=60)  # fmt: skip


def _commands(result: subprocess.CompletedProcess, name: str) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.startswith(name + " ")]


def test_the_study_run_keeps_its_documented_place_and_length(tmp_path):
    result = _run(tmp_path, "deep")
    (train,) = _commands(result, "train")
    assert f"--out {tmp_path}/out/deep/train " in train
    assert "--set model.n_layer=8 " in train and "--set max_steps=750 " in train
    (probe,) = _commands(result, "probe")
    assert probe.startswith(f"probe --model {tmp_path}/out/deep/train/final ")
    assert probe.endswith(f"--out {tmp_path}/out/deep/probe")


def test_a_longer_run_sits_beside_the_study_and_probes_its_checkpoints(tmp_path):
    result = _run(tmp_path, "deep", STEPS="3000", PROBE_STEPS="750 1500")
    (train,) = _commands(result, "train")
    assert f"--out {tmp_path}/out/deep-3000/train " in train and "--set max_steps=3000 " in train
    final, *earlier = _commands(result, "probe")
    assert final.startswith(f"probe --model {tmp_path}/out/deep-3000/train/final ")
    assert [p.split()[2] for p in earlier] == [f"{tmp_path}/out/deep-3000/train/checkpoints/step-{s:07d}"
                                               for s in (750, 1500)]  # fmt: skip
    assert [p.split()[-1] for p in earlier] == [f"{tmp_path}/out/deep-3000/probe-step{s}" for s in (750, 1500)]
    same = final.split()[3:-2]  # every probe uses the same images, C grid and limits
    assert all(p.split()[3:-2] == same for p in earlier) and "--limit 10000" in final
    assert "--set seed=0 " in train


def test_another_seed_repeats_the_run_beside_it_with_the_same_data_and_probe(tmp_path):
    first, again = _run(tmp_path, "deep", STEPS="3000"), _run(tmp_path, "deep", STEPS="3000", SEED="2")
    (train,), (train2,) = _commands(first, "train"), _commands(again, "train")
    assert f"--out {tmp_path}/out/deep-3000-seed2/train " in train2 and "--set seed=2 " in train2
    # only the place and the seed differ: the same palette, tokens, shape and schedule
    assert train2.replace("-seed2", "").replace("seed=2", "seed=0") == train
    (probe,), (probe2,) = _commands(first, "probe"), _commands(again, "probe")
    assert probe2.replace("-seed2", "") == probe
    assert _commands(_run(tmp_path, "base", SEED="1"), "train")[0].split("--out ")[1].startswith(
        f"{tmp_path}/out/base-seed1/train ")


BAD = [({"STEPS": "3k"}, "STEPS and PROBE_STEPS must be positive integers, got 3k"),
       ({"STEPS": "3000", "PROBE_STEPS": "1600"}, "PROBE_STEPS must be multiples of 250 below STEPS (3000), got 1600"),
       ({"PROBE_STEPS": "750"}, "PROBE_STEPS must be multiples of 250 below STEPS (750), got 750"),
       ({"SEED": "-1"}, "SEED must be a non-negative integer, got -1")]


@pytest.mark.parametrize(("env", "message"), BAD)
def test_bad_lengths_are_refused_before_any_command(tmp_path, env, message):
    result = _run(tmp_path, "deep", **env)
    assert result.returncode == 2 and message in result.stderr and result.stdout == ""
