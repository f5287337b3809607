"""Key/value cache for incremental decoding.

One buffer per layer, shaped (B, n_head, capacity, head_dim), filled left to right. :meth:`KVCache.static`
pre-allocates the whole capacity up front (gpt-fast style: no reallocation while sampling); a cache created
implicitly by ``forward(..., use_cache=True)`` starts empty, keeps the first chunk's tensors as they are (no
copy for a plain forward) and grows geometrically when more tokens arrive.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

__all__ = ["KVCache", "SharedPrefixKVCache"]


class KVCache:
    """Per-layer self-attention keys and values, plus the cross-attention keys and values of encoder states.

    ``forward(..., use_cache=True)`` returns one as ``past_key_values``; pass it back to continue decoding.
    It also indexes like transformers' legacy format: ``cache[i]`` is ``(keys, values)`` of layer ``i``, each
    (B, n_head, seq_len, head_dim).
    """

    def __init__(self, n_layer: int) -> None:
        self._keys: list[torch.Tensor | None] = [None] * n_layer
        self._values: list[torch.Tensor | None] = [None] * n_layer
        self._lengths = [0] * n_layer
        # False while a layer holds tensors we did not allocate (a kept first chunk, a legacy cache):
        # those are never written into; the next append copies them into a buffer of our own.
        self._owned = [False] * n_layer
        # Cross-attention keys/values are computed once from the encoder states and reused at every step.
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer
        # Fixed-shape decoding (for CUDA graphs): when set, a (T,) tensor of the positions being written; update()
        # writes there and returns the whole buffers, and the model masks the positions not written yet.
        self.position: torch.Tensor | None = None

    @classmethod
    def static(
        cls,
        n_layer: int,
        batch_size: int,
        n_head: int,
        head_dim: int,
        capacity: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> "KVCache":
        """A cache with room for ``capacity`` positions allocated now, so decoding never reallocates."""
        cache = cls(n_layer)
        shape = (batch_size, n_head, capacity, head_dim)
        for i in range(n_layer):
            cache._keys[i] = torch.zeros(shape, dtype=dtype, device=device)
            cache._values[i] = torch.zeros(shape, dtype=dtype, device=device)
        cache._owned = [True] * n_layer
        return cache

    @classmethod
    def from_legacy_cache(cls, past: Sequence[Sequence[torch.Tensor]]) -> "KVCache":
        """Build from transformers' legacy tuple format ``((k, v), ...)`` with k, v (B, n_head, S, head_dim)."""
        cache = cls(len(past))
        for i, layer in enumerate(past):
            if len(layer) < 2:
                raise ValueError(f"past_key_values[{i}] must hold (keys, values), got {len(layer)} tensors")
            keys, values = layer[0], layer[1]
            if keys.dim() != 4 or keys.shape != values.shape:
                raise ValueError(
                    f"past_key_values[{i}] keys/values must both be (batch, n_head, seq, head_dim); "
                    f"got {tuple(keys.shape)} and {tuple(values.shape)}"
                )
            cache._keys[i], cache._values[i], cache._lengths[i] = keys, values, keys.shape[2]
        return cache

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, n_head, T, head_dim) keys/values to ``layer``; return all of them so far."""
        buf_k, buf_v = self._keys[layer], self._values[layer]
        if self.position is not None:  # same shapes at every step: nothing here depends on a Python length
            buf_k.index_copy_(2, self.position, keys)
            buf_v.index_copy_(2, self.position, values)
            return buf_k, buf_v
        start = self._lengths[layer]
        end = start + keys.shape[2]
        if buf_k is None:
            # First chunk of an implicitly created cache: keep the tensors themselves, no copy.
            self._keys[layer], self._values[layer], self._lengths[layer] = keys, values, end
            return keys, values
        if buf_k.shape[0] != keys.shape[0]:
            raise ValueError(
                f"the cache holds batch size {buf_k.shape[0]} but the input has batch size {keys.shape[0]}"
            )
        if end > buf_k.shape[2] or not self._owned[layer]:
            capacity = max(end, 2 * start)  # grow geometrically: O(1) amortized copying per token
            buf_k = self._grow(buf_k, start, capacity)
            buf_v = self._grow(buf_v, start, capacity)
            self._keys[layer], self._values[layer], self._owned[layer] = buf_k, buf_v, True
        buf_k[:, :, start:end] = keys
        buf_v[:, :, start:end] = values
        self._lengths[layer] = end
        return buf_k[:, :, :end], buf_v[:, :, :end]

    @staticmethod
    def _grow(buf: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
        b, h, _, d = buf.shape
        new = buf.new_zeros((b, h, capacity, d))
        new[:, :, :length] = buf[:, :, :length]
        return new

    def get_seq_length(self, layer: int = 0) -> int:
        """Number of positions already cached (for ``layer``, default the first)."""
        return self._lengths[layer]

    @property
    def capacity(self) -> int:
        return 0 if self._keys[0] is None else self._keys[0].shape[2]

    def crop(self, length: int) -> None:
        """Forget every position at or after ``length`` (keeps the buffers)."""
        if length < 0:
            raise ValueError(f"crop length must be >= 0, got {length}")
        self._lengths = [min(n, length) for n in self._lengths]

    def reset(self) -> None:
        """Empty the cache but keep its buffers for reuse."""
        self.crop(0)
        self.cross = [None] * len(self.cross)

    def reorder_cache(self, index: torch.Tensor) -> None:
        """Select/reorder the batch rows (e.g. for beam search or ``num_return_sequences``)."""
        for i, (k, v) in enumerate(zip(self._keys, self._values)):
            if k is not None:
                self._keys[i], self._values[i] = k.index_select(0, index), v.index_select(0, index)
            if self.cross[i] is not None:
                ck, cv = self.cross[i]
                self.cross[i] = (ck.index_select(0, index), cv.index_select(0, index))

    def to_legacy_cache(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        return tuple(self[i] for i in range(len(self)))

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self._lengths[layer]
        if self._keys[layer] is None:
            raise IndexError(f"layer {layer} of the cache is empty")
        return self._keys[layer][:, :, :n], self._values[layer][:, :, :n]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (self[i] for i in range(len(self)))


class SharedPrefixKVCache(KVCache):
    """Decode-time cache for a batch whose prompts repeat in runs: rows ``g * group .. (g + 1) * group - 1`` all
    continue the same prompt (``complete(..., samples=S)``, ``num_return_sequences``). The prompt's keys and values
    are held once per distinct prompt, ``prefix`` (U, nh, P, hs); only the generated tokens' are per row (B, nh,
    capacity, hs), with B = U * group. Each decode step then reads the prompt's cache once per group instead of
    once per row, the cost that bounds decoding small models (the cache streams from memory); the prefill runs on
    the U distinct prompts only. :meth:`attend` is exact attention over [prefix | generated] (one softmax)."""

    def __init__(self, prefix: KVCache, group: int, capacity: int) -> None:
        super().__init__(len(prefix))
        self.group = group
        self.prefix_length = prefix.get_seq_length()
        self.prefix = [prefix[i] for i in range(len(prefix))]  # (U, nh, P, hs) keys, values per layer
        u, nh, _, hs = self.prefix[0][0].shape
        shape = (u * group, nh, capacity, hs)
        k0 = self.prefix[0][0]
        for i in range(len(prefix)):
            self._keys[i] = k0.new_zeros(shape)
            self._values[i] = k0.new_zeros(shape)
        self._owned = [True] * len(prefix)

    def get_seq_length(self, layer: int = 0) -> int:
        return self.prefix_length + self._lengths[layer]

    def attend(
        self, layer: int, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """Store the new (B, nh, 1, hs) keys/values of ``layer`` and return the attention output (B, nh, 1, hs) of
        the one-token queries ``q`` over the prompt and every generated token so far."""
        if q.shape[2] != 1:
            raise ValueError("SharedPrefixKVCache takes one token per step")
        k, v = KVCache.update(self, layer, keys, values)  # (B, nh, n, hs): the generated tokens
        pk, pv = self.prefix[layer]  # (U, nh, P, hs)
        u, nh, p, hs = pk.shape
        b, g, n = q.shape[0], self.group, k.shape[2]
        qg = q.view(u, g, nh, hs).transpose(1, 2)  # (U, nh, G, hs): a group's queries share the prefix keys
        scores = torch.cat([torch.matmul(qg, pk.transpose(-1, -2)),  # (U, nh, G, P)
                            torch.matmul(q, k.transpose(-1, -2)).view(u, g, nh, n).transpose(1, 2)],  # (U, nh, G, n)
                           dim=-1)  # fmt: skip
        probs = scores.mul_(scale).softmax(dim=-1)  # (U, nh, G, P + n)
        y = torch.matmul(probs[..., :p], pv).transpose(1, 2).reshape(b, nh, 1, hs)
        return y.add_(torch.matmul(probs[..., p:].transpose(1, 2).reshape(b, nh, 1, n), v))

    def __getitem__(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self._lengths[layer]
        pk, pv = (t.repeat_interleave(self.group, dim=0) for t in self.prefix[layer])
        return (torch.cat([pk, self._keys[layer][:, :, :n]], dim=2),
                torch.cat([pv, self._values[layer][:, :, :n]], dim=2))  # fmt: skip
