"""Distributed training: 2 CPU processes under torchrun (gloo) with per-rank batch 2 end where 1 process with batch
4 does; the single-process path needs no process group."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from imagegpt.data import ArraySource, tokenize
from imagegpt.distributed import init_distributed
from imagegpt.palette import grayscale_palette
from imagegpt.processor import ImageGPTImageProcessor
from imagegpt.train_config import TrainConfig
from imagegpt.training import train

SETTINGS = dict(max_steps=3, lr=3e-3, min_lr=3e-4, warmup_steps=1, eval_interval=100, eval_batches=1,
                save_interval=100, log_interval=1, seed=3, grad_clip=1.0, dropout=0.0)  # fmt: skip


def make_tokens(out):
    rng = np.random.default_rng(0)
    r, c = np.mgrid[0:8, 0:8]
    images = np.stack([((r * rng.integers(1, 4) + c + rng.integers(0, 16)) % 16 * 17).astype(np.uint8)
                       for _ in range(24)])  # fmt: skip
    processor = ImageGPTImageProcessor(clusters=grayscale_palette(16), size={"height": 8, "width": 8})
    tokenize(ArraySource(images), processor, out, val_fraction=0.2)
    return out


def test_single_process_needs_no_process_group(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.backend, info.distributed, info.is_main) == (0, 1, None, False, True)
    assert not torch.distributed.is_initialized()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_processes_match_one_with_the_global_batch(tmp_path):
    data = make_tokens(tmp_path / "tokens")
    model = {"n_embd": 32, "n_head": 4, "n_layer": 2}
    single = train(TrainConfig(data=str(data), out_dir=str(tmp_path / "one"), model=model, batch_size=4,
                               device="cpu", progress=False, **SETTINGS))  # fmt: skip
    sets = [f"{k}={json.dumps(v)}" for k, v in {**SETTINGS, "batch_size": 2, "device": "cpu"}.items()]
    sets += [f"model.{k}={v}" for k, v in model.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "imagegpt", "train", "--data", str(data), "--out", str(tmp_path / "two"), "--quiet"]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("completed at step 3") == 1  # only rank 0 prints
    one = load_file(tmp_path / "one" / "final" / "model.safetensors")
    two = load_file(tmp_path / "two" / "final" / "model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=0, msg=key)
    logs = [[json.loads(line)["loss"] for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
            for run in ("one", "two")]  # fmt: skip
    np.testing.assert_allclose(logs[1], logs[0], atol=1e-5)
    state = torch.load(tmp_path / "two" / "checkpoints" / "step-0000003" / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert single["steps"] == 3
