"""The model-level hooks transformers' ``PreTrainedModel`` offers and that Trainer/PEFT-style code calls:
embeddings access, ``base_model``, gradient checkpointing, input gradients, parameter counts, resizing."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ModelHooksMixin"]


class ModelHooksMixin:
    """Mixed into the three model classes (which set ``config``; task models hold the decoder as ``transformer``)."""

    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ImageGPTBlock"]

    def _base(self):
        return getattr(self, self.base_model_prefix, self)

    @property
    def base_model(self) -> nn.Module:
        """The bare :class:`~imagegpt.ImageGPTModel` (the model itself for ImageGPTModel)."""
        return self._base()

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding ``wte`` (vocab_size, n_embd)."""
        return self._base().wte

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        self._base().wte = embeddings

    def get_output_embeddings(self) -> nn.Module | None:
        """The LM head of the causal model (``None`` for the others, as transformers)."""
        return getattr(self, "lm_head", None)

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        if not hasattr(self, "lm_head"):
            raise AttributeError(f"{type(self).__name__} has no output embeddings (LM head)")
        self.lm_head = new_embeddings

    @classmethod
    def can_generate(cls) -> bool:
        """Whether ``generate`` works: only for the causal image-modeling model."""
        return callable(getattr(cls, "generate", None))

    # --- training ------------------------------------------------------------------------------------------
    def enable_input_require_grads(self) -> None:
        """Make the embeddings' output require grad, so gradient checkpointing with frozen embeddings (adapters)
        still back-propagates into the blocks (transformers' method of this name)."""

        def hook(module, inputs, output):
            output.requires_grad_(True)

        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(hook)

    def disable_input_require_grads(self) -> None:
        handle = getattr(self, "_require_grads_hook", None)
        if handle is not None:
            handle.remove()
            self._require_grads_hook = None

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """Recompute each block's activations in the backward pass (less memory, ~30% more compute).

        As transformers: ``gradient_checkpointing_kwargs`` go to ``torch.utils.checkpoint.checkpoint`` (default
        ``{"use_reentrant": False}``), and input gradients are enabled (:meth:`enable_input_require_grads`) so
        that frozen embeddings (adapters) do not cut the backward pass."""
        base = self._base()
        base.gradient_checkpointing = True
        base.gradient_checkpointing_kwargs = dict(gradient_checkpointing_kwargs or {"use_reentrant": False})
        if getattr(self, "_require_grads_hook", None) is None:
            self.enable_input_require_grads()

    activation_checkpointing_enable = gradient_checkpointing_enable  # transformers' newer name

    def gradient_checkpointing_disable(self) -> None:
        self._base().gradient_checkpointing = False
        self.disable_input_require_grads()

    activation_checkpointing_disable = gradient_checkpointing_disable

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self._base(), "gradient_checkpointing", False))

    # --- sizes and settings ---------------------------------------------------------------------------
    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters, optionally only trainable ones and/or without the embedding tables."""
        skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        return sum(
            p.numel() for p in self.parameters() if id(p) not in skip and (p.requires_grad or not only_trainable)
        )

    def resize_token_embeddings(self, new_num_tokens: int) -> nn.Embedding:
        """Change ``vocab_size`` (e.g. for a palette of another size): keeps the rows that remain, initializes
        new ones, and resizes the untied LM head to ``new_num_tokens - 1`` outputs."""
        if not isinstance(new_num_tokens, int) or new_num_tokens < 2:
            raise ValueError(f"new_num_tokens must be an integer >= 2, got {new_num_tokens!r}")
        base, std = self._base(), self.config.initializer_range
        base.wte = _resized(base.wte, new_num_tokens, std)
        if hasattr(self, "lm_head"):
            self.lm_head = _resized(self.lm_head, new_num_tokens - 1, std)
        self.config.vocab_size = new_num_tokens
        return base.wte

    def set_attn_implementation(self, name: str) -> None:
        """``"sdpa"`` (default, fused) or ``"eager"`` (the readable reference path, returns weights)."""
        if name not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {name!r}")
        self._base().attn_implementation = name

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype
def _resized(layer: nn.Module, rows: int, std: float) -> nn.Module:
    """A copy of an embedding (or bias-free linear) with ``rows`` output rows, old rows kept, new ones random."""
    old = layer.weight
    new = type(layer)(rows, old.shape[1]) if isinstance(layer, nn.Embedding) else nn.Linear(
        old.shape[1], rows, bias=False
    )  # fmt: skip
    new = new.to(device=old.device, dtype=old.dtype)
    with torch.no_grad():
        nn.init.normal_(new.weight, std=std)
        n = min(rows, old.shape[0])
        new.weight[:n] = old[:n]
    return new



