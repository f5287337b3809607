"""Beam search and beam sampling, as transformers' vectorized ``_beam_search`` (5.x), on our KV cache.

Per step: log-softmax of the last logits, the logits processors, plus each beam's running score; the best
``2 * num_beams`` continuations over all beams (or that many drawn, when sampling) are kept; those that hit a
stopping criterion (end-of-sequence, the length limit, a user criterion) join the finished hypotheses scored by
``sum logprob / generated_length ** length_penalty``; the best ``num_beams`` others continue, and the cache rows are
reordered to follow them (:meth:`KVCache.reorder_cache`).
"""

from __future__ import annotations

import torch

from imagegpt.decoding import Inputs, forward_step, new_cache, stop_flags
from imagegpt.logits_process import apply_processors
from imagegpt.outputs import GenerateBeamDecoderOnlyOutput

__all__ = ["beam_search"]

NEG = -1.0e9


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick along dim 1 (the beams) of t (B, beams, ...) with index (B, k)."""
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


def beam_search(model, run: Inputs, new: int, s: dict, processors, criteria, eos, pad, generator=None):
    """``run`` holds the inputs already repeated ``num_beams`` times (B * num_beams rows)."""
    beams, sample = s["num_beams"], s["do_sample"]
    rows, prompt = run.ids.shape
    batch = rows // beams
    max_length = prompt + new
    length_penalty, early_stopping = s["length_penalty"], s["early_stopping"]
    keep = max(2, 1 + len(eos or [])) * beams
    top_beams = torch.cat([torch.ones(beams, dtype=torch.bool), torch.zeros(keep - beams, dtype=torch.bool)])
    device = run.ids.device
    top_beams = top_beams.to(device)
    fill = pad if pad is not None else (eos[0] if eos else -1)
    running = torch.full((batch, beams, max_length), fill, dtype=torch.long, device=device)
    running[:, :, :prompt] = run.ids.view(batch, beams, prompt)
    finished_seqs = running.clone()
    running_scores = torch.zeros((batch, beams), device=device)
    running_scores[:, 1:] = NEG  # identical beams at first: only one may expand
    finished_scores = torch.full((batch, beams), NEG, device=device)
    is_finished = torch.zeros((batch, beams), dtype=torch.bool, device=device)
    may_improve = torch.ones((batch, 1), dtype=torch.bool, device=device)
    running_idx = torch.full((batch, beams, new), -1, dtype=torch.long, device=device)
    finished_idx = running_idx.clone()
    cache = new_cache(model, rows, prompt + new - 1) if s["use_cache"] else None
    record = s["return_dict_in_generate"]
    scores, logits_seen, attentions, hidden = [], [], [], []
    cur = prompt
    for step in range(new):
        out = forward_step(model, run, cache, step == 0, s)
        logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)  # (B * beams, V)
        log_probs = apply_processors(processors, run.ids, logits.log_softmax(dim=-1))
        if record:
            logits_seen.append(logits.clone())
            scores.append(log_probs.clone())
            attentions.append(out.attentions)
            hidden.append(out.hidden_states)
        vocab = log_probs.shape[-1]
        total = (log_probs.view(batch, beams, vocab) + running_scores[:, :, None]).view(batch, -1)
        if sample:
            top_i = torch.multinomial(total.softmax(dim=-1), keep, generator=generator)
            top_lp = torch.gather(total, 1, top_i)
        else:
            top_lp, top_i = torch.topk(total, keep)
        from_beam = top_i // vocab  # (B, keep)
        cand = _gather(running, from_beam)
        cand[:, :, cur] = top_i % vocab
        cand_idx = _gather(running_idx, from_beam)
        cand_idx[:, :, cur - prompt] = from_beam + torch.arange(batch, device=device)[:, None] * beams
        flat = cand[:, :, : cur + 1].reshape(batch * keep, cur + 1)
        hits = stop_flags(criteria, flat, tuple(scores) if record and s["output_scores"] else None)
        hits |= torch.full_like(hits, cur + 1 >= max_length)
        if eos:
            hits |= torch.isin(flat[:, -1], torch.tensor(eos, device=device))
        hits = hits.view(batch, keep)
        # the best num_beams continuations that did not stop keep running
        cont = top_lp + hits.float() * NEG
        nxt = torch.topk(cont, beams)[1]
        running, running_scores, running_idx = _gather(cand, nxt), _gather(cont, nxt), _gather(cand_idx, nxt)
        # continuations among the top num_beams that stopped become finished hypotheses if good enough
        just_done = hits & top_beams[None, :]
        scored = top_lp / ((cur + 1 - prompt) ** length_penalty)
        full = is_finished.all(dim=-1, keepdim=True) & (early_stopping is True)
        scored = scored + full.float() * NEG + (~may_improve).float() * NEG + (~just_done).float() * NEG
        merged = torch.topk(torch.cat([finished_scores, scored], dim=1), beams)[1]
        finished_seqs = _gather(torch.cat([finished_seqs, cand], dim=1), merged)
        finished_scores = _gather(torch.cat([finished_scores, scored], dim=1), merged)
        finished_idx = _gather(torch.cat([finished_idx, cand_idx], dim=1), merged)
        is_finished = _gather(torch.cat([is_finished, just_done], dim=1), merged)
        order = running_idx[:, :, cur - prompt].reshape(-1)
        cur += 1
        if cache is not None:
            cache.reorder_cache(order)
        run.reorder(order)
        run.append(running[:, :, cur - 1].reshape(-1))
        # stop early when no running beam can beat the worst finished one (transformers' heuristic)
        if early_stopping == "never" and length_penalty > 0.0:
            best_len = max_length - prompt
        else:
            best_len = cur - prompt
        best_running = running_scores[:, :1] / (best_len**length_penalty)
        worst_done = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True)[0], NEG)
        may_improve = may_improve & (best_running > worst_done).any(dim=-1, keepdim=True)
        open_beams = ~(is_finished.all() & (early_stopping is True))
        if not (bool(may_improve.any()) and bool(open_beams) and not bool(hits.all())):
            break
    n = s["num_return_sequences"]
    sequences = finished_seqs[:, :n].reshape(batch * n, -1)
    seq_scores = finished_scores[:, :n].reshape(-1)
    indices = finished_idx[:, :n].reshape(batch * n, -1)
    generated = int((indices + 1).bool().sum(dim=1).max())
    sequences, indices = sequences[:, : prompt + generated], indices[:, :generated]
    if not record:
        return sequences
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences,
        sequences_scores=seq_scores if s["output_scores"] else None,
        scores=tuple(scores) if s["output_scores"] else None,
        logits=tuple(logits_seen) if s["output_logits"] else None,
        beam_indices=indices,
        attentions=tuple(attentions) if s["output_attentions"] else None,
        hidden_states=tuple(hidden) if s["output_hidden_states"] else None,
        past_key_values=cache,
    )
