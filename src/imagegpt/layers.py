"""Building blocks shared by the model and checkpoint code: the ImageGPT layer norm and transformers' weight init."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ImageGPTLayerNorm", "init_module_weights"]


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
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if name.endswith("c_proj"):
                nn.init.normal_(m.weight, mean=0.0, std=std / math.sqrt(2 * config.n_layer))
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, ImageGPTLayerNorm):
            nn.init.ones_(m.weight)
