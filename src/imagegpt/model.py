"""The ImageGPT model: a GPT-2-like decoder over color-quantized pixels.

Differences from GPT-2 (Chen et al., 2020): the layer norm does not center (x / sqrt(mean(x^2) + eps) * weight),
the MLP uses quick_gelu, input and output embeddings are untied, and the LM head has vocab_size - 1 outputs (the
start token is never predicted). Parameter names, shapes and forward arguments follow transformers' ImageGPT classes:
the projections are GPT-2's :class:`~imagegpt.layers.Conv1D` (weight (in, out)), so state dicts load both ways.

The task heads live in :mod:`imagegpt.heads`. One forward path serves training, scoring and cached decoding.
Attention runs through ``F.scaled_dot_product_attention``; the explicit softmax path (:func:`reference_attention`)
is used when attention weights are requested, when ``model.attn_implementation = "eager"``, and by the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from imagegpt.checkpoint import PreTrainedMixin
from imagegpt.config import ImageGPTConfig
from imagegpt.kv_cache import KVCache, SharedPrefixKVCache
from imagegpt.layers import Conv1D, ImageGPTLayerNorm, init_module_weights
from imagegpt.outputs import BaseModelOutput

__all__ = ["ImageGPTLayerNorm", "ImageGPTModel", "reference_attention", "init_module_weights"]


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(1.702 x)`` (OpenAI's gelu2)."""
    return x * torch.sigmoid(1.702 * x)


def _quick_gelu_(x: torch.Tensor) -> torch.Tensor:
    """quick_gelu overwriting ``x``: silu(1.702 x) / 1.702 is the same function and allocates nothing (a new
    (T, 4E) buffer costs page faults on CPU). Only for a fresh buffer nobody else holds, without autograd."""
    return F.silu(x.mul_(1.702), inplace=True).div_(1.702)


_ACT = {
    "quick_gelu": quick_gelu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    dropout_p: float = 0.0,
    upcast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Readable exact attention. q (B, nh, T, hs), k/v (B, nh, S, hs), mask bool broadcastable to (B, nh, T, S)
    with True = may attend. Returns the output (B, nh, T, hs) and the weights (B, nh, T, S)."""
    dtype = q.dtype
    if upcast:  # transformers' reorder_and_upcast_attn: scores and softmax in float32
        q, k = q.float(), k.float()
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, nh, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1).to(dtype)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights


class ImageGPTAttention(nn.Module):
    """Multi-head attention; self-attention is causal, cross-attention (queries from x, keys/values from the
    encoder states) is not, and honours ``encoder_attention_mask``."""

    def __init__(self, config: ImageGPTConfig, layer_idx: int, is_cross_attention: bool = False) -> None:
        super().__init__()
        e = config.n_embd
        self.n_head, self.head_dim, self.layer_idx = config.n_head, e // config.n_head, layer_idx
        self.is_cross_attention = is_cross_attention
        if is_cross_attention:
            self.c_attn = Conv1D(2 * e, e)  # keys, values of the encoder states
            self.q_attn = Conv1D(e, e)
        else:
            self.c_attn = Conv1D(3 * e, e)  # fused queries, keys, values
        self.c_proj = Conv1D(e, e)
        self.scale = (self.head_dim**-0.5 if config.scale_attn_weights else 1.0) / (
            layer_idx + 1 if config.scale_attn_by_inverse_layer_idx else 1
        )
        self.upcast = config.reorder_and_upcast_attn
        self.attn_pdrop = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, E) -> (B, nh, T, hs)
        return x.view(x.shape[0], x.shape[1], self.n_head, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: KVCache | None,
        eager: bool,
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.is_cross_attention:
            q = self._heads(self.q_attn(x))
            kv = cache.cross[self.layer_idx] if cache is not None else None
            if kv is None:
                k, v = self.c_attn(encoder_hidden_states).split(x.shape[-1], dim=2)
                kv = (self._heads(k), self._heads(v))
                if cache is not None:
                    cache.cross[self.layer_idx] = kv
            k, v = kv
        else:
            q, k, v = (self._heads(t) for t in self.c_attn(x).split(x.shape[-1], dim=2))
            if isinstance(cache, SharedPrefixKVCache):  # decode steps of repeated prompts (sampling.py)
                y = cache.attend(self.layer_idx, q, k, v, self.scale)  # (B, nh, 1, hs)
                return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(x.shape))), None
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v)
        dropout_p = self.attn_pdrop if self.training else 0.0
        if eager:
            if mask is None and is_causal and q.shape[2] > 1:
                mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
            y, weights = reference_attention(q, k, v, mask, self.scale, dropout_p, self.upcast)
        else:
            dtype = q.dtype
            if self.upcast and dtype != torch.float32:
                q, k, v = q.float(), k.float(), v.float()
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal and mask is None, scale=self.scale
            ).to(dtype)
            weights = None
        y = y.transpose(1, 2).reshape(x.shape)  # (B, T, E)
        return self.resid_dropout(self.c_proj(y)), weights


class ImageGPTMLP(nn.Module):
    def __init__(self, config: ImageGPTConfig) -> None:
        super().__init__()
        self.c_fc = Conv1D(config.inner_dim, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.inner_dim)
        self.act = _ACT[config.activation_function]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)  # (B, T, inner)
        if self.act is quick_gelu and not (h.requires_grad and torch.is_grad_enabled()):
            h = _quick_gelu_(h)
        else:
            h = self.act(h)
        return self.dropout(self.c_proj(h))


class ImageGPTBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)) [+ crossattention(ln_cross_attn(x))] then x + mlp(ln_2(x)).

    Gradient checkpointing follows transformers' ``GradientCheckpointingLayer``: the model sets
    ``gradient_checkpointing`` and ``_gradient_checkpointing_func`` on each block, and the block checkpoints its
    ``forward`` (not ``__call__``), so module hooks run once per step, outside the recomputation."""

    gradient_checkpointing = False
    _gradient_checkpointing_func = None

    def __init__(self, config: ImageGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = ImageGPTLayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.attn = ImageGPTAttention(config, layer_idx)
        self.ln_2 = ImageGPTLayerNorm(config.n_embd, config.layer_norm_epsilon)
        if config.add_cross_attention:
            self.crossattention = ImageGPTAttention(config, layer_idx, is_cross_attention=True)
            self.ln_cross_attn = ImageGPTLayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.mlp = ImageGPTMLP(config)

    def forward(self, *args):
        if self.gradient_checkpointing and self.training:
            return self._gradient_checkpointing_func(self._layer, *args)
        return self._layer(*args)

    def _layer(self, x, mask, is_causal, cache, eager, enc=None, enc_mask=None):
        a, weights = self.attn(self.ln_1(x), mask, is_causal, cache, eager)
        x = x + a
        cross_weights = None
        if enc is not None:
            a, cross_weights = self.crossattention(self.ln_cross_attn(x), enc_mask, False, cache, eager, enc)
            x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, weights, cross_weights


def _attention_mask(
    attention_mask: torch.Tensor | None, batch: int, t: int, past: int, device: torch.device, causal: bool = True
) -> torch.Tensor | None:
    """Boolean (B, 1, T, past + T) mask, True = may attend, or None when plain causal attention is enough."""
    if attention_mask is None:
        if past == 0 or t == 1 or not causal:  # SDPA's is_causal (no past), one query that sees all, or no mask
            return None
        pad = None
    else:
        if attention_mask.shape != (batch, past + t):
            raise ValueError(
                f"attention_mask must be (batch, past + new tokens) = ({batch}, {past + t}), "
                f"got {tuple(attention_mask.shape)}"
            )
        pad = attention_mask.to(device=device).bool()
        if not causal:  # bidirectional: every query sees every real token
            return pad[:, None, None, :]
    rows = torch.arange(past, past + t, device=device)[:, None]
    cols = torch.arange(past + t, device=device)[None, :]
    causal = cols <= rows  # (T, S)
    if pad is None:
        return causal[None, None]
    allowed = causal[None] & pad[:, None, :]  # (B, T, S)
    # A padded query may see no key at all (left padding): letting only such a row see itself keeps it finite,
    # so no NaN spreads (transformers leaves these rows ill-defined). Real positions never attend to padding.
    allowed |= ~allowed.any(-1, keepdim=True) & (cols == rows)[None]
    return allowed[:, None]


class ImageGPTModel(PreTrainedMixin, nn.Module):
    """The bare ImageGPT decoder: embeddings, ``n_layer`` blocks and the final norm ``ln_f``."""

    def __init__(self, config: ImageGPTConfig) -> None:
        super().__init__()
        config.validate(for_model=True)
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(ImageGPTBlock(config, i) for i in range(config.n_layer))
        self.ln_f = ImageGPTLayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.attn_implementation = config._attn_implementation or "sdpa"  # or "eager": the reference path
        config._attn_implementation = self.attn_implementation  # the one in use, as transformers records it
        # The paper's BERT objective trains with bidirectional attention: config "bidirectional": true
        self.causal = not bool(getattr(config, "bidirectional", False))
        self.gradient_checkpointing_kwargs: dict = {"use_reentrant": False}
        self.gradient_checkpointing = bool(getattr(config, "gradient_checkpointing", False))  # transformers' old flag
        self.post_init()  # transformers' initialization scheme, every module marked initialized

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether the blocks recompute their activations in the backward pass (set with the kwargs in place)."""
        return self._gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        self._gradient_checkpointing = bool(on)
        for block in self.h:
            block.gradient_checkpointing = bool(on)
            block._gradient_checkpointing_func = partial(checkpoint, **self.gradient_checkpointing_kwargs)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: KVCache | Sequence | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutput | tuple:
        """Run the decoder. ``input_ids`` (B, T) of ids in [0, vocab_size), or ``inputs_embeds`` (B, T, n_embd).

        ``attention_mask`` (B, past + T) marks real tokens with 1 and padding with 0. With ``use_cache`` the
        output's ``past_key_values`` (a :class:`~imagegpt.kv_cache.KVCache`) continues decoding when passed back
        with only the new tokens. ``hidden_states`` holds each block's input and, last, the ``ln_f`` output.
        """
        cfg = self.config
        use_cache = cfg.use_cache if use_cache is None else use_cache
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = cfg.return_dict if return_dict is None else return_dict
        if self.gradient_checkpointing and self.training:
            use_cache = False

        cache = past_key_values
        if cache is not None and not isinstance(cache, KVCache):
            cache = KVCache.from_legacy_cache(cache)
        if cache is None and use_cache:
            cache = KVCache(cfg.n_layer)
        past = cache.get_seq_length() if cache is not None else 0
        x = self._embed(input_ids, inputs_embeds, token_type_ids, position_ids, past)
        batch, t = x.shape[:2]
        mask = _attention_mask(attention_mask, batch, t, past, x.device, self.causal)
        enc, enc_mask = self._encoder_inputs(encoder_hidden_states, encoder_attention_mask, batch)
        eager = output_attentions or self.attn_implementation == "eager"

        hidden, attentions, cross = [], [], []
        for block in self.h:
            if output_hidden_states:
                hidden.append(x)
            args = (x, mask, past == 0 and self.causal, cache, eager, enc, enc_mask)
            x, w, cw = block(*args)  # checkpointed inside when gradient_checkpointing is on (training)
            if output_attentions:
                attentions.append(w)
                if enc is not None:
                    cross.append(cw)
        x = self.ln_f(x)
        if output_hidden_states:
            hidden.append(x)
        out = BaseModelOutput(
            last_hidden_state=x,
            past_key_values=cache if use_cache else None,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            cross_attentions=tuple(cross) if output_attentions and enc is not None else None,
        )
        return out if return_dict else out.to_tuple()

    def decode(self, input_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The forward path for samplers, which check the prompt once: ids (B, T) continue the sequences in
        ``cache`` (positions follow its length); returns the final hidden states (B, T, n_embd)."""
        if cache.position is not None:  # fixed shapes (CUDA graphs): attend over the whole buffer, masked
            x = self.wte(input_ids) + self.wpe(cache.position)  # (B, T, E)
            mask = (torch.arange(cache.capacity, device=x.device) <= cache.position[:, None])[None, None]
            is_causal = False  # (1, 1, T, capacity)
        else:
            past, t = cache.get_seq_length(), input_ids.shape[1]
            x = self.wte(input_ids) + self.wpe.weight[past : past + t]  # (B, T, E)
            mask, is_causal = _attention_mask(None, x.shape[0], t, past, x.device), past == 0
        eager = self.attn_implementation == "eager"
        for block in self.h:
            x = block(x, mask, is_causal, cache, eager)[0]
        return self.ln_f(x)

    def _embed(self, input_ids, inputs_embeds, token_type_ids, position_ids, past: int) -> torch.Tensor:
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            input_ids = _check_ids(input_ids, cfg.vocab_size, "input_ids")
            x = self.wte(input_ids)
        else:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != cfg.n_embd:
                raise ValueError(
                    f"inputs_embeds must be (batch, seq, n_embd={cfg.n_embd}), got {tuple(inputs_embeds.shape)}"
                )
            x = inputs_embeds
        t = x.shape[1]
        if t == 0:
            raise ValueError("the input sequence is empty")
        if position_ids is None:
            if past + t > cfg.n_positions:
                raise ValueError(
                    f"sequence of {past + t} positions (cached {past} + new {t}) exceeds "
                    f"n_positions={cfg.n_positions}"
                )
            position_ids = torch.arange(past, past + t, device=x.device)[None]
        else:
            position_ids = _check_ids(position_ids, cfg.n_positions, "position_ids").view(-1, t)
        x = x + self.wpe(position_ids)
        if token_type_ids is not None:
            x = x + self.wte(_check_ids(token_type_ids, cfg.vocab_size, "token_type_ids").view(-1, t))
        return self.drop(x)

    def _encoder_inputs(self, enc, enc_mask, batch):
        if enc is None:
            return None, None
        if not self.config.add_cross_attention:
            raise ValueError("encoder_hidden_states need a model built with config.add_cross_attention=True")
        if enc.dim() != 3 or enc.shape[0] != batch or enc.shape[-1] != self.config.n_embd:
            raise ValueError(
                f"encoder_hidden_states must be (batch={batch}, enc_seq, n_embd={self.config.n_embd}), "
                f"got {tuple(enc.shape)}"
            )
        if enc_mask is None:
            return enc, None
        if enc_mask.shape != enc.shape[:2]:
            raise ValueError(f"encoder_attention_mask must be {tuple(enc.shape[:2])}, got {tuple(enc_mask.shape)}")
        return enc, enc_mask.to(enc.device).bool()[:, None, None, :]  # (B, 1, 1, S_enc)


def _check_ids(ids: torch.Tensor, upper: int, name: str) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (torch.long), got {getattr(ids, 'dtype', type(ids))}")
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2:
        raise ValueError(f"{name} must be (batch, seq), got shape {tuple(ids.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= upper):
        raise ValueError(f"{name} must lie in [0, {upper}), got values in [{int(ids.min())}, {int(ids.max())}]")
    return ids
