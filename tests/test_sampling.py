"""The sampler: greedy parity with transformers' generate, cached logits, seeding, top-k/top-p, bad prompts."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY, prompt, randomize_
from imagegpt import ImageGPTConfig, ImageGPTForCausalImageModeling, KVCache
from imagegpt.sampling import (
    _step_fn,
    choose_tokens,
    filter_logits,
    generate,
    iter_tokens,
    make_generator,
)

SHAPES = [
    {},  # TINY: 16 colors, 64 positions, 2 layers x 32
    dict(vocab_size=9, n_positions=36, n_embd=48, n_head=6, n_layer=3),
    dict(vocab_size=33, n_positions=16, n_embd=16, n_head=2, n_layer=1),
]


def pair(transformers, tmp_path, **overrides):
    cfg = transformers.ImageGPTConfig(**{**TINY, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                                         **overrides})  # fmt: skip
    hf = randomize_(transformers.ImageGPTForCausalImageModeling(cfg).eval())
    hf.save_pretrained(tmp_path)
    return hf, ImageGPTForCausalImageModeling.from_pretrained(tmp_path).eval()


@pytest.mark.parametrize("shape", SHAPES, ids=["tiny", "wide", "one-layer"])
@pytest.mark.parametrize("batch,length", [(1, 1), (3, 1), (2, 5), (4, 12)])
def test_greedy_matches_transformers_generate(transformers, tmp_path, shape, batch, length):
    hf, ours = pair(transformers, tmp_path, **shape)
    ids = prompt(ours, batch, length)
    total = ours.config.n_positions + 1  # a whole image: the last token is predicted, never fed back
    expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_length=total, do_sample=False)
    got = ours.generate(ids, max_length=total)
    assert got.shape == expected.shape == (batch, total)
    assert torch.equal(got, expected)


def test_sampled_shape_matches_transformers(transformers, tmp_path):
    hf, ours = pair(transformers, tmp_path)
    ids = prompt(ours, 2, 3)
    for kwargs in [dict(max_new_tokens=7), dict(max_length=30, num_return_sequences=3), {}]:
        expected = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=5, **kwargs)
        got = ours.generate(ids, do_sample=True, top_k=5, **kwargs)
        assert got.shape == expected.shape
        assert torch.equal(got[:, : ids.shape[1]], ids.repeat_interleave(kwargs.get("num_return_sequences", 1), 0))


@pytest.mark.parametrize("prefill", [1, 4, 20])
def test_cached_step_logits_equal_full_forward(tmp_path, prefill):
    model = randomize_(ImageGPTForCausalImageModeling(_config()).eval())
    seq = prompt(model, 3, model.config.n_positions)
    with torch.inference_mode():
        full = model(seq).logits  # (B, T, V-1)
        cfg = model.config
        cache = KVCache.static(cfg.n_layer, 3, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.n_positions)
        step = _step_fn(model)
        torch.testing.assert_close(step(seq[:, :prefill], cache), full[:, prefill - 1], atol=1e-5, rtol=1e-5)
        for pos in range(prefill, cfg.n_positions):
            torch.testing.assert_close(step(seq[:, pos : pos + 1], cache), full[:, pos], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_fixed_shape_steps_equal_full_forward(attn):
    """The CUDA-graph mode (cache written at a tensor position, attention over the whole masked buffer)."""
    model = randomize_(ImageGPTForCausalImageModeling(_config()).eval())
    model.transformer.attn_implementation = attn
    seq = prompt(model, 2, 30)
    cfg = model.config
    with torch.inference_mode():
        full = model(seq).logits
        cache = KVCache.static(cfg.n_layer, 2, cfg.n_head, cfg.n_embd // cfg.n_head, 40)
        step = _step_fn(model)
        step(seq[:, :5], cache)
        cache.position = torch.zeros(1, dtype=torch.long)
        for pos in range(5, 30):
            cache.position.fill_(pos)
            torch.testing.assert_close(step(seq[:, pos : pos + 1], cache), full[:, pos], atol=1e-5, rtol=1e-5)


def _config(**overrides):
    from conftest import tiny_config

    return tiny_config(**overrides)


def test_seeded_runs_reproduce_and_seeds_differ():
    model = randomize_(ImageGPTForCausalImageModeling(_config()).eval())
    ids = prompt(model, 4, 2)
    a = generate(model, ids, max_new_tokens=40, do_sample=True, seed=7)
    b = generate(model, ids, max_new_tokens=40, do_sample=True, generator=make_generator(7, "cpu"))
    c = generate(model, ids, max_new_tokens=40, do_sample=True, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 3, None), (0.7, None, 0.5), (1.3, 5, 0.8), (1.0, 1, None)])
def test_filtered_sampling_never_emits_excluded_tokens(temperature, top_k, top_p):
    model = randomize_(ImageGPTForCausalImageModeling(_config()).eval())
    ids = prompt(model, 6, 1)
    out = generate(model, ids, max_length=model.config.n_positions + 1, do_sample=True, temperature=temperature,
                   top_k=top_k, top_p=top_p, seed=0)  # fmt: skip
    with torch.inference_mode():
        logits = model(out[:, :-1]).logits  # (B, T, V-1): the distribution each token was drawn from
    allowed = filter_logits(logits.flatten(0, 1), temperature, top_k, top_p).isfinite().view(logits.shape)
    drawn = out[:, 1:]
    assert allowed.gather(-1, drawn[..., None]).all()
    assert (drawn < model.config.vocab_size - 1).all()  # never the start token
    if top_k == 1:
        assert torch.equal(out, generate(model, ids, max_length=model.config.n_positions + 1))


def test_filters_match_transformers_warpers(transformers):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(8, 50) * 3
    logits[0, :5] = 2.0  # ties at the top-k boundary
    for t, k, p in [(1.0, 4, None), (0.5, None, 0.9), (2.0, 10, 0.3), (1.0, None, 0.999)]:
        expected = TemperatureLogitsWarper(t)(None, logits.clone())
        if k is not None:
            expected = TopKLogitsWarper(k)(None, expected)
        if p is not None:
            expected = TopPLogitsWarper(p)(None, expected)
        got = filter_logits(logits, t, k, p)
        assert torch.equal(got.isinf(), expected.isinf())
        torch.testing.assert_close(got[got.isfinite()], expected[expected.isfinite()])


def test_gumbel_draws_follow_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]]).repeat(20000, 1)
    g = make_generator(0, "cpu")
    counts = torch.bincount(choose_tokens(logits, generator=g), minlength=5).float() / 20000
    torch.testing.assert_close(counts, logits[0].softmax(-1), atol=0.012, rtol=0)


def test_bad_prompts_and_settings_are_clear_errors():
    model = ImageGPTForCausalImageModeling(_config()).eval()
    n = model.config.n_positions
    start = model.config.vocab_size - 1
    with pytest.raises(ValueError, match="n_positions"):
        generate(model, torch.full((1, n + 1), start), max_new_tokens=1)
    with pytest.raises(ValueError, match="at most 1 new"):
        generate(model, torch.full((1, n), start), max_new_tokens=2)
    assert generate(model, torch.full((1, n), start), max_new_tokens=1).shape == (1, n + 1)
    with pytest.raises(ValueError, match=r"must lie in \[0, 17\)"):
        generate(model, torch.tensor([[start, 17]]), max_new_tokens=1)
    with pytest.raises(TypeError, match="integer"):
        generate(model, torch.zeros(1, 2), max_new_tokens=1)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="padded"):
        generate(model, torch.tensor([[start, 3]]), attention_mask=torch.tensor([[0, 1]]))
    with pytest.raises(TypeError, match="num_beams"):
        generate(model, num_beams=4)
    assert generate(model).shape == (1, 21)  # transformers' default: 20 new tokens
    assert list(iter_tokens(model, torch.tensor([[start]]), 0)) == []


def test_repeated_prompts_share_their_cache_and_give_the_same_tokens(transformers, tmp_path):
    """Prompts repeated in runs (several samples each) decode on one copy of each prompt's cache; greedy tokens
    stay transformers' and sampled ones those of the unshared cache."""
    hf, ours = pair(transformers, tmp_path)
    ids = prompt(ours, 3, 9).repeat_interleave(4, dim=0)  # 3 prompts x 4 samples
    total = ours.config.n_positions + 1
    expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_length=total, do_sample=False)
    assert torch.equal(ours.generate(ids, max_length=total), expected)
    sampled = [torch.stack(list(iter_tokens(ours, ids, 40, generator=make_generator(1, "cpu"), share_prompts=share)),
                           dim=1) for share in (True, False)]  # fmt: skip
    assert torch.equal(sampled[0], sampled[1])


def test_shared_cache_is_used_for_repeated_prompts_only(monkeypatch):
    from imagegpt.kv_cache import SharedPrefixKVCache

    calls = []
    attend = SharedPrefixKVCache.attend
    monkeypatch.setattr(SharedPrefixKVCache, "attend", lambda self, *a: calls.append(1) or attend(self, *a))
    model = ImageGPTForCausalImageModeling(ImageGPTConfig(**TINY)).eval()
    list(iter_tokens(model, prompt(model, 2, 5), 4))  # two different prompts: nothing to share
    assert calls == []
    list(iter_tokens(model, prompt(model, 2, 5).repeat_interleave(3, dim=0), 4))
    assert len(calls) == 3 * model.config.n_layer  # the three decode steps after the prefill


def test_prompt_groups_are_consecutive_runs_of_equal_length():
    from imagegpt.sampling import prompt_group

    a, b = torch.tensor([[5, 1, 2]]), torch.tensor([[5, 3, 3]])
    assert prompt_group(torch.cat([a, a, b, b])) == 2
    assert prompt_group(torch.cat([a, a, a])) == 3
    assert prompt_group(torch.cat([a, b, a, b])) == 1  # not consecutive
    assert prompt_group(torch.cat([a, a, b])) == 1  # runs of unequal length
    assert prompt_group(a) == 1


def test_decode_threads_are_scoped_to_the_steps_and_restored():
    """Small models decode on one thread; the caller's setting holds between tokens and after the loop."""
    from imagegpt.cpu_decode import decode_threads

    model = ImageGPTForCausalImageModeling(ImageGPTConfig(**TINY)).eval()
    before = torch.get_num_threads()
    assert decode_threads(model) == 1
    seen = []
    original = model.transformer.decode

    def spy(ids, cache):
        seen.append(torch.get_num_threads())
        return original(ids, cache)

    model.transformer.decode = spy
    try:
        for _ in iter_tokens(model, prompt(model, 2, 3), 5):
            assert torch.get_num_threads() == before
        assert seen == [1] * 5
        seen.clear()
        list(iter_tokens(model, prompt(model, 2, 3), 3, num_threads=2))
        assert seen == [2] * 3
    finally:
        del model.transformer.decode
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="num_threads"):
        list(iter_tokens(model, prompt(model, 1, 1), 2, num_threads=0))
