"""Building blocks shared by the model and checkpoint code: GPT-2's Conv1D projection, the ImageGPT layer norm and
transformers' weight init."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Conv1D", "ImageGPTLayerNorm", "init_module_weights"]


class Conv1D(nn.Module):
    """GPT-2's projection as transformers stores it: a linear layer whose ``weight`` is (in_features,
    out_features), the transpose of ``nn.Linear``'s, so that state dicts load into transformers' model as they are.
    ``forward(x) = x @ weight + bias`` over the last dimension of ``x``."""

    def __init__(self, out_features: int, in_features: int) -> None:  # transformers' argument order (nf, nx)
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, self.in_features), self.weight)  # (rows, out)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class ImageGPTLayerNorm(nn.Module):
    """RMS-style norm without centering or bias: ``x / sqrt(mean(x^2) + eps) * weight``."""

    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm is the same formula in one fused kernel (torch >= 2.4)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def init_module_weights(module: nn.Module, config, name: str = "") -> None:
    """transformers' scheme: normal(0, initializer_range) for linears and embeddings, zero biases, unit norms;
    every ``c_proj`` weight is then scaled down to std initializer_range / sqrt(2 * n_layer) (GPT-2)."""
    std = config.initializer_range
    for name, m in module.named_modules(prefix=name):
        if isinstance(m, (Conv1D, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if name.endswith("c_proj"):
                nn.init.normal_(m.weight, mean=0.0, std=std / math.sqrt(2 * config.n_layer))
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, ImageGPTLayerNorm):
            nn.init.ones_(m.weight)
