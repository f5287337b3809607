"""generate() as transformers' GenerationMixin: ours vs transformers on the same weights, one feature per test."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY, randomize_, tiny_config
from imagegpt import GenerationConfig, ImageGPTForCausalImageModeling, ImageGPTForImageClassification


@pytest.fixture
def pair(transformers, tmp_path):
    cfg = transformers.ImageGPTConfig(**{**TINY, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    hf = randomize_(transformers.ImageGPTForCausalImageModeling(cfg).eval(), seed=3)
    hf.save_pretrained(tmp_path)
    return hf, ImageGPTForCausalImageModeling.from_pretrained(tmp_path).eval()


def prompt(batch=3, length=5, seed=0):
    ids = torch.randint(0, 16, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = 16  # the start token
    return ids


def both(pair, seed=0, **kwargs):
    """generate on both models with the same torch seed; returns (theirs, ours)."""
    hf, ours = pair
    torch.manual_seed(seed)
    theirs = hf.generate(**kwargs)
    torch.manual_seed(seed)
    return theirs, ours.generate(**kwargs)


def same_ids(a, b):
    a, b = (x.sequences if hasattr(x, "sequences") else x for x in (a, b))
    assert a.shape == b.shape and torch.equal(a, b), (a, b)


def test_greedy_default_length_and_ids(pair):
    ids = prompt()
    same_ids(*both(pair, input_ids=ids, attention_mask=torch.ones_like(ids)))  # 20 new tokens by default


def test_left_padded_prompts_with_attention_mask(pair):
    ids, mask = prompt(), torch.ones(3, 5, dtype=torch.long)
    mask[0, :2] = 0
    mask[1, :1] = 0
    ids[0, :2] = 0
    same_ids(*both(pair, input_ids=ids, attention_mask=mask, max_new_tokens=12))


def test_pad_token_id_infers_the_mask(pair):
    ids = prompt()
    ids[0, :2] = 3
    same_ids(*both(pair, input_ids=ids, pad_token_id=3, max_new_tokens=8))


@pytest.mark.parametrize("kwargs", [
    dict(do_sample=True),
    dict(do_sample=True, top_k=4, top_p=0.8, temperature=0.7),
    dict(do_sample=True, num_return_sequences=2),
], ids=["default", "warpers", "return-sequences"])  # fmt: skip
def test_sampling_draws_as_transformers_for_a_seed(pair, kwargs):
    ids = prompt()
    same_ids(*both(pair, seed=5, input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=15, **kwargs))


def test_repetition_penalty_and_bad_words(pair):
    ids = prompt()
    kwargs = dict(repetition_penalty=1.7, bad_words_ids=[[3], [1, 0], [5, 6, 7]], max_new_tokens=15)
    same_ids(*both(pair, input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs))


def test_eos_pad_and_min_new_tokens(pair):
    hf, ours = pair
    ids = prompt()
    plain = ours.generate(ids, max_new_tokens=10)
    eos = int(plain[0, 7])  # a token the model does produce
    for extra in ({}, {"min_new_tokens": 6}):
        theirs, got = both(pair, input_ids=ids, attention_mask=torch.ones_like(ids), eos_token_id=eos,
                           pad_token_id=0, max_new_tokens=10, **extra)  # fmt: skip
        same_ids(theirs, got)


@pytest.mark.parametrize("kwargs", [
    dict(num_beams=3),
    dict(num_beams=3, num_return_sequences=2, length_penalty=0.5),
    dict(num_beams=2, do_sample=True, top_k=5),
], ids=["beam-search", "return-sequences", "beam-sample"])  # fmt: skip
def test_beam_search_and_beam_sampling(pair, kwargs):
    ids = prompt(batch=2)
    out = both(pair, seed=2, input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
               return_dict_in_generate=True, output_scores=True, **kwargs)  # fmt: skip
    same_ids(*out)
    theirs, ours = out
    torch.testing.assert_close(ours.sequences_scores, theirs.sequences_scores, atol=1e-4, rtol=1e-4)
    assert torch.equal(ours.beam_indices, theirs.beam_indices)
    assert len(ours.scores) == len(theirs.scores)


def test_beam_search_with_padding_and_eos(pair):
    ids, mask = prompt(batch=2), torch.ones(2, 5, dtype=torch.long)
    mask[1, :2] = 0
    plain = pair[1].generate(ids, max_new_tokens=6)
    same_ids(*both(pair, input_ids=ids, attention_mask=mask, num_beams=3, max_new_tokens=6,
                   eos_token_id=int(plain[0, 7]), pad_token_id=0))  # fmt: skip


@pytest.mark.parametrize("use_cache", [True, False])
def test_dict_output_scores_logits_hidden_states(pair, use_cache):
    ids = prompt()
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, return_dict_in_generate=True,
                  output_scores=True, output_logits=True, output_hidden_states=True, output_attentions=True,
                  use_cache=use_cache, repetition_penalty=1.3)  # fmt: skip
    theirs, ours = both(pair, **kwargs)
    same_ids(theirs, ours)
    assert type(ours).__name__ == type(theirs).__name__ == "GenerateDecoderOnlyOutput"
    assert list(ours.keys()) == [k for k in theirs.keys()]
    for name in ("scores", "logits"):
        for a, b in zip(getattr(theirs, name), getattr(ours, name)):
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    for name in ("hidden_states", "attentions"):
        a, b = getattr(theirs, name), getattr(ours, name)
        assert [[t.shape for t in step] for step in a] == [[t.shape for t in step] for step in b]
        torch.testing.assert_close(b[-1][-1], a[-1][-1], atol=1e-4, rtol=1e-4)


def test_logits_processor_and_stopping_criteria_callables(pair):
    ids = prompt()

    def no_two(input_ids, scores):  # transformers' signature
        scores = scores.clone()
        scores[:, 2] = -float("inf")
        return scores

    def stop_at_9(input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 9, dtype=torch.bool)

    theirs, ours = both(pair, input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10,
                        logits_processor=[no_two], stopping_criteria=[stop_at_9])  # fmt: skip
    same_ids(theirs, ours)
    assert ours.shape[1] == 9 and not (ours[:, 5:] == 2).any()


def test_streamer_receives_what_transformers_sends(pair):
    class Recorder:
        def __init__(self):
            self.calls = []

        def put(self, value):
            self.calls.append(value.clone())

        def end(self):
            self.calls.append("end")

    ids = prompt(batch=1)
    records = []
    for model in pair:
        for kwargs in ({}, {"repetition_penalty": 1.2}):  # the fast path and the general loop
            rec = Recorder()
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, streamer=rec, **kwargs)
            records.append(rec.calls)
    for theirs, ours in ((records[0], records[2]), (records[1], records[3])):
        assert len(ours) == len(theirs) == 7 and ours[-1] == theirs[-1] == "end"  # prompt, 5 tokens, end
        for a, b in zip(theirs[:-1], ours[:-1]):
            assert torch.equal(a, b)


def test_token_type_ids_and_inputs_embeds(pair):
    hf, ours = pair
    ids = prompt()
    types = torch.randint(0, 16, ids.shape, generator=torch.Generator().manual_seed(1))
    same_ids(*both(pair, input_ids=ids, token_type_ids=types, max_new_tokens=6))
    embeds = ours.get_input_embeddings()(ids)
    same_ids(*both(pair, inputs_embeds=embeds, max_new_tokens=6))  # only the new tokens come back
    same_ids(*both(pair, input_ids=ids, inputs_embeds=embeds, max_new_tokens=6))


def test_generation_config_object_saved_and_loaded(transformers, pair, tmp_path):
    hf, ours = pair
    assert ours.can_generate() and not ImageGPTForImageClassification.can_generate()
    theirs = {k: v for k, v in hf.generation_config.to_dict().items() if v is not None and k != "transformers_version"}
    assert ours.generation_config.to_dict() == theirs
    ours.generation_config.top_k = 7
    ours.save_pretrained(tmp_path / "ours")
    data = json.loads((tmp_path / "ours" / "generation_config.json").read_text())
    assert data["top_k"] == 7 and data["_from_model_config"] is True
    assert ImageGPTForCausalImageModeling.from_pretrained(tmp_path / "ours").generation_config.top_k == 7
    ids = prompt()
    theirs = hf.generate(ids, generation_config=transformers.GenerationConfig(max_new_tokens=6, num_beams=2))
    same_ids(theirs, ours.generate(ids, generation_config=GenerationConfig(max_new_tokens=6, num_beams=2)))


def test_greedy_rejects_several_return_sequences(pair):
    with pytest.raises(ValueError, match="num_return_sequences"):
        pair[1].generate(prompt(), num_return_sequences=2)
    with pytest.raises(TypeError, match="unsupported argument"):
        pair[1].generate(prompt(), not_an_option=1)


def test_fast_path_options_reach_the_sampler(monkeypatch):
    # generate(..., num_threads=, share_prompts=) are the fast sampler's options (benchmarks/bench_main_job.py's
    # variants use them): the same seeded tokens whatever they are, and a bad value is the sampler's own error
    model = randomize_(ImageGPTForCausalImageModeling(tiny_config()))
    ids = prompt(batch=2).repeat_interleave(2, dim=0)  # repeated prompts: the shared-cache case
    kwargs = dict(do_sample=True, max_new_tokens=6, seed=5)
    default = model.eval().generate(ids, **kwargs)
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n, real=torch.set_num_threads: (seen.append(n), real(n)))
    threads = torch.get_num_threads() + 1  # differs from the current setting, so the sampler has to set it
    assert torch.equal(model.generate(ids, num_threads=threads, share_prompts=False, **kwargs), default)
    assert threads in seen and torch.get_num_threads() == threads - 1  # set for the steps, then restored
    with pytest.raises(ValueError, match="num_threads"):
        model.generate(ids, num_threads=0, **kwargs)
