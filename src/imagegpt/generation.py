"""transformers' ``generate`` for ImageGPT: a faithful subset of ``GenerationMixin`` for a decoder-only model, on
our static KV cache.

Plain greedy decoding (and sampling with our own ``seed``/``generator``) runs on the fast sampler of
:mod:`imagegpt.sampling` (packed CPU weights, CUDA graphs). Everything else runs the loop below (on the sampler's
decode steps and packed weights too when the prompt is unpadded ids and no hidden states are asked for), which follows
transformers step by step: left-padded prompts with ``attention_mask`` (positions from its cumulative sum),
``token_type_ids``, ``inputs_embeds``, repetition penalty, bad words, minimum lengths, end-of-sequence and padding,
user ``logits_processor`` / ``stopping_criteria`` callables, a ``streamer`` (``put``/``end``), sampling with
``torch.multinomial`` on torch's global generator (the same draws as transformers for the same seed and scores),
``return_dict_in_generate`` with scores, logits, attentions and hidden states, and beam search / beam sampling
(:mod:`imagegpt.beam_search`, cache rows reordered in place of transformers' cache).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from imagegpt.beam_search import beam_search
from imagegpt.cpu_decode import decode_weights
from imagegpt.decoding import Inputs, forward_step, new_cache, stop_flags
from imagegpt.generation_config import GenerationConfig
from imagegpt.logits_process import apply_processors, build_processors
from imagegpt.outputs import GenerateDecoderOnlyOutput
from imagegpt.sampling import _step_fn, iter_tokens, make_generator

__all__ = ["generate", "GenerationConfig"]

_MODEL_INPUTS = {"input_ids", "inputs_embeds", "attention_mask", "token_type_ids", "position_ids"}


@torch.no_grad()
def generate(model, inputs: torch.Tensor | None = None, generation_config: GenerationConfig | None = None,
             logits_processor: Sequence[Callable] | None = None, stopping_criteria: Sequence[Callable] | None = None,
             streamer: Any = None, *, generator: torch.Generator | None = None, seed: int | None = None,
             cuda_graph: bool | None = None, cpu_packed: bool | None = None, num_threads: int | None = None,
             share_prompts: bool = True, **kwargs: Any):  # fmt: skip
    """transformers' ``generate`` for ImageGPT: token ids (B * num_return_sequences, T + new), or with
    ``return_dict_in_generate=True`` a :class:`~imagegpt.outputs.GenerateDecoderOnlyOutput` (beams:
    ``GenerateBeamDecoderOnlyOutput``).

    Settings come from ``model.generation_config``, then ``generation_config``, then keyword arguments, with
    transformers' defaults (20 tokens in all, ``top_k`` 50 when sampling). Without a prompt, one sequence starts
    from the start token. Ours: ``generator``/``seed`` seed the draws of the fast sampler (which draws differently
    from transformers' ``torch.multinomial``); ``cuda_graph``, ``cpu_packed``, ``num_threads``, ``share_prompts`` (the
    fast sampler's options): see :func:`imagegpt.sampling.iter_tokens`.
    """
    config = (generation_config or getattr(model, "generation_config", None) or GenerationConfig()).copy()
    if generation_config is not None and getattr(model, "generation_config", None) is not None:
        base = model.generation_config.copy()  # the model's settings, overridden by the ones given
        base.update(**{k: v for k, v in generation_config.to_dict().items() if not k.startswith("_")})
        config = base
    model_kwargs = config.update(**kwargs)
    config.validate()
    s = config.resolved()
    unknown = set(model_kwargs) - _MODEL_INPUTS - {"past_key_values"}
    if unknown:
        raise TypeError(f"generate() got unsupported argument(s): {', '.join(sorted(unknown))}")
    if model_kwargs.get("past_key_values") is not None:
        raise ValueError("generate() starts from a prompt, not from past_key_values; pass the whole prompt")
    device = model.get_input_embeddings().weight.device
    ids = inputs if inputs is not None else model_kwargs.get("input_ids")
    embeds = model_kwargs.get("inputs_embeds")
    if ids is None:
        batch = 1 if embeds is None else embeds.shape[0]
        start = model.config.vocab_size - 1
        ids = (torch.full((batch, 1), start) if embeds is None else torch.zeros((batch, 0))).long()
    ids = _check_ids(ids, model.config.vocab_size).to(device)
    eos = s["eos_token_id"]
    eos = None if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    pad = s["pad_token_id"] if s["pad_token_id"] is not None else (eos[0] if eos else None)
    mask = model_kwargs.get("attention_mask")
    if mask is None and pad is not None and ids.numel() and bool((ids == pad).any()) and pad not in (eos or []):
        mask = (ids != pad).long()  # transformers infers the padding from pad_token_id
    prompt_length = embeds.shape[1] if embeds is not None and ids.shape[1] == 0 else ids.shape[1]
    if s["max_new_tokens"] is not None:
        new = s["max_new_tokens"]
    elif config.max_length is None:  # transformers: 20 new tokens by default, within n_positions
        new = min(s["max_length"] + ids.shape[1], model.config.n_positions) - ids.shape[1]
    else:  # max_length counts the prompt (embeddings included)
        new = s["max_length"] - prompt_length
    if new <= 0:
        raise ValueError(f"nothing to generate: the prompt has {ids.shape[1]} tokens and max_length is "
                         f"{s['max_length']}; set max_new_tokens")  # fmt: skip
    if prompt_length + new - 1 > model.config.n_positions:
        raise ValueError(f"{prompt_length} prompt positions + {new} new tokens need {prompt_length + new - 1} "
                         f"positions; the model has n_positions={model.config.n_positions}")  # fmt: skip
    if s["num_beams"] == 1 and not s["do_sample"] and s["num_return_sequences"] > 1:
        raise ValueError("greedy decoding returns one sequence per prompt: num_return_sequences > 1 needs "
                         "do_sample=True or num_beams > 1")  # fmt: skip
    if mask is not None:
        mask = mask.to(device)
        if mask.shape != (ids.shape[0], prompt_length):
            raise ValueError(f"attention_mask must be (batch, prompt length) = {(ids.shape[0], prompt_length)}, "
                             f"got {tuple(mask.shape)}")  # fmt: skip
    plain = (s["num_beams"] == 1 and not logits_processor and not stopping_criteria and not eos
             and s["repetition_penalty"] == 1.0 and s["bad_words_ids"] is None and not s["remove_invalid_values"]
             and not s["renormalize_logits"] and not s["return_dict_in_generate"] and s["use_cache"]
             and embeds is None and model_kwargs.get("token_type_ids") is None
             and model_kwargs.get("position_ids") is None and (mask is None or bool((mask == 1).all()))
             and (not s["do_sample"] or generator is not None or seed is not None))  # fmt: skip
    if plain:
        options = dict(cuda_graph=cuda_graph, cpu_packed=cpu_packed, num_threads=num_threads,
                       share_prompts=share_prompts)
        return _fast(model, ids, new, s, streamer, generator or make_generator(seed, device), options)
    run = Inputs(ids, None if embeds is None else embeds.to(device), mask,
                 _opt(model_kwargs.get("token_type_ids"), device), _opt(model_kwargs.get("position_ids"), device))
    processors = build_processors(s, ids.shape[1], mask, eos, logits_processor or ())
    criteria = list(stopping_criteria or ())
    if s["num_beams"] > 1:
        if streamer is not None:
            raise ValueError("streamer cannot be used with beam search (as in transformers)")
        return beam_search(model, run.expand(s["num_beams"]), new, s, processors, criteria, eos, pad, generator)
    run = run.expand(s["num_return_sequences"])
    # unpadded prompts of ids, nothing but scores recorded: the sampler's decode steps (and packed CPU weights)
    quick = (s["use_cache"] and run.embeds is None and run.token_types is None and model_kwargs.get("position_ids") is
             None and (run.mask is None or bool((run.mask == 1).all())) and not s["output_hidden_states"]
             and not s["output_attentions"])  # fmt: skip
    with decode_weights(model, run.ids.shape[0], cpu_packed) if quick else contextlib.nullcontext():
        return _sample(model, run, new, s, processors, criteria, eos, pad, streamer, generator, quick)


def _sample(model, run: Inputs, new: int, s: dict, processors, criteria, eos, pad, streamer, generator,
            quick: bool = False):  # fmt: skip
    """transformers' ``_sample`` loop (greedy when ``do_sample`` is False). ``quick``: run each step through the
    sampler's decode path (:func:`imagegpt.sampling._step_fn`: no per-step checks, LM head on the last position)."""
    decode = _step_fn(model) if quick else None
    batch = run.ids.shape[0]
    cache = new_cache(model, batch, run.positions.shape[1] + new - 1) if s["use_cache"] else None
    record = s["return_dict_in_generate"]
    scores, logits_seen, attentions, hidden = [], [], [], []
    unfinished = torch.ones(batch, dtype=torch.bool, device=run.ids.device)
    if streamer is not None:
        streamer.put(run.ids.cpu())
    for step in range(new):
        if decode is not None:
            logits = decode(run.ids if step == 0 else run.ids[:, -1:], cache).to(copy=True, dtype=torch.float32)
        else:
            out = forward_step(model, run, cache, step == 0, s)
            logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)  # (B, V)
        next_scores = apply_processors(processors, run.ids, logits)
        if record:
            scores.append(next_scores)
            logits_seen.append(logits)
            if decode is None:
                attentions.append(out.attentions)
                hidden.append(out.hidden_states)
        if s["do_sample"]:
            tokens = torch.multinomial(next_scores.softmax(dim=-1), 1, generator=generator).squeeze(1)
        else:
            tokens = next_scores.argmax(dim=-1)
        if eos:
            tokens = torch.where(unfinished, tokens, torch.full_like(tokens, pad))
        run.append(tokens)
        if streamer is not None:
            streamer.put(tokens.cpu())
        done = stop_flags(criteria, run.ids, tuple(scores) if record and s["output_scores"] else None)
        if eos:
            done |= torch.isin(tokens, torch.tensor(eos, device=tokens.device))
        unfinished &= ~done
        if not bool(unfinished.any()):
            break
    if streamer is not None:
        streamer.end()
    if not record:
        return run.ids
    return GenerateDecoderOnlyOutput(
        sequences=run.ids,
        scores=tuple(scores) if s["output_scores"] else None,
        logits=tuple(logits_seen) if s["output_logits"] else None,
        attentions=tuple(attentions) if s["output_attentions"] else None,
        hidden_states=tuple(hidden) if s["output_hidden_states"] else None,
        past_key_values=cache,
    )


def _fast(model, ids, new, s, streamer, generator, options: dict[str, Any]) -> torch.Tensor:
    """The static-cache sampler of :mod:`imagegpt.sampling` (greedy, or Gumbel-max draws from ``generator``)."""
    if s["num_return_sequences"] > 1:
        ids = ids.repeat_interleave(s["num_return_sequences"], dim=0)
    if streamer is not None:
        streamer.put(ids.cpu())
    steps = iter_tokens(model, ids, new, do_sample=s["do_sample"], temperature=s["temperature"],
                        top_k=s["top_k"] or None, top_p=s["top_p"], generator=generator, **options)  # fmt: skip
    tokens = []
    for token in steps:
        tokens.append(token)
        if streamer is not None:
            streamer.put(token.cpu())
    if streamer is not None:
        streamer.end()
    return torch.cat([ids, torch.stack(tokens, dim=1)], dim=1)


def _opt(t: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def _check_ids(ids: Any, vocab_size: int) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"input_ids must be an integer tensor, got {getattr(ids, 'dtype', type(ids))}")
    ids = ids[None] if ids.dim() == 1 else ids
    if ids.dim() != 2 or ids.shape[0] == 0:
        raise ValueError(f"input_ids must be a (batch, seq) tensor, got shape {tuple(ids.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"input_ids must lie in [0, {vocab_size}) (colors 0..{vocab_size - 2}, start token "
                         f"{vocab_size - 1}), got values in [{int(ids.min())}, {int(ids.max())}]")  # fmt: skip
    return ids.long()
