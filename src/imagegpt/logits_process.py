"""The logits processors ``generate`` builds from its settings, each a callable ``(input_ids, scores) -> scores``
with transformers' signature and arithmetic (input_ids (B, T) so far, scores (B, V) float32).

:func:`build_processors` returns them in transformers' order; user-given ``logits_processor`` callables run after
them, as transformers appends custom processors to its own list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["build_processors", "apply_processors", "LogitsProcessor"]

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def apply_processors(processors: Sequence[LogitsProcessor], input_ids: torch.Tensor, scores: torch.Tensor,
                     **kwargs: Any) -> torch.Tensor:  # fmt: skip
    for processor in processors:
        scores = processor(input_ids, scores, **kwargs) if kwargs else processor(input_ids, scores)
    return scores


class RepetitionPenalty:
    """Divide positive (multiply negative) scores of tokens already in the sequence by ``penalty``; the first
    ``prompt_ignore_length[b]`` positions (left padding) do not count."""

    def __init__(self, penalty: float, prompt_ignore_length: torch.Tensor | None = None) -> None:
        self.penalty, self.prompt_ignore_length = float(penalty), prompt_ignore_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        if self.prompt_ignore_length is not None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            ignore = positions[None, :] < self.prompt_ignore_length.to(input_ids.device)[:, None]
            input_ids = input_ids.masked_fill(ignore, vocab)
        # ids the head cannot produce (the start token) go to one extra column, dropped afterwards
        input_ids = input_ids.clamp(max=vocab)
        padded = torch.nn.functional.pad(scores, (0, 1))
        score = torch.gather(padded, 1, input_ids)
        score = torch.where(score < 0, score * self.penalty, score / self.penalty)
        return padded.scatter(1, input_ids, score)[..., :vocab]


class NoBadWords:
    """Forbid each sequence of ``bad_words_ids``: its last token is banned where the tokens before it end the
    sequence so far (a one-token entry is always banned). Entries equal to ``[eos]`` are dropped, as transformers."""

    def __init__(self, bad_words_ids: list[list[int]], eos_token_id: list[int] | None = None) -> None:
        if not isinstance(bad_words_ids, list) or not all(isinstance(w, list) and w for w in bad_words_ids):
            raise ValueError(f"bad_words_ids must be a list of non-empty lists of token ids, got {bad_words_ids!r}")
        eos = [[e] for e in (eos_token_id or [])]
        self.words = [w for w in bad_words_ids if w not in eos]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        banned = torch.zeros_like(scores, dtype=torch.bool)
        for word in self.words:
            *prefix, last = word
            if last >= scores.shape[-1]:
                continue
            if not prefix:
                banned[:, last] = True
            elif len(prefix) <= input_ids.shape[1]:
                tail = torch.tensor(prefix, device=input_ids.device)
                banned[:, last] |= (input_ids[:, -len(prefix):] == tail).all(dim=1)
        return scores.masked_fill(banned, -float("inf"))


class MinLength:
    """Ban the end-of-sequence tokens while the sequence is shorter than ``min_length`` (counting from
    ``start``: the prompt length for transformers' ``min_new_tokens``)."""

    def __init__(self, min_length: int, eos_token_id: list[int], start: int = 0) -> None:
        self.min_length, self.eos, self.start = min_length, list(eos_token_id), start

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] - self.start < self.min_length:
            eos = [e for e in self.eos if e < scores.shape[-1]]
            scores = scores.clone()
            scores[:, eos] = -float("inf")
        return scores


def remove_invalid_values(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """NaN -> 0 and +-inf -> the dtype's largest/smallest value (transformers' InfNanRemoveLogitsProcessor)."""
    scores = torch.where(scores != scores, 0.0, scores)
    info = torch.finfo(scores.dtype)
    return torch.where(scores == float("inf"), info.max, torch.where(scores == -float("inf"), info.min, scores))


class Temperature:
    def __init__(self, temperature: float) -> None:
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TopK:
    """Keep the ``top_k`` largest scores (ties with the k-th kept), at least ``min_tokens_to_keep``."""

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1) -> None:
        self.top_k = max(int(top_k), min_tokens_to_keep)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.top_k, scores.shape[-1])
        kth = torch.topk(scores, k)[0][..., -1, None]
        return scores.masked_fill(scores < kth, -float("inf"))


class TopP:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p`` (at least
    ``min_tokens_to_keep``)."""

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1) -> None:
        self.top_p, self.min_tokens_to_keep = float(top_p), min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sorted_logits, order = torch.sort(scores, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum <= 1 - self.top_p
        drop[..., -self.min_tokens_to_keep:] = False
        return scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))


def log_softmax(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """transformers' LogitNormalization (``renormalize_logits=True``)."""
    return scores.log_softmax(dim=-1)


def build_processors(s: dict[str, Any], prompt_length: int, attention_mask: torch.Tensor | None,
                     eos: list[int] | None, custom: Sequence[LogitsProcessor] = ()) -> list:  # fmt: skip
    """transformers' default list for the resolved settings ``s``, in its order, then the ``custom`` callables."""
    out: list[LogitsProcessor] = []
    if s["repetition_penalty"] is not None and s["repetition_penalty"] != 1.0:
        ignore = (attention_mask != 0).int().argmax(dim=1) if attention_mask is not None else None
        out.append(RepetitionPenalty(s["repetition_penalty"], ignore))
    if s["bad_words_ids"] is not None:
        out.append(NoBadWords(s["bad_words_ids"], eos))
    if eos and s["min_length"] is not None and s["min_length"] > 0:
        out.append(MinLength(s["min_length"], eos))
    if eos and s["min_new_tokens"] is not None and s["min_new_tokens"] > 0:
        out.append(MinLength(s["min_new_tokens"], eos, start=prompt_length))
    if s["remove_invalid_values"]:
        out.append(remove_invalid_values)
    if s["do_sample"]:
        keep = (len(eos) + 1 if eos else 2) if s["num_beams"] > 1 else 1  # beams keep a continuation besides eos
        if s["temperature"] is not None and s["temperature"] != 1.0:
            out.append(Temperature(s["temperature"]))
        if s["top_k"] is not None and s["top_k"] != 0:
            out.append(TopK(s["top_k"], keep))
        if s["top_p"] is not None and s["top_p"] < 1.0:
            out.append(TopP(s["top_p"], keep))
    if s["renormalize_logits"]:
        out.append(log_softmax)
    return out + list(custom)
