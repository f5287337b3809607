"""Training you can trust (issue 13): divergence never reaches a checkpoint, the run directory is locked, typos in
settings are errors, a resume restores its settings and changes only safe ones, the log survives a partial line,
a full disk is one clear line, interrupted runs exit 130/143, and leftovers are cleaned up. Tiny 8x8 models."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from imagegpt import training
from imagegpt.checkpoint import CheckpointError
from imagegpt.run_dir import DiskFullError, RunLock, RunLocked, read_log
from imagegpt.train_config import load_config, resume_config
from imagegpt.training import TrainingDiverged, latest_checkpoint, train
from test_training import TINY_MODEL, tiny_cfg, tokens  # noqa: F401 (tokens: the shared fixture)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def all_finite_checkpoint(path: Path) -> bool:
    weights = load_file(path / "model.safetensors")
    state = torch.load(path / "trainer_state.pt", weights_only=True)["optimizer"]["state"]
    tensors = [*weights.values(), *(v for s in state.values() for v in s.values() if torch.is_tensor(v))]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# --- divergence ---------------------------------------------------------------------------------------------------
def test_divergence_with_a_huge_lr_leaves_only_finite_checkpoints(tokens, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"The last finite checkpoint is .*step-\d{7}.*--resume --set lr=3 "
                       r"--set warmup_steps=100") as e:  # fmt: skip
        train(tiny_cfg(tokens, out, lr=30.0, min_lr=0.0, warmup_steps=0, save_interval=1, keep_last=0, max_steps=40))
    saved = sorted((out / "checkpoints").glob("step-*"))
    assert saved and e.value.checkpoint == saved[-1] == latest_checkpoint(out)
    assert all(all_finite_checkpoint(p) for p in saved)  # every checkpoint, the one named included
    assert not (out / "final").exists()


def test_nan_gradient_is_never_applied(tokens, tmp_path, monkeypatch):
    models = []
    real_build = training.build_model
    monkeypatch.setattr(training, "build_model", lambda cfg, ds: models.append(real_build(cfg, ds)) or models[-1])

    def poison(step, record):  # from step 3 on, one gradient is NaN while the loss stays finite
        if step == 2:
            models[0].transformer.wte.weight.register_hook(lambda g: g * float("nan"))

    with pytest.raises(TrainingDiverged, match="diverged at step 3: the gradient norm is nan.*step-0000002"):
        train(tiny_cfg(tokens, tmp_path / "run", save_interval=1, keep_last=0), on_step=poison)
    assert all(bool(torch.isfinite(p).all()) for p in models[0].parameters())  # the NaN update was skipped
    assert latest_checkpoint(tmp_path / "run").name == "step-0000002"


def test_weights_made_nan_by_a_step_are_caught_before_the_save(tokens, tmp_path, monkeypatch):
    real_step, calls = torch.optim.AdamW.step, []

    def step(self, *args, **kwargs):  # a finite loss and gradient, but the update leaves a NaN weight
        result = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            self.param_groups[0]["params"][0].data[0, 0] = float("nan")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="diverged at step 3: the update made weights NaN.*step-0000002"):
        train(tiny_cfg(tokens, out, save_interval=1, keep_last=0))
    assert [p.name for p in sorted((out / "checkpoints").glob("step-*"))] == ["step-0000001", "step-0000002"]
    assert all_finite_checkpoint(out / "checkpoints" / "step-0000002")


def test_an_overflowing_lr_is_a_divergence_or_a_config_error(tokens, tmp_path):
    with pytest.raises(ValueError, match="lr = 1e.39 does not fit a float32"):
        tiny_cfg(tokens, tmp_path / "a", lr=1e39)
    with pytest.raises(TrainingDiverged, match="step 1: the update overflows float32.*No checkpoint was written"):
        train(tiny_cfg(tokens, tmp_path / "b", lr=3e38, min_lr=0.0, warmup_steps=0))


@pytest.mark.parametrize("key", ["grad_clip", "max_time_minutes", "lr", "weight_decay"])
def test_nan_settings_are_rejected(key):
    with pytest.raises(ValueError, match=f"{key} must be a finite number, got nan"):
        load_config(None, {key: float("nan")})


# --- the run-directory lock ---------------------------------------------------------------------------------------
def test_a_second_run_into_a_locked_directory_is_refused_with_the_pid(tokens, tmp_path):
    out = tmp_path / "run"
    with RunLock(out):
        with pytest.raises(RunLocked, match=f"in use by another training run \\(PID {os.getpid()}"):
            train(tiny_cfg(tokens, out))
    assert not (out / "log.jsonl").exists()  # the refused run wrote nothing
    assert train(tiny_cfg(tokens, out, max_steps=1))["steps"] == 1  # released: the directory is usable


def test_kill_9_never_leaves_a_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from imagegpt.run_dir import RunLock; "
                               f"RunLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC})  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"PID {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs
        holder.wait()
    RunLock(tmp_path).acquire().release()  # the kernel dropped the lock with the process


# --- settings -----------------------------------------------------------------------------------------------------
def test_unknown_model_keys_are_errors_with_a_suggestion(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text('data = "tok"\n[model]\nn_layers = 1\n')
    with pytest.raises(ValueError, match="unknown model setting 'model.n_layers'; did you mean 'model.n_layer'"):
        load_config(path)
    with pytest.raises(ValueError, match="'model.n_layerz'; did you mean 'model.n_layer'"):
        load_config(None, {"model.n_layerz": 1})
    with pytest.raises(ValueError, match="unknown training setting 'batchsize'; did you mean 'batch_size'"):
        load_config(None, {"batchsize": 3})
    assert load_config(None, {"model.num_hidden_layers": 2, "model.preset": "small"}).model["preset"] == "small"


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu"])
def test_unknown_devices_are_config_errors(device):
    with pytest.raises(ValueError, match=f"device must be auto, cpu, cuda or cuda:N.*got '{device}'"):
        load_config(None, {"device": device})


# --- resume semantics ---------------------------------------------------------------------------------------------
def test_resume_restores_the_settings_and_allows_only_safe_changes(tokens, tmp_path):
    out = tmp_path / "run"
    custom = dict(lr=2e-3, warmup_steps=1, batch_size=4, max_steps=4, model={**TINY_MODEL, "n_embd": 16})
    train(tiny_cfg(tokens, out, **custom))
    cfg, changes = resume_config(None, {"max_steps": 6, "out_dir": str(out)})  # a bare resume, plus max_steps
    assert (cfg.lr, cfg.warmup_steps, cfg.batch_size, cfg.model["n_embd"]) == (2e-3, 1, 4, 16) and cfg.resume
    assert changes == {"max_steps": (4, 6)}
    summary = train(cfg)
    assert summary["steps"] == 6 and summary["changed"] == {"max_steps": (4, 6)}
    event = [r for r in read_log(out / "log.jsonl") if r.get("event") == "resume"]
    assert event == [{"step": 4, "event": "resume", "changed": {"max_steps": {"from": 4, "to": 6}}}]
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["max_steps"] == 6 and saved["model"]["n_embd"] == 16
    for bad, match in ((({"model.n_embd": 32}), "cannot change model"), ({"batch_size": 8}, "cannot change batch_size"),
                       ({"data": str(tmp_path)}, "cannot change data"), ({"objective": "bert"}, "objective")):
        with pytest.raises(ValueError, match=match):
            resume_config(None, {**bad, "out_dir": str(out)})
    assert json.loads((out / "train_config.json").read_text()) == saved  # still describes the model on disk
    with pytest.raises(ValueError, match="cannot change batch_size when resuming"):  # the library checks too
        train(tiny_cfg(tokens, out, **{**custom, "batch_size": 8, "max_steps": 8}, resume=True))


def test_bare_resume_after_divergence_with_a_lower_lr(tokens, tmp_path, monkeypatch):
    real, calls = training.compute_loss, []

    def spiking(*args, **kwargs):  # a loss spike at step 3 (an inf loss)
        calls.append(1)
        return real(*args, **kwargs) * (float("inf") if len(calls) == 3 else 1.0)

    monkeypatch.setattr(training, "compute_loss", spiking)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="step 3: the loss is inf.*--resume --set lr=0.0003"):
        train(tiny_cfg(tokens, out, save_interval=1, max_steps=6))
    monkeypatch.undo()
    cfg, changes = resume_config(None, {"lr": 3e-4, "out_dir": str(out)})  # what the message suggests
    assert changes == {"lr": (3e-3, 3e-4)}
    assert train(cfg)["steps"] == 6


# --- the log ------------------------------------------------------------------------------------------------------
def test_a_partial_last_log_line_is_dropped_on_resume_with_a_warning(tokens, tmp_path, caplog):
    out = tmp_path / "run"
    train(tiny_cfg(tokens, out, max_steps=4))
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # the disk filled (or the process died) mid-append
    with caplog.at_level("WARNING"):
        train(tiny_cfg(tokens, out, max_steps=6, resume=True))
    assert any("log.jsonl: dropped a partial last line" in r.getMessage() for r in caplog.records)
    assert [r["step"] for r in read_log(out / "log.jsonl") if "loss" in r] == list(range(1, 7))
    lines = (out / "log.jsonl").read_text().splitlines()
    lines[1] = "garbage"
    (out / "log.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="log.jsonl, line 2, is not a log record"):
        train(tiny_cfg(tokens, out, max_steps=8, resume=True))


def test_the_log_rewrite_is_atomic(tokens, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny_cfg(tokens, out, max_steps=4))
    before = (out / "log.jsonl").read_text()

    def killed(*args):
        raise KeyboardInterrupt  # killed between writing the new log and moving it into place

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(tokens, out, max_steps=6, resume=True))
    assert (out / "log.jsonl").read_text() == before


# --- disk full ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("victim", ["model.safetensors", "log.jsonl"])
def test_disk_full_anywhere_is_one_line_and_keeps_the_checkpoint(tokens, tmp_path, monkeypatch, victim):
    import builtins
    from pathlib import Path as P

    out = tmp_path / "run"
    train(tiny_cfg(tokens, out, max_steps=2, save_interval=2))
    real_write_bytes, real_open = P.write_bytes, builtins.open

    def write_bytes(self, data):
        if self.name.startswith(".model.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write_bytes(self, data)

    def full_open(file, mode="r", *args, **kwargs):
        if str(file).endswith("log.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *args, **kwargs)

    if victim == "model.safetensors":
        monkeypatch.setattr(P, "write_bytes", write_bytes)
    else:
        monkeypatch.setattr(builtins, "open", full_open)
    with pytest.raises(DiskFullError, match="the disk is full.*step-0000002 is intact.*resume") as e:
        train(tiny_cfg(tokens, out, max_steps=4, save_interval=2, resume=True))
    assert "\n" not in str(e.value) and not str(e.value).startswith("[Errno")
    monkeypatch.undo()
    assert latest_checkpoint(out).name == "step-0000002" and all_finite_checkpoint(latest_checkpoint(out))
    assert not list((out / "checkpoints").glob(".*"))


# --- checkpoint files that are not what they should be ------------------------------------------------------------
def test_bad_trainer_state_and_latest_pointer_name_the_file(tokens, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(tokens, out, max_steps=2, save_interval=2))
    state = out / "checkpoints" / "step-0000002" / "trainer_state.pt"
    good = state.read_bytes()
    state.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="trainer_state.pt is not a readable training state.*truncated"):
        train(tiny_cfg(tokens, out, max_steps=4, resume=True))
    torch.save([1, 2, 3], state)
    with pytest.raises(CheckpointError, match="trainer_state.pt is no training state"):
        train(tiny_cfg(tokens, out, max_steps=4, resume=True))
    state.write_bytes(good)
    (out / "checkpoints" / "latest").write_bytes(b"\xff\xfe step")
    with pytest.raises(CheckpointError, match="checkpoints/latest is not UTF-8 text"):
        train(tiny_cfg(tokens, out, max_steps=4, resume=True))


# --- clutter ------------------------------------------------------------------------------------------------------
def test_stale_temporary_files_are_removed_at_start(tokens, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(tokens, out, max_steps=2, save_interval=2))
    stale = [out / "checkpoints" / ".latest.abc123.tmp", out / ".train_config.json.x1.tmp", out / ".log.jsonl.y.tmp",
             out / "final" / ".model.safetensors.z.tmp", out / "checkpoints" / ".step-0000004.q.tmp"]
    for p in stale[:-1]:
        p.write_text("half")
    stale[-1].mkdir()
    train(tiny_cfg(tokens, out, max_steps=3, save_interval=2, resume=True))
    assert not any(p.exists() for p in stale)


# --- exit codes of interrupted runs -------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_runs_exit_128_plus_the_signal_after_saving(tokens, tmp_path, signum):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "imagegpt", "train", "--data", str(tokens), "--out", str(out), "--quiet",
            "--set", "max_steps=100000", "--set", "batch_size=4", "--set", "model.n_embd=16",
            "--set", "model.n_head=2", "--set", "model.n_layer=1", "--set", "device=cpu", "--set", "log_interval=1",
            "--set", "save_interval=100000", "--set", "eval_interval=100000"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": SRC})  # fmt: skip
    deadline = time.time() + 60
    while not (out / "log.jsonl").is_file() or not (out / "log.jsonl").read_text().strip():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert "signal at step" in stdout and "--resume" in stderr and "Traceback" not in stderr
    assert latest_checkpoint(out) is not None


def test_resume_without_train_config_json_uses_the_checkpoint(tokens, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(tokens, out, max_steps=2, batch_size=4))
    (out / "train_config.json").unlink()
    cfg, changes = resume_config(None, {"out_dir": str(out), "max_steps": 3})
    assert cfg.batch_size == 4 and changes == {"max_steps": (2, 3)}
    assert train(cfg)["steps"] == 3 and json.loads((out / "train_config.json").read_text())["max_steps"] == 3


def test_a_signal_while_the_run_starts_still_stops_with_a_checkpoint(tokens, tmp_path, monkeypatch):
    real_build = training.build_model

    def build(cfg, dataset):  # SIGTERM arrives while the model is being built, before the first step
        signal.raise_signal(signal.SIGTERM)
        return real_build(cfg, dataset)

    monkeypatch.setattr(training, "build_model", build)
    before = signal.getsignal(signal.SIGTERM)
    summary = train(tiny_cfg(tokens, tmp_path / "run"))
    assert summary["stopped"] == "signal" and summary["signal"] == signal.SIGTERM and summary["steps"] == 1
    assert latest_checkpoint(tmp_path / "run").name == "step-0000001"
    assert signal.getsignal(signal.SIGTERM) is before
