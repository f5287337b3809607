"""Checkpoint IO: key checks, corrupt files, atomic writes, dtype/device, Hub resolution offline."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import randomize_, tiny_config
from imagegpt import (
    CheckpointError,
    HubError,
    ImageGPTForCausalImageModeling,
    ImageGPTForImageClassification,
    ImageGPTModel,
)
from imagegpt.checkpoint import atomic_write_text
from imagegpt.layout import CONV1D_WEIGHT


@pytest.fixture
def saved(tmp_path):
    model = randomize_(ImageGPTForCausalImageModeling(tiny_config())).eval()
    model.save_pretrained(tmp_path)
    return model, tmp_path


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_round_trip_and_layout(saved):
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    state = load_file(path / "model.safetensors")
    # transformers' Conv1D layout: (in, out)
    assert state["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)
    assert state["transformer.h.0.mlp.c_fc.weight"].shape == (32, 128)
    assert state["lm_head.weight"].shape == (16, 32)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "imagegpt" and config["architectures"] == ["ImageGPTForCausalImageModeling"]
    loaded = ImageGPTForCausalImageModeling.from_pretrained(path)
    ids = torch.randint(0, 17, (2, 9))
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), atol=0, rtol=0)


def test_base_model_and_head_models_load_each_other(saved):
    model, path = saved
    base = ImageGPTModel.from_pretrained(path)
    ids = torch.randint(0, 17, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(base(ids).last_hidden_state, model.transformer(ids).last_hidden_state)
    base_dir = path / "base"
    base.save_pretrained(base_dir)
    assert not any(k.startswith("transformer.") for k in load_file(base_dir / "model.safetensors"))
    again = ImageGPTForCausalImageModeling.from_pretrained(base_dir)  # a fresh LM head, with a warning
    with torch.no_grad():
        torch.testing.assert_close(again.transformer(ids).last_hidden_state, base(ids).last_hidden_state)


def test_classifier_from_causal_checkpoint_gets_fresh_head(saved, caplog):
    model, path = saved
    with caplog.at_level(logging.WARNING, logger="imagegpt"):
        clf = ImageGPTForImageClassification.from_pretrained(path, num_labels=7)
    assert "score.weight" in caplog.text
    assert clf.score.weight.shape == (7, 32) and clf.config.num_labels == 7
    assert torch.isfinite(clf.score.weight).all() and clf.score.weight.std() > 0
    torch.testing.assert_close(clf.transformer.wte.weight, model.transformer.wte.weight)


def test_missing_and_unexpected_keys_are_listed(saved):
    _, path = saved
    state = load_file(path / "model.safetensors")
    del state["transformer.h.1.ln_2.weight"]
    state["transformer.h.0.extra.weight"] = torch.zeros(3)
    save_file(state, path / "model.safetensors", {"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing keys: transformer\.h\.1\.ln_2\.weight.*unexpected keys: "
                                              r"transformer\.h\.0\.extra\.weight"):
        ImageGPTForCausalImageModeling.from_pretrained(path)
    model = ImageGPTForCausalImageModeling.from_pretrained(path, strict=False)  # warns, initializes
    torch.testing.assert_close(model.transformer.h[1].ln_2.weight, torch.ones(32))


def test_mis_shaped_keys(saved):
    _, path = saved
    state = load_file(path / "model.safetensors")
    state["transformer.wpe.weight"] = torch.zeros(10, 32)
    save_file(state, path / "model.safetensors", {"format": "pt"})
    with pytest.raises(CheckpointError, match=r"transformer\.wpe\.weight: checkpoint \(10, 32\) vs model \(64, 32\)"):
        ImageGPTForCausalImageModeling.from_pretrained(path)
    model = ImageGPTForCausalImageModeling.from_pretrained(path, ignore_mismatched_sizes=True)
    assert model.transformer.wpe.weight.shape == (64, 32)


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_truncated_weights_give_clear_error(saved, filename):
    model, path = saved
    if filename == "pytorch_model.bin":
        model.save_pretrained(path, safe_serialization=False)
        (path / "model.safetensors").unlink()
    data = (path / filename).read_bytes()
    (path / filename).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        ImageGPTForCausalImageModeling.from_pretrained(path)


def test_pickled_code_is_never_executed(tmp_path):
    tiny_config().save_pretrained(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="never executed"):
        ImageGPTForCausalImageModeling.from_pretrained(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_no_weights_and_bad_config(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no weights"):
        ImageGPTForCausalImageModeling.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"n_embd": 3')
    with pytest.raises(ValueError, match="not valid JSON"):
        ImageGPTForCausalImageModeling.from_pretrained(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HubError, match="config.json not found in the directory"):
        ImageGPTForCausalImageModeling.from_pretrained(tmp_path / "empty")
    with pytest.raises(HubError, match="neither a local directory nor a Hub id"):
        ImageGPTForCausalImageModeling.from_pretrained(tmp_path / "no" / "such" / "dir")


def test_dtype_and_device_arguments(saved):
    _, path = saved
    model = ImageGPTForCausalImageModeling.from_pretrained(path, torch_dtype=torch.bfloat16, device="cpu")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    assert ImageGPTForCausalImageModeling.from_pretrained(path, torch_dtype="float16").dtype == torch.float16
    assert ImageGPTForCausalImageModeling.from_pretrained(path, torch_dtype="auto").dtype == torch.float32
    with pytest.raises(ValueError, match="unknown torch_dtype"):
        ImageGPTForCausalImageModeling.from_pretrained(path, torch_dtype="float99")


def test_sharded_checkpoint(saved):
    model, path = saved
    state = load_file(path / "model.safetensors")
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, path / name, {"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    (path / "model.safetensors").unlink()
    loaded = ImageGPTForCausalImageModeling.from_pretrained(path)
    ids = torch.randint(0, 17, (1, 5))
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids))


def test_atomic_save_keeps_the_old_file_when_writing_fails(saved, monkeypatch):
    model, path = saved
    before = (path / "model.safetensors").read_bytes()
    from pathlib import Path

    def crash(self, data):  # model.safetensors is serialized in memory, then written by Path.write_bytes
        with open(self, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt  # a crash/Ctrl-C in the middle of the write

    monkeypatch.setattr(Path, "write_bytes", crash)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(path)
    assert (path / "model.safetensors").read_bytes() == before
    # no temp files left
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    ImageGPTForCausalImageModeling.from_pretrained(path)


def test_atomic_write_text_replaces_whole_file(tmp_path):
    target = tmp_path / "f.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_atomic_write_creates_missing_folders(tmp_path):
    target = tmp_path / "new" / "deeper" / "f.json"  # e.g. a report's --images folder that does not exist yet
    atomic_write_text(target, "x")
    assert target.read_text() == "x" and [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_hub_unreachable_fails_fast_with_one_clear_line(monkeypatch, tmp_path):
    import time

    import imagegpt.hub as hub

    hub._hub_reachable.cache_clear()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(HubError, match="unreachable.*local directory"):
        ImageGPTForCausalImageModeling.from_pretrained("openai/imagegpt-small", cache_dir=tmp_path)
    assert time.monotonic() - start < 10
    hub._hub_reachable.cache_clear()


def test_hub_id_served_from_local_cache(saved, tmp_path_factory):
    """A Hub id resolves through huggingface_hub's cache layout (here filled by hand, offline)."""
    model, path = saved
    cache = tmp_path_factory.mktemp("hub-cache")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someone--tiny-igpt"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in path.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    loaded = ImageGPTForCausalImageModeling.from_pretrained("someone/tiny-igpt", cache_dir=cache,
                                                            local_files_only=True)
    ids = torch.randint(0, 17, (1, 5))
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids))


def test_path_that_is_a_file_or_nonsense(tmp_path):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(HubError, match="is a file"):
        ImageGPTForCausalImageModeling.from_pretrained(f)
    with pytest.raises(HubError, match="neither a local directory nor a Hub id"):
        ImageGPTForCausalImageModeling.from_pretrained("not a/valid/id!")


def test_loaded_parameters_are_contiguous(saved):
    _, path = saved
    model = ImageGPTForCausalImageModeling.from_pretrained(path)
    assert all(p.is_contiguous() for p in model.parameters())


def test_saved_files_get_ordinary_permissions(tmp_path):
    """Atomic writes go through a private temporary file; the result must not stay private (0600)."""
    from imagegpt import ImageGPTForCausalImageModeling

    ImageGPTForCausalImageModeling(tiny_config()).save_pretrained(tmp_path)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("meta_min_params", [0, 10**12], ids=["meta-build", "direct-build"])
def test_meta_and_direct_builds_load_the_same_model(saved, monkeypatch, caplog, meta_min_params):
    # big models are built on the meta device, small ones directly (the meta device's first use costs ~1 s)
    model, path = saved
    monkeypatch.setattr("imagegpt.checkpoint.META_BUILD_MIN_PARAMS", meta_min_params)
    ids = torch.randint(0, model.config.vocab_size - 1, (2, 9))
    loaded = ImageGPTForCausalImageModeling.from_pretrained(path)
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), rtol=0, atol=0)
    with caplog.at_level(logging.WARNING):
        classifier = ImageGPTForImageClassification.from_pretrained(path, num_labels=3)
    assert classifier.score.weight.device.type == "cpu" and classifier.score.weight.abs().sum() > 0
    assert "newly initialized" in caplog.text


def test_loading_the_bundled_model_skips_the_meta_device_start_up():
    import subprocess
    import sys

    code = ("import sys; from imagegpt import ImageGPTForCausalImageModeling; from imagegpt.pretrained import "
            "packaged_model_dir; ImageGPTForCausalImageModeling.from_pretrained(packaged_model_dir('emoji')); "
            "print('torch._dynamo' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("meta_min_params", [0, 10**12], ids=["meta-build", "direct-build"])
def test_loading_leaves_the_global_random_state_alone(saved, monkeypatch, meta_min_params):
    # transformers' examples seed torch, load, then sample: loading must not consume the caller's random numbers
    monkeypatch.setattr("imagegpt.checkpoint.META_BUILD_MIN_PARAMS", meta_min_params)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    ImageGPTForCausalImageModeling.from_pretrained(saved[1])
    assert torch.equal(torch.rand(3), expected)


def _old_linear_layout(state: dict) -> dict:
    """A state dict as ours held it until the projections became Conv1D: nn.Linear weights (out, in)."""
    return {k: v.t().contiguous() if CONV1D_WEIGHT.search(k) else v.clone() for k, v in state.items()}


@pytest.mark.parametrize("cross", [False, True])
def test_state_dicts_of_the_old_linear_layout_still_load(cross):
    """The square projections (the attention's c_proj, q_attn) are transposed with the dict's non-square ones."""
    model = randomize_(ImageGPTForCausalImageModeling(tiny_config(add_cross_attention=cross))).eval()
    old = _old_linear_layout(model.state_dict())
    assert old["transformer.h.0.attn.c_attn.weight"].shape == (96, 32)
    ids = torch.randint(0, 17, (2, 9))
    enc = {"encoder_hidden_states": torch.randn(2, 3, 32)} if cross else {}
    with torch.no_grad():
        expected = model(ids, **enc).logits
        fresh = ImageGPTForCausalImageModeling(tiny_config(add_cross_attention=cross)).eval()
        fresh.load_state_dict(old)  # strict
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())
        torch.testing.assert_close(fresh(ids, **enc).logits, expected, atol=0, rtol=0)
        built = ImageGPTForCausalImageModeling.from_pretrained(None, config=model.config, state_dict=old)
        torch.testing.assert_close(built(ids, **enc).logits, expected, atol=0, rtol=0)
        base = ImageGPTModel.from_pretrained(None, config=model.config, state_dict=old)  # prefix dropped first
        assert torch.equal(base.h[1].attn.c_proj.weight, model.transformer.h[1].attn.c_proj.weight)


def test_layout_is_decided_for_the_whole_state_dict():
    model = randomize_(ImageGPTForCausalImageModeling(tiny_config())).eval()
    state = model.state_dict()
    square = "transformer.h.0.attn.c_proj.weight"
    # no non-square projection to tell the layout: taken as it is (transformers')
    fresh = ImageGPTForCausalImageModeling(tiny_config())
    fresh.load_state_dict({square: state[square]}, strict=False)
    assert torch.equal(fresh.transformer.h[0].attn.c_proj.weight, state[square])
    # a mix of both layouts is no layout: the transposed weights are reported as mis-shaped
    mixed = dict(state, **{"transformer.h.0.mlp.c_fc.weight": state["transformer.h.0.mlp.c_fc.weight"].t()})
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(mixed)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        ImageGPTForCausalImageModeling.from_pretrained(None, config=model.config, state_dict=mixed)
