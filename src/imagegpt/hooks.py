"""The model-level hooks transformers' ``PreTrainedModel`` offers and that Trainer/PEFT-style code calls:
embeddings access, ``base_model``, gradient checkpointing, input gradients, parameter counts, resizing."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from imagegpt.config import ImageGPTConfig
from imagegpt.layers import init_module_weights
from imagegpt.layout import from_hf_state_dict, from_linear_layout, to_hf_state_dict

__all__ = ["ModelHooksMixin"]


class ModelHooksMixin:
    """Mixed into the three model classes (which set ``config``; task models hold the decoder as ``transformer``)."""

    config_class = ImageGPTConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ImageGPTBlock"]
    # Flags transformers' tooling reads, with their meaning here: no module kept in float32, no checkpoint key to
    # ignore quietly, no claim on transformers' compiled static-cache generation.
    _keep_in_fp32_modules: frozenset[str] = frozenset()
    _keep_in_fp32_modules_strict: frozenset[str] = frozenset()
    _keys_to_ignore_on_load_unexpected = None
    _keys_to_ignore_on_load_missing = None
    _can_compile_fullgraph = False
    _is_stateful = False  # the cache can be cropped and reordered (transformers checks this before beam search)
    # Attention backends, as transformers' flags mean them: "sdpa" (F.scaled_dot_product_attention, our default)
    # and "eager" (the explicit softmax), switchable at any time; no flash-attention, flex or kernel backends.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """Whether :meth:`set_attn_implementation` switches the model at any time: yes ("sdpa" or "eager")."""
        return True

    @classmethod
    def _can_set_experts_implementation(cls) -> bool:
        """Whether a mixture-of-experts implementation can be chosen: no (ImageGPT has no experts)."""
        return False

    @classmethod
    def _from_config(cls, config, **kwargs: Any):
        """A freshly initialized model for ``config`` (transformers' ``_from_config``; ``attn_implementation`` and
        ``dtype`` are honoured)."""
        attn = kwargs.pop("attn_implementation", None)
        dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
        model = cls(config)
        if attn is not None:
            model.set_attn_implementation(attn)
        return model.to(dtype) if dtype is not None else model

    def post_init(self) -> None:
        """transformers' last step of construction: initialise the weights of every module not initialised yet
        (those a subclass adds after ``super().__init__``), with the model's scheme, and mark them. Modules already
        initialised, loaded, resized or trained are left as they are, so calling it again changes nothing."""
        for name, module in self.named_modules():
            if getattr(module, "_is_hf_initialized", False):
                continue
            if next(module.children(), None) is None:  # a leaf: its own weights (containers hold none)
                init_module_weights(module, self.config, name)
            module._is_hf_initialized = True

    def _base(self):
        return getattr(self, self.base_model_prefix, self)

    @property
    def base_model(self) -> nn.Module:
        """The bare :class:`~imagegpt.ImageGPTModel` (the model itself for ImageGPTModel)."""
        return self._base()

    @property
    def vocab_size(self) -> int:
        return self.get_input_embeddings().num_embeddings

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

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None,
                                      activation_checkpointing_kwargs: dict | None = None) -> None:  # fmt: skip
        """Recompute each block's activations in the backward pass (less memory, ~30% more compute).

        As transformers: ``gradient_checkpointing_kwargs`` go to ``torch.utils.checkpoint.checkpoint`` (default
        ``{"use_reentrant": False}``), and input gradients are enabled (:meth:`enable_input_require_grads`) so
        that frozen embeddings (adapters) do not cut the backward pass."""
        kwargs = gradient_checkpointing_kwargs or activation_checkpointing_kwargs
        base = self._base()
        base.gradient_checkpointing_kwargs = dict(kwargs or {"use_reentrant": False})
        base.gradient_checkpointing = True  # hands each block its checkpoint function with these kwargs
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

    is_activation_checkpointing = is_gradient_checkpointing

    # --- transformers' weight layout -------------------------------------------------------------------------
    def state_dict_hf(self) -> dict[str, torch.Tensor]:
        """Deprecated: ``state_dict()`` itself is in transformers' layout now (``hf_model.load_state_dict(ours
        .state_dict())`` works); this returns it, contiguous."""
        return to_hf_state_dict(self.state_dict())

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False, hf_layout: bool = False):
        """``nn.Module.load_state_dict``: takes ``state_dict()`` of ours or of transformers' model (the same
        layout), and state dicts saved from ours before the projections were Conv1D (``nn.Linear`` (out, in):
        recognised by their shapes and transposed, :mod:`imagegpt.layout`). ``hf_layout`` is kept for old code
        and changes nothing."""
        expected = {k: v.shape for k, v in self.state_dict(keep_vars=True).items()}
        state_dict, _ = from_linear_layout(from_hf_state_dict(state_dict), expected)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # --- sizes and settings ---------------------------------------------------------------------------
    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters, optionally only trainable ones and/or without the embedding tables."""
        skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        return sum(
            p.numel() for p in self.parameters() if id(p) not in skip and (p.requires_grad or not only_trainable)
        )

    def resize_token_embeddings(self, new_num_tokens: int, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:  # fmt: skip
        """Change ``vocab_size`` (e.g. for a palette of another size): keeps the rows that remain; new rows start
        near the mean of the old ones (``mean_resizing``, as transformers) or random (normal, initializer_range).
        The untied LM head gets ``new_num_tokens - 1`` outputs: the start token stays unpredicted (transformers
        gives it ``new_num_tokens``; README, "Where we differ")."""
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int):
                raise ValueError(f"Asking to pad the embedding matrix to a multiple of `{pad_to_multiple_of}`, "
                                 "which is not and integer. Please make sure to pass an integer")  # transformers' words
            new_num_tokens = -(-new_num_tokens // pad_to_multiple_of) * pad_to_multiple_of
        if not isinstance(new_num_tokens, int) or new_num_tokens < 2:
            raise ValueError(f"new_num_tokens must be an integer >= 2, got {new_num_tokens!r}")
        base, std = self._base(), self.config.initializer_range
        base.wte = _resized(base.wte, new_num_tokens, std, mean_resizing)
        if hasattr(self, "lm_head"):
            self.lm_head = _resized(self.lm_head, new_num_tokens - 1, std, mean_resizing)
        self.config.vocab_size = new_num_tokens
        return base.wte

    def set_attn_implementation(self, name: str) -> None:
        """``"sdpa"`` (default, fused) or ``"eager"`` (the readable reference path, returns weights); recorded in
        ``config._attn_implementation`` as transformers does."""
        if name not in ("sdpa", "eager"):
            raise ValueError(f'Specified `attn_implementation="{name}"` is not supported: ImageGPT supports '
                             "'sdpa' and 'eager'")  # fmt: skip
        self._base().attn_implementation = name
        self.config._attn_implementation = name

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype
def _resized(layer: nn.Module, rows: int, std: float, mean_resizing: bool = True) -> nn.Module:
    """A copy of an embedding (or bias-free linear) with ``rows`` output rows, old rows kept, new ones random."""
    old = layer.weight
    new = type(layer)(rows, old.shape[1]) if isinstance(layer, nn.Embedding) else nn.Linear(
        old.shape[1], rows, bias=False
    )  # fmt: skip
    new = new.to(device=old.device, dtype=old.dtype)
    new._is_hf_initialized = True  # post_init must not draw it again
    with torch.no_grad():
        n = min(rows, old.shape[0])
        new.weight[:n] = old[:n]
        if rows > n and mean_resizing:  # transformers' mean resizing: new rows near the mean of the old ones
            new.weight[n:] = _around_mean(old.detach().float(), rows - n).to(old.dtype)
        elif rows > n:
            nn.init.normal_(new.weight[n:], std=std)
    return new


def _around_mean(old: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` rows drawn from N(mean, 1e-9 * covariance) of the rows of ``old`` (their mean when the
    covariance is not positive definite), as transformers' ``mean_resizing``: new tokens start where the average
    token is, so the first logits barely move."""
    mean = old.mean(dim=0)
    centered = old - mean
    covariance = centered.T @ centered / old.shape[0]
    try:
        dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=1e-9 * covariance)
        return dist.sample((count,))
    except ValueError:  # not positive definite
        return mean.expand(count, -1).clone()



