"""Training (issue 4): loss goes down, exact resume, BERT objective, atomic checkpoints, divergence, bad data, config
and the fit-palette -> tokenize -> train -> complete CLI pipeline. Tiny models on 8x8 images, 16 grays."""

from __future__ import annotations

import json
import math
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from imagegpt import ImageGPTConfig, ImageGPTForCausalImageModeling
from imagegpt import training
from imagegpt.data import ArraySource, tokenize
from imagegpt.palette import grayscale_palette
from imagegpt.processor import ImageGPTImageProcessor
from imagegpt.train_config import TrainConfig, load_config, parse_overrides
from imagegpt.training import TrainingDiverged, bert_mask, compute_loss, latest_checkpoint, lr_at, train

TINY_MODEL = {"n_embd": 32, "n_head": 4, "n_layer": 2}


def synthetic_images(n: int = 64, seed: int = 0) -> np.ndarray:
    """8x8 gray diagonal stripes of random slope and phase: easy structure for a tiny model to pick up."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:8, 0:8]
    return np.stack([((r * rng.integers(1, 4) + c + rng.integers(0, 16)) % 16 * 17).astype(np.uint8)
                     for _ in range(n)])  # fmt: skip


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tokens"
    processor = ImageGPTImageProcessor(clusters=grayscale_palette(16), size={"height": 8, "width": 8})
    tokenize(ArraySource(synthetic_images()), processor, out, val_fraction=0.25)
    return out


def tiny_cfg(data, out, **overrides) -> TrainConfig:
    settings = dict(data=str(data), out_dir=str(out), model=dict(TINY_MODEL), batch_size=8, max_steps=8, lr=3e-3,
                    min_lr=3e-4, warmup_steps=2, eval_interval=4, eval_batches=2, save_interval=4, log_interval=1,
                    progress=False, device="cpu")  # fmt: skip
    return TrainConfig(**{**settings, **overrides})


def read_log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_loss_decreases_and_run_dir_is_complete(tokens, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_cfg(tokens, out, max_steps=40, lr=1e-2, eval_interval=20, save_interval=20))
    log = read_log(out)
    assert [r["step"] for r in log] == list(range(1, 41))
    first, last = np.mean([r["loss"] for r in log[:3]]), np.mean([r["loss"] for r in log[-3:]])
    assert last < first - 0.3, (first, last)
    assert summary["stopped"] == "completed" and summary["steps"] == 40
    assert math.isclose(summary["val_bits_per_dim"], summary["val_loss"] / math.log(2))
    assert {"lr", "tokens_per_s", "elapsed_s"} <= set(log[-1]) and "val_loss" in log[19]
    assert Image.open(out / "loss.png").size == (720, 440)
    assert json.loads((out / "train_config.json").read_text())["max_steps"] == 40
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000040"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-0000020", "step-0000040"]
    model = ImageGPTForCausalImageModeling.from_pretrained(out / "final")
    assert model.config.vocab_size == 17 and model.config.n_positions == 64
    assert ImageGPTImageProcessor.from_pretrained(out / "final").clusters.shape == (16, 3)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_resume_gives_the_same_loss_curve(tokens, tmp_path, dropout):
    straight = train(tiny_cfg(tokens, tmp_path / "a", dropout=dropout, save_interval=100))
    cfg = tiny_cfg(tokens, tmp_path / "b", dropout=dropout, save_interval=100)
    first = train(cfg, on_step=lambda step, record: step == 4)  # stop after step 4, with a checkpoint
    assert first["stopped"] == "callback" and first["steps"] == 4
    assert latest_checkpoint(tmp_path / "b").name == "step-0000004"
    with pytest.raises(FileExistsError, match="resume"):
        train(cfg)
    cfg.resume = True
    second = train(cfg)
    assert second["steps"] == 8 and second["steps_this_run"] == 4
    a, b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["step"] for r in b] == list(range(1, 9))
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=0, atol=1e-6)
    assert straight["train_loss"] == pytest.approx(second["train_loss"], abs=1e-6)


def test_grad_accumulation_matches_the_larger_batch(tokens, tmp_path):
    from safetensors.torch import load_file

    train(tiny_cfg(tokens, tmp_path / "big", batch_size=4, max_steps=3, save_interval=100))
    train(tiny_cfg(tokens, tmp_path / "accum", batch_size=2, grad_accum=2, max_steps=3, save_interval=100))
    big, accum = (load_file(tmp_path / run / "final" / "model.safetensors") for run in ("big", "accum"))
    for key in big:
        torch.testing.assert_close(accum[key], big[key], atol=1e-5, rtol=0, msg=key)


def test_sigint_finishes_the_step_and_saves(tokens, tmp_path):
    def interrupt(step, record):
        if step == 2:
            signal.raise_signal(signal.SIGINT)  # to train's handler: the step under way (3) ends, then a checkpoint

    before = signal.getsignal(signal.SIGINT)
    summary = train(tiny_cfg(tokens, tmp_path / "run"), on_step=interrupt)
    assert summary["stopped"] == "signal" and summary["steps"] == 3
    assert latest_checkpoint(tmp_path / "run").name == "step-0000003"
    assert signal.getsignal(signal.SIGINT) is before  # the old handler is back


def test_bert_objective(tokens, tmp_path):
    summary = train(tiny_cfg(tokens, tmp_path / "bert", objective="bert", max_steps=3, dropout=0.1))
    assert math.isfinite(summary["train_loss"]) and math.isfinite(summary["val_loss"])
    model = ImageGPTForCausalImageModeling.from_pretrained(tmp_path / "bert" / "final")
    assert model.config.bidirectional is True and model.transformer.causal is False
    assert model.config.resid_pdrop == 0.1

    # only masked positions count: the loss equals cross-entropy over exactly those positions
    torch.manual_seed(0)
    model = ImageGPTForCausalImageModeling(ImageGPTConfig(vocab_size=17, n_positions=64, bidirectional=True,
                                                          **TINY_MODEL)).eval()  # fmt: skip
    ids = torch.cat([torch.full((3, 1), 16), torch.randint(0, 16, (3, 64))], dim=1)
    loss = compute_loss(model, ids, "bert", mask_prob=0.15, generator=torch.Generator().manual_seed(5))
    inputs, mask = bert_mask(ids[:, 1:], 0.15, 16, torch.Generator().manual_seed(5))
    assert mask.sum(1).tolist() == [10, 10, 10] and (inputs[mask] == 16).all() and (inputs[~mask] < 16).all()
    logits = model(inputs).logits
    assert torch.allclose(loss, F.cross_entropy(logits[mask], ids[:, 1:][mask]))
    assert not torch.allclose(loss, F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()))


def test_crash_while_saving_keeps_the_previous_checkpoint(tokens, tmp_path, monkeypatch):
    import errno

    from imagegpt import checkpoint
    from imagegpt.run_dir import DiskFullError

    out = tmp_path / "run"
    real_init, opened = checkpoint._Writer.__init__, []

    class FillingFile:  # trainer_state.pt of the second checkpoint: some bytes, then the disk is full
        def __init__(self, f):
            self.f = f

        def write(self, data):
            if self.f.tell() > 100:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    def init(self, f):
        opened.append(f)
        real_init(self, FillingFile(f) if len(opened) == 2 else f)

    monkeypatch.setattr(checkpoint._Writer, "__init__", init)
    with pytest.raises(DiskFullError, match=r"disk is full: could not write checkpoint step-0000004 into .*"
                       r"checkpoints \(No space left on device\); the previous checkpoint .*step-0000002 is intact"):
        train(tiny_cfg(tokens, out, save_interval=2, max_steps=4))
    monkeypatch.undo()
    root = out / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-0000002"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-0000002"]  # no partial step-4, no temp dir
    ImageGPTForCausalImageModeling.from_pretrained(root / "step-0000002")
    state = torch.load(root / "step-0000002" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2
    assert train(tiny_cfg(tokens, out, save_interval=2, max_steps=4, resume=True))["steps"] == 4


def test_nan_loss_stops_with_a_clear_error(tokens, tmp_path, monkeypatch):
    real, calls = training.compute_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 3 else loss

    monkeypatch.setattr(training, "compute_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="diverged at step 3.*step-0000002") as e:
        train(tiny_cfg(tokens, out, save_interval=2))
    assert e.value.step == 3
    assert latest_checkpoint(out).name == "step-0000002"
    assert torch.load(latest_checkpoint(out) / "trainer_state.pt", weights_only=True)["step"] == 2


def test_bad_data_and_models_give_clear_errors(tokens, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(tiny_cfg(tmp_path / "missing", tmp_path / "o1"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a token dataset"):
        train(tiny_cfg(tmp_path / "empty", tmp_path / "o2"))
    with pytest.raises(ValueError, match="no training data"):
        train(tiny_cfg("", tmp_path / "o3"))
    with pytest.raises(ValueError, match="vocab_size"):
        train(tiny_cfg(tokens, tmp_path / "o4", model={**TINY_MODEL, "vocab_size": 9}))
    small = tmp_path / "model8"  # an 8-color model: does not fit 16-color tokens
    ImageGPTForCausalImageModeling(ImageGPTConfig(vocab_size=9, n_positions=64, **TINY_MODEL)).save_pretrained(small)
    with pytest.raises(ValueError, match="8 colors"):
        train(tiny_cfg(tokens, tmp_path / "o5", model=str(small)))
    other = tmp_path / "model16"  # right size, other palette
    ImageGPTForCausalImageModeling(ImageGPTConfig(vocab_size=17, n_positions=64, **TINY_MODEL)).save_pretrained(other)
    ImageGPTImageProcessor(clusters=grayscale_palette(16)[::-1].copy(), size=8).save_pretrained(other)
    with pytest.raises(ValueError, match="palette"):
        train(tiny_cfg(tokens, tmp_path / "o6", model=str(other)))


def test_config_loading(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text('data = "tok"\nbatch_size = 4\nlr = 1\nbetas = [0.8, 0.9]\n[model]\nn_layer = 3\n')
    cfg = load_config(path, {"model.n_embd": 64, **parse_overrides(["max_steps=7", "objective=bert"])})
    assert (cfg.data, cfg.batch_size, cfg.lr, cfg.betas) == ("tok", 4, 1.0, (0.8, 0.9))
    assert cfg.model == {"n_layer": 3, "n_embd": 64} and cfg.max_steps == 7 and cfg.objective == "bert"
    with pytest.raises(ValueError, match="unknown training setting.*batchsize"):
        load_config(None, {"batchsize": 3})
    with pytest.raises(ValueError, match="batch_size must be a int"):
        load_config(None, {"batch_size": "many"})
    with pytest.raises(ValueError, match="objective"):
        load_config(None, {"objective": "gan"})
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["lr"])


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=4, max_steps=14)
    lrs = [lr_at(s, cfg) for s in range(16)]
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8]) and lrs[4] == pytest.approx(1.0)
    assert lrs[9] == pytest.approx(0.55) and lrs[14] == lrs[15] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_cli_pipeline(tmp_path, capsys):
    from imagegpt import cli

    images = tmp_path / "images"
    images.mkdir()
    for i, array in enumerate(synthetic_images(12, seed=1)):
        Image.fromarray(array).save(images / f"{i:02d}.png")
    pal, tok, run = tmp_path / "palette", tmp_path / "tokens", tmp_path / "run"
    assert cli.main(["fit-palette", str(images), "--k", "8", "--grayscale", "--size", "8", "--out",
                           str(pal)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "k=8" in printed and "nats" in printed and "bits" in printed
    assert cli.main(["tokenize", str(images), "--palette", str(pal), "--out", str(tok),
                           "--val-fraction", "0.25"]) == 0  # fmt: skip
    assert "9 train + 3 val" in capsys.readouterr().out
    argv = ["train", "--data", str(tok), "--out", str(run), "--quiet", "--set", "max_steps=3", "--set",
            "batch_size=4", "--set", "model.n_embd=32", "--set", "model.n_layer=1", "--set", "device='cpu'"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "completed at step 3" in printed and "bits/dim" in printed and str(run / "final") in printed
    assert cli.main(argv) == 2  # the run exists: a one-line error that says --resume
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["complete", str(images / "00.png"), "--model", str(run / "final"), "--rows", "4",
                     "--samples", "1", "--quiet", "--out", str(tmp_path / "c.png")]) == 0  # fmt: skip
    assert Image.open(tmp_path / "c.png").size[0] > 8
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "fit-palette" in capsys.readouterr().out


def test_resume_from_a_checkpoint_of_the_old_linear_layout(tokens, tmp_path):
    """Training states written while the projections were nn.Linear hold Adam's moments (out, in) and no
    "weight_layout" entry: resuming transposes them, and the run continues exactly."""
    from imagegpt.layout import CONV1D_WEIGHT
    from imagegpt.train_checkpoint import STATE_FILE

    train(tiny_cfg(tokens, tmp_path / "a", save_interval=100))
    cfg = tiny_cfg(tokens, tmp_path / "b", save_interval=100)
    train(cfg, on_step=lambda step, record: step == 4)
    path = latest_checkpoint(tmp_path / "b") / STATE_FILE
    state = torch.load(path, weights_only=True)
    assert state.pop("weight_layout") == "conv1d"
    model = ImageGPTForCausalImageModeling.from_pretrained(path.parent)
    names = [n for n, p in model.named_parameters() if p.dim() >= 2] + [n for n, p in model.named_parameters()
                                                                        if p.dim() < 2]  # the optimizer's order
    moved = 0
    for index, entry in state["optimizer"]["state"].items():
        if CONV1D_WEIGHT.search(names[index]):
            entry["exp_avg"], entry["exp_avg_sq"] = entry["exp_avg"].t().clone(), entry["exp_avg_sq"].t().clone()
            moved += 1
    assert moved == 8  # c_attn, c_proj, c_fc, mlp c_proj of two layers (the attention c_proj is square)
    torch.save(state, path)
    cfg.resume = True
    train(cfg)
    a, b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=0, atol=1e-6)
