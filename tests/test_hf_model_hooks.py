"""Model-class behaviour transformers' own test mixins read, ours vs theirs: the attention-backend flags,
``post_init``, per-block gradient checkpointing, and the size-mismatch notice."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import imagegpt
from conftest import TINY, randomize_

CLASSES = ["ImageGPTModel", "ImageGPTForCausalImageModeling", "ImageGPTForImageClassification"]


@pytest.mark.parametrize("cls_name", CLASSES)
def test_backend_flags_say_what_works(transformers, tmp_path, cls_name):
    cls, theirs = getattr(imagegpt, cls_name), getattr(transformers, cls_name)
    for flag in ("_supports_flash_attn", "_supports_flex_attn", "_supports_attention_backend"):
        assert getattr(cls, flag) is getattr(theirs, flag) is False
    assert cls._can_set_experts_implementation() is theirs._can_set_experts_implementation() is False
    assert cls._keys_to_ignore_on_load_missing is theirs._keys_to_ignore_on_load_missing is None
    # ours does switch between sdpa and eager (transformers' ImageGPT cannot): the flags say so, and it works
    assert cls._supports_sdpa and cls._can_set_attn_implementation()
    model = randomize_(cls(imagegpt.ImageGPTConfig(**TINY)).eval())
    assert model.config._attn_implementation == "sdpa"
    ids = torch.randint(0, 16, (2, 6))
    with torch.no_grad():
        fused = model(ids)[0]
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == model.base_model.attn_implementation == "eager"
        torch.testing.assert_close(model(ids)[0], fused, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='Specified `attn_implementation="foo"` is not supported'):
        model.set_attn_implementation("foo")  # transformers' words
    assert model.config._attn_implementation == "eager"
    model.save_pretrained(tmp_path)
    assert cls.from_pretrained(tmp_path).config._attn_implementation == "sdpa"  # a setting, not saved
    assert cls.from_pretrained(tmp_path, attn_implementation="eager").config._attn_implementation == "eager"


def test_post_init_initializes_only_what_is_new(transformers):
    def with_extra(base):
        class WithExtra(base):
            def __init__(self, config):
                super().__init__(config)
                self.extra = nn.Linear(config.n_embd, 64)  # torch's default init: uniform, std ~0.1, bias too
                self.post_init()

        return WithExtra

    theirs = with_extra(transformers.ImageGPTForCausalImageModeling)(transformers.ImageGPTConfig(**TINY))
    ours = with_extra(imagegpt.ImageGPTForCausalImageModeling)(imagegpt.ImageGPTConfig(**TINY))
    for model in (theirs, ours):  # transformers' scheme: normal(0, initializer_range=0.02), zero bias
        assert 0.017 < float(model.extra.weight.std()) < 0.023 and not model.extra.bias.any()
    randomize_(ours)  # "trained"
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    ours.resize_token_embeddings(TINY["vocab_size"] + 5)
    resized = {k: v.clone() for k, v in ours.state_dict().items()}
    ours.post_init()  # again: nothing already there is drawn anew, resized layers included
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in resized.items())
    assert torch.equal(before["transformer.h.0.attn.c_attn.weight"], resized["transformer.h.0.attn.c_attn.weight"])
    assert resized["lm_head.weight"].shape[0] == TINY["vocab_size"] + 4  # README: the start token stays unpredicted


@pytest.mark.parametrize("cls_name", CLASSES)
def test_post_init_after_construction_or_loading_changes_nothing(tmp_path, cls_name):
    cls = getattr(imagegpt, cls_name)
    built = cls(imagegpt.ImageGPTConfig(**TINY))
    built.save_pretrained(tmp_path)
    for model in (built, cls.from_pretrained(tmp_path)):
        assert all(getattr(m, "_is_hf_initialized", False) for m in model.modules())
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.post_init()
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_gradient_checkpointing_per_block_as_transformers(transformers):
    theirs = transformers.ImageGPTForCausalImageModeling(transformers.ImageGPTConfig(**TINY))
    no_dropout = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    ours = randomize_(imagegpt.ImageGPTForCausalImageModeling(imagegpt.ImageGPTConfig(**TINY, **no_dropout)))

    def flagged(model):
        return sorted(n for n, m in model.named_modules() if getattr(m, "gradient_checkpointing", False))

    for model in (theirs, ours):
        model.gradient_checkpointing_enable()
    assert flagged(ours) == flagged(theirs) == ["transformer", "transformer.h.0", "transformer.h.1"]
    ids = torch.randint(0, 16, (2, 6))
    ours.train()
    block = ours.transformer.h[0]
    hook_calls, forward_calls = [], []
    block.register_forward_pre_hook(lambda module, args: hook_calls.append(1))
    real = block._gradient_checkpointing_func
    block._gradient_checkpointing_func = lambda fn, *args: real(lambda *a: forward_calls.append(1) or fn(*a), *args)
    ours(ids, labels=ids).loss.backward()
    assert len(forward_calls) == 2 and len(hook_calls) == 1  # recomputed in backward; hooks stay outside it
    grads = {n: p.grad.clone() for n, p in ours.named_parameters()}
    for model in (theirs, ours):
        model.gradient_checkpointing_disable()
    assert flagged(ours) == flagged(theirs) == []
    ours.zero_grad()
    ours(ids, labels=ids).loss.backward()
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[name])


def test_size_mismatch_notice_uses_transformers_words(transformers, tmp_path, caplog):
    theirs = transformers.ImageGPTForImageClassification(transformers.ImageGPTConfig(**TINY))
    theirs.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="imagegpt.checkpoint"):
        model = imagegpt.ImageGPTForImageClassification.from_pretrained(tmp_path, num_labels=5,
                                                                        ignore_mismatched_sizes=True)  # fmt: skip
    assert model.score.weight.shape == (5, TINY["n_embd"])
    assert "score.weight: Reinit due to size mismatch - ckpt: (2, 32) vs model: (5, 32)" in caplog.text
