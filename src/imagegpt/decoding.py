"""The pieces of a transformers-style decoding loop shared by sampling and beam search: the model inputs as they
grow (mask, positions, token types), one model call per step, the static cache, stopping criteria."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from imagegpt.kv_cache import KVCache

__all__ = ["Inputs", "forward_step", "new_cache", "stop_flags"]


class Inputs:
    """The model inputs of a generation run, expanded per returned sequence or beam, advanced one token a step."""

    def __init__(self, ids: torch.Tensor, embeds: torch.Tensor | None, mask: torch.Tensor | None,
                 token_types: torch.Tensor | None, positions: torch.Tensor | None) -> None:  # fmt: skip
        self.ids, self.embeds, self.mask, self.token_types = ids, embeds, mask, token_types
        if positions is None:  # transformers: from the mask's cumulative sum, padding at position 0
            length = embeds.shape[1] if embeds is not None else ids.shape[1]
            if mask is not None:
                positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
            else:
                positions = torch.arange(length, device=ids.device)[None].expand(ids.shape[0], -1)
        self.positions = positions

    def expand(self, n: int) -> "Inputs":
        rep = (lambda t: None if t is None else t.repeat_interleave(n, dim=0))  # noqa: E731
        return Inputs(rep(self.ids), rep(self.embeds), rep(self.mask), rep(self.token_types), rep(self.positions))

    def append(self, tokens: torch.Tensor) -> None:
        """Account for one new token per row (B,): ids, mask (a 1), position (+1), token type (the last one)."""
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones((len(tokens), 1))], dim=1)
        self.positions = torch.cat([self.positions, self.positions[:, -1:] + 1], dim=1)
        if self.token_types is not None:
            self.token_types = torch.cat([self.token_types, self.token_types[:, -1:]], dim=1)

    def reorder(self, rows: torch.Tensor) -> None:
        for name in ("ids", "mask", "positions", "token_types"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name)[rows])


def forward_step(model, inputs: Inputs, cache: KVCache | None, first: bool, s: dict[str, Any]):
    """One model call: the whole prompt first (or, without a cache, the whole sequence every time), else the
    newest token against the cache."""
    use_embeds = first and inputs.embeds is not None
    if cache is None or first:
        take = slice(None)
    else:
        take = slice(-1, None)
    ids = None if use_embeds else inputs.ids[:, take]
    if not use_embeds and inputs.embeds is not None and cache is None:  # no cache: embeddings of prompt + new ids
        embeds = torch.cat([inputs.embeds, model.get_input_embeddings()(inputs.ids)], dim=1)
        ids, use_embeds = None, True
    else:
        embeds = inputs.embeds if use_embeds else None
    return model(input_ids=ids, inputs_embeds=embeds, past_key_values=cache, attention_mask=inputs.mask,
                 position_ids=inputs.positions[:, take], use_cache=cache is not None,
                 token_type_ids=None if inputs.token_types is None else inputs.token_types[:, take],
                 output_attentions=s["output_attentions"], output_hidden_states=s["output_hidden_states"],
                 return_dict=True)  # fmt: skip


def new_cache(model, batch: int, capacity: int) -> KVCache:
    cfg, weight = model.config, model.get_input_embeddings().weight
    return KVCache.static(cfg.n_layer, batch, cfg.n_head, cfg.n_embd // cfg.n_head, max(capacity, 1),
                          dtype=weight.dtype, device=weight.device)  # fmt: skip


def stop_flags(criteria: Sequence[Callable], ids: torch.Tensor, scores: Any) -> torch.Tensor:
    """transformers' StoppingCriteria calls ``(input_ids, scores) -> bool (B,)``, or-ed together."""
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for criterion in criteria:
        result = criterion(ids, scores)
        done = done | torch.as_tensor(result, device=ids.device).bool().expand(ids.shape[0])
    return done
