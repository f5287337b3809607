"""Weight layouts. Ours is transformers': the four GPT-2 ``Conv1D`` projections (c_attn, q_attn, c_proj, c_fc)
hold weight (in, out), so state dicts and files go both ways as they are. Until December 2026 (0.1.0) they were
``nn.Linear`` (weight (out, in)); state dicts and training states saved from such a model in memory are still
read, converted here. Weight files were always written in transformers' layout.

Which layout an old state dict has is decided for the dict as a whole: c_attn is never square ((n_embd,
3 n_embd) against (3 n_embd, n_embd)), so the non-square projections of the dict, compared with the model's own
shapes, tell it: when every one of them has the transposed shape, all projections of the dict are transposed,
the square ones (the attention c_proj, q_attn) included. A dict without any non-square projection (a partial
one), or with some not transposed, is taken as it is (strict loading then reports what does not fit).
Training states carry a ``weight_layout`` entry since the change; one without it is in the old layout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = [
    "CONV1D_WEIGHT",
    "IGNORED",
    "WEIGHT_LAYOUT",
    "to_hf_state_dict",
    "from_hf_state_dict",
    "from_linear_layout",
    "optimizer_state_from_linear_layout",
]

# transformers' Conv1D layers (weight (in, out)), ours too; the old nn.Linear layout held (out, in).
CONV1D_WEIGHT = re.compile(r"(^|\.)(c_attn|c_proj|c_fc|q_attn)\.weight$")
# Causal-mask buffers that old GPT-2-style checkpoints carry; not weights.
IGNORED = re.compile(r"(^|\.)(attn|crossattention)\.(bias|masked_bias)$")
# The value training states record under "weight_layout" (absent: the old nn.Linear layout).
WEIGHT_LAYOUT = "conv1d"


def to_hf_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict as transformers' (the same tensors: the layouts agree), contiguous, ready for safetensors."""
    return {k: v.contiguous() for k, v in state_dict.items()}


def from_hf_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' state dict (a file's or a model's) as ours: the same tensors, without the causal-mask buffers
    of old GPT-2-style checkpoints."""
    return {k: v for k, v in state_dict.items() if not IGNORED.search(k)}


def from_linear_layout(state_dict: Mapping[str, torch.Tensor],
                       expected: Mapping[str, torch.Size]) -> tuple[dict[str, torch.Tensor], bool]:  # fmt: skip
    """``state_dict`` with its projection weights transposed when it is in the old ``nn.Linear`` layout, decided
    against the model's parameter shapes ``expected`` (module docstring); returns (state dict, converted)."""
    state = dict(state_dict)
    linear = other = 0
    for key, value in state.items():
        shape = expected.get(key)
        if shape is None or not CONV1D_WEIGHT.search(key) or value.dim() != 2 or shape[0] == shape[1]:
            continue
        if tuple(value.shape) == tuple(shape)[::-1]:
            linear += 1
        else:  # transformers' layout, or a model of other sizes
            other += 1
    if not linear or other:  # no evidence, or a mix that strict loading will report
        return state, False
    for key, value in state.items():
        if CONV1D_WEIGHT.search(key) and value.dim() == 2:
            state[key] = value.t().contiguous()
    return state, True


def optimizer_state_from_linear_layout(optimizer_state: dict, names: Mapping[int, str]) -> dict:
    """An optimizer state dict (torch's: ``state`` keyed by parameter index) saved for the old ``nn.Linear``
    layout, with the per-parameter tensors of the projection weights (Adam's moments) transposed. ``names`` maps
    the indices to parameter names."""
    state = {}
    for index, entry in optimizer_state["state"].items():
        if CONV1D_WEIGHT.search(names.get(index, "")):
            entry = {k: v.t().contiguous() if torch.is_tensor(v) and v.dim() == 2 else v for k, v in entry.items()}
        state[index] = entry
    return {**optimizer_state, "state": state}
