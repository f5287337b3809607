"""Likelihood metrics: nats per token and bits per token of images under a causal model."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = ["nll_per_sequence", "nats_to_bits"]


def nats_to_bits(nats: float | torch.Tensor) -> float | torch.Tensor:
    return nats / math.log(2.0)


@torch.no_grad()
def nll_per_sequence(
    model: torch.nn.Module, input_ids: torch.Tensor, batch_size: int = 16, progress: bool = False
) -> torch.Tensor:
    """Mean negative log-likelihood (nats per pixel token) of each sequence, shape (N,).

    ``input_ids`` (N, 1 + H*W) must begin with the start token; every pixel after it is scored (the model's
    logits at position t predict token t + 1), as in the iGPT paper.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be (N, 1 + pixels) with a leading start token, got {tuple(input_ids.shape)}")
    start = model.config.vocab_size - 1
    if not bool((input_ids[:, 0] == start).all()):
        first = int(input_ids[0, 0])
        if bool((input_ids[:, 0] == first).all()) and 0 < first < start and int(input_ids[:, 1:].max()) < first:
            raise ValueError(f"the images were quantized with a {first}-color palette but the model predicts "
                             f"{start} colors (its start token is {start}, theirs {first}): use the model's own "
                             "palette (its preprocessor_config.json)")  # fmt: skip
        raise ValueError(f"every sequence must begin with the start token {start} (add_start_token=True)")
    device = next(model.parameters()).device
    out = []
    for i in tqdm(range(0, len(input_ids), batch_size), desc="scoring", unit="batch", disable=not progress):
        ids = input_ids[i : i + batch_size].to(device)
        # the last pixel is only a target: the input [start, p0 .. p(HW-2)] fits n_positions = H*W
        logits = model(ids[:, :-1], use_cache=False).logits.float()  # (B, HW, vocab - 1)
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, HW)
        out.append(nll.mean(dim=1).cpu())
    result = torch.cat(out)
    if not bool(torch.isfinite(result).all()):  # once per call: NaN weights would otherwise print "nan"
        raise ValueError("the model's log-likelihoods are NaN or infinite: its weights hold NaN or infinite values "
                         "(a diverged or corrupt checkpoint); load an earlier checkpoint")  # fmt: skip
    return result
