"""transformers' weight layout: its state dict differs from ours only in the four GPT-2 ``Conv1D`` projections,
stored (in, out) where our ``nn.Linear`` holds (out, in); old checkpoints also carry causal-mask buffers."""

from __future__ import annotations

import re

import torch

__all__ = ["CONV1D_WEIGHT", "IGNORED", "to_hf_state_dict", "from_hf_state_dict"]

# transformers' Conv1D layers (weight (in, out)); ours are nn.Linear (out, in).
CONV1D_WEIGHT = re.compile(r"(^|\.)(c_attn|c_proj|c_fc|q_attn)\.weight$")
# Causal-mask buffers that old GPT-2-style checkpoints carry; not weights.
IGNORED = re.compile(r"(^|\.)(attn|crossattention)\.(bias|masked_bias)$")


def to_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> transformers' (Conv1D weights transposed), contiguous, ready for safetensors."""
    return {k: (v.t() if CONV1D_WEIGHT.search(k) else v).contiguous() for k, v in state_dict.items()}


def from_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' state dict -> ours. Drops mask buffers; transposes Conv1D weights."""
    out = {}
    for k, v in state_dict.items():
        if IGNORED.search(k):
            continue
        out[k] = v.t().contiguous() if CONV1D_WEIGHT.search(k) and v.dim() == 2 else v
    return out
