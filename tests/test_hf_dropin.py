"""Drop-in behaviour for transformers users, ours vs theirs: dict-like outputs, training hooks, loading options,
config and processor details, Auto classes, state dicts that load both ways as they are."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import imagegpt
from conftest import TINY, randomize_

CLASSES = ["ImageGPTModel", "ImageGPTForCausalImageModeling", "ImageGPTForImageClassification"]


def models(transformers, tmp_path, cls_name="ImageGPTForCausalImageModeling"):
    cfg = transformers.ImageGPTConfig(**{**TINY, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    hf = randomize_(getattr(transformers, cls_name)(cfg).eval())
    hf.save_pretrained(tmp_path)
    return hf, getattr(imagegpt, cls_name).from_pretrained(tmp_path)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_outputs_are_dicts_like_transformers(transformers, tmp_path, cls_name):
    hf, ours = models(transformers, tmp_path, cls_name)
    ids = torch.randint(0, 16, (2, 5))
    kwargs = {"labels": ids} if cls_name == "ImageGPTForCausalImageModeling" else {}
    a, b = hf(ids, output_hidden_states=True, **kwargs), ours(ids, output_hidden_states=True, **kwargs)
    assert list(b) == list(a) == list(b.keys())  # iteration yields the keys that are set
    assert ("loss" in b) == ("loss" in a) and "logits" not in ours.base_model(ids)
    assert [k for k, _ in b.items()] == [k for k, _ in a.items()]
    assert b.get("attentions") is None and b.get("attentions", 3) == a.get("attentions", 3) == 3
    assert len(b.to_tuple()) == len(a.to_tuple()) and torch.equal(b[0], b.to_tuple()[0])
    b["extra"] = 1
    assert b.extra == 1 and "extra" in b


def test_training_hooks(transformers, tmp_path):
    hf, ours = models(transformers, tmp_path)
    for name in ("main_input_name", "supports_gradient_checkpointing", "base_model_prefix"):
        assert getattr(ours, name) == getattr(hf, name)
    assert ours.base_model is ours.transformer and ours.get_input_embeddings() is ours.transformer.wte
    assert ours.get_output_embeddings() is ours.lm_head
    assert imagegpt.ImageGPTForImageClassification(ours.config).get_output_embeddings() is None
    new_head = torch.nn.Linear(TINY["n_embd"], TINY["vocab_size"] - 1, bias=False)
    ours.set_output_embeddings(new_head)
    assert ours.lm_head is new_head
    # frozen embeddings + checkpointing: gradients still reach the blocks (enable_input_require_grads)
    ours.train()
    ours.get_input_embeddings().weight.requires_grad_(False)
    ours.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    assert ours.is_gradient_checkpointing and ours.transformer.gradient_checkpointing_kwargs == {"use_reentrant": True}
    ours(torch.randint(0, 16, (2, 5)), labels=torch.randint(0, 16, (2, 5))).loss.backward()
    assert ours.transformer.h[0].attn.c_attn.weight.grad is not None
    ours.gradient_checkpointing_disable()
    assert not ours.is_gradient_checkpointing


def test_batch_feature_to_dtype_casts_floats_only():
    proc = imagegpt.ImageGPTImageProcessor(clusters=np.random.default_rng(0).uniform(-1, 1, (4, 3)), size=4)
    image = np.random.default_rng(1).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    ids = proc(image, return_tensors="pt").to(torch.float16)
    assert ids["input_ids"].dtype == torch.long
    pixels = proc(image, return_tensors="pt", do_color_quantize=False).to("cpu", dtype=torch.float16)
    assert pixels["pixel_values"].dtype == torch.float16


def test_from_pretrained_state_dict_loading_info_and_size_errors(transformers, tmp_path):
    hf, ours = models(transformers, tmp_path)
    for state in (ours.state_dict(), hf.state_dict()):  # our layout or transformers'
        again = imagegpt.ImageGPTForCausalImageModeling.from_pretrained(None, config=ours.config, state_dict=state)
        assert all(torch.equal(again.state_dict()[k], v) for k, v in ours.state_dict().items())
    model, info = imagegpt.ImageGPTForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == {"score.weight"} and info["unexpected_keys"] == {"lm_head.weight"}
    with pytest.raises(RuntimeError, match="mis-shaped"):  # transformers raises RuntimeError on a size mismatch
        imagegpt.ImageGPTForCausalImageModeling.from_pretrained(tmp_path, n_positions=32)
    with pytest.raises(imagegpt.CheckpointError):  # and it is still our ValueError
        imagegpt.ImageGPTForCausalImageModeling.from_pretrained(tmp_path, n_positions=32)


@pytest.mark.parametrize("cls_name", CLASSES)
@pytest.mark.parametrize("cross", [False, True])
def test_state_dicts_load_both_ways_as_they_are(transformers, tmp_path, cls_name, cross):
    """Issue 14: the projections are Conv1D (weight (in, out)) in memory as in transformers, so plain strict
    load_state_dict works in both directions and code reading c_attn.weight sees transformers' shape."""
    extra = {"add_cross_attention": True} if cross else {}
    cfg = transformers.ImageGPTConfig(**{**TINY, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **extra})
    hf = randomize_(getattr(transformers, cls_name)(cfg).eval(), seed=1)
    ours = randomize_(getattr(imagegpt, cls_name)(imagegpt.ImageGPTConfig(**cfg.to_dict())).eval(), seed=2)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in hf.state_dict().items()}
    ours_before = {k: v.clone() for k, v in ours.state_dict().items()}
    ours.load_state_dict(hf.state_dict())  # strict
    fresh_hf = getattr(transformers, cls_name)(cfg).eval()
    fresh_hf.load_state_dict(ours.state_dict())  # strict, theirs from ours
    kwargs = {"input_ids": torch.randint(0, 16, (2, 6))}
    if cross and cls_name != "ImageGPTForImageClassification":  # which takes no encoder states (as theirs)
        enc = torch.randn(2, 3, TINY["n_embd"])
        kwargs.update(encoder_hidden_states=enc, use_cache=False)  # theirs fails on cross-attention with a cache
    with torch.no_grad():
        expected = hf(**kwargs)[0]
        torch.testing.assert_close(ours(**kwargs)[0], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fresh_hf(**kwargs)[0], expected, atol=0, rtol=0)
        ours.load_state_dict(ours_before)  # and back: ours differs from theirs again
        assert not torch.allclose(ours(**kwargs)[0], expected, atol=1e-3)
    base = ours.transformer if hasattr(ours, "transformer") else ours
    hf_base = hf.transformer if hasattr(hf, "transformer") else hf
    assert base.h[0].attn.c_attn.weight.shape == hf_base.h[0].attn.c_attn.weight.shape == (32, 96)
    assert base.h[0].mlp.c_fc.weight.shape == (32, 128) and base.h[0].mlp.c_proj.weight.shape == (128, 32)
    # the deprecated spellings still work
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in ours.state_dict_hf().items())
    ours.load_state_dict(hf.state_dict(), hf_layout=True)


def test_config_details_as_transformers(transformers):
    theirs = transformers.ImageGPTConfig(n_embd=48, dtype="float16")
    ours = imagegpt.ImageGPTConfig(n_embd=48, dtype="float16")
    assert ours.is_encoder_decoder is theirs.is_encoder_decoder is False
    assert ours.dtype == theirs.dtype == torch.float16
    diff = {k: v for k, v in theirs.to_diff_dict().items() if k != "transformers_version"}
    assert ours.to_diff_dict() == diff
    assert json.loads(ours.to_json_string())["dtype"] == "float16"
    transformers.ImageGPTConfig(n_embd=37, n_head=8)  # both accept it until a model is built
    with pytest.raises(ValueError, match="divisible"):
        imagegpt.ImageGPTModel(imagegpt.ImageGPTConfig(n_embd=37, n_head=8))
    eager = imagegpt.ImageGPTModel(imagegpt.ImageGPTConfig(**TINY, attn_implementation="eager"))
    assert eager.attn_implementation == "eager"


def test_processor_files_kwargs_and_names(transformers, tmp_path):
    clusters = np.random.default_rng(0).uniform(-1, 1, (4, 3))
    theirs = transformers.ImageGPTImageProcessorPil(clusters=clusters)
    ours = imagegpt.ImageGPTImageProcessor(clusters=clusters)
    assert ours.save_pretrained(tmp_path / "o") == [str(tmp_path / "o" / "preprocessor_config.json")]
    assert len(theirs.save_pretrained(tmp_path / "t")) == 1
    kept = imagegpt.ImageGPTImageProcessor.from_dict(ours.to_dict(), do_convert_rgb=False, size=42)
    assert kept.do_convert_rgb is False and kept.size == {"height": 42, "width": 42}
    assert {k: type(v) for k, v in ours.to_dict().items()} == {k: type(v) for k, v in theirs.to_dict().items()}
    assert imagegpt.ImageGPTImageProcessorPil is imagegpt.ImageGPTImageProcessor
    with pytest.warns(FutureWarning, match="deprecated"):
        old = imagegpt.ImageGPTFeatureExtractor(clusters=clusters)
    assert isinstance(old, imagegpt.ImageGPTImageProcessor)


def test_auto_classes(transformers, tmp_path):
    hf, ours = models(transformers, tmp_path)
    transformers.ImageGPTImageProcessorPil(clusters=np.zeros((16, 3))).save_pretrained(tmp_path)
    assert isinstance(imagegpt.AutoImageProcessor.from_pretrained(tmp_path), imagegpt.ImageGPTImageProcessor)
    assert isinstance(imagegpt.AutoConfig.from_pretrained(tmp_path), imagegpt.ImageGPTConfig)
    for auto, cls in [(imagegpt.AutoModel, imagegpt.ImageGPTModel),
                      (imagegpt.AutoModelForCausalLM, imagegpt.ImageGPTForCausalImageModeling),
                      (imagegpt.AutoModelForImageClassification, imagegpt.ImageGPTForImageClassification)]:  # fmt: skip
        assert type(auto.from_pretrained(tmp_path)) is cls
        assert type(auto.from_config(ours.config)) is cls
    other = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**other, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type"):
        imagegpt.AutoConfig.from_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the Auto classes themselves warn about nothing
        imagegpt.AutoModel.from_config(ours.config)
