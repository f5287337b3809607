"""Fast autoregressive sampling: a static KV cache, one prefill of the prompt, then one-token decode steps.

gpt-fast's recipe: the cache for the whole sequence is allocated once (no per-step concatenation as in
transformers' dynamic cache), the prompt goes through the model in a single forward, and every later step feeds
one token per sequence. Token choice happens on the model's device without host synchronisation (the Gumbel-max
form of sampling), so a CUDA run only syncs when the caller looks at the tokens.

:func:`iter_tokens` is the engine; :func:`generate` is transformers' ``generate`` for this model (also bound as
``ImageGPTForCausalImageModeling.generate``). Image-level helpers (``sample``, ``complete``, row streaming) live
in :mod:`imagegpt.completion`; the weight layouts and thread count of a CPU decode step in :mod:`imagegpt.cpu_decode`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from imagegpt.cpu_decode import decode_threads, decode_weights
from imagegpt.kv_cache import KVCache, SharedPrefixKVCache

# decode_threads and decode_weights live in imagegpt.cpu_decode; they stay importable from here
__all__ = ["filter_logits", "choose_tokens", "iter_tokens", "generate", "make_generator", "decode_threads",
           "decode_weights"]

GENERATE_DEFAULTS = dict(new_tokens=20, top_k=50)  # transformers' generation defaults


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """transformers' warpers in their order: divide by ``temperature``, keep the ``top_k`` largest logits (ties
    with the k-th kept), then the smallest set whose probability reaches ``top_p``. Excluded logits become -inf.
    ``logits`` (B, V) float32."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)  # ascending, as transformers
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum <= 1.0 - top_p
        drop[:, -1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def choose_tokens(
    logits: torch.Tensor,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token per row of ``logits`` (B, V): argmax when not sampling, else a draw from the filtered softmax.

    Sampling uses the Gumbel-max identity argmax(p / E) with E ~ Exp(1): an exact draw from p that stays on the
    device (``torch.multinomial`` would synchronise with the host on CUDA).
    """
    logits = logits.float()
    if not do_sample:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
    # E = -log(U): Exp(1) in one uniform fill and two in-place ops, 4-5x faster on CPU than exponential_ (0.08 vs
    # 0.39 ms for (40, 512)); U >= the smallest normal float, so E is finite (its tail cut at ~16.6: P < 1e-7)
    tiny = torch.finfo(probs.dtype).tiny
    noise = torch.empty_like(probs).uniform_(tiny, 1.0, generator=generator).log_().neg_()
    return (probs / noise).argmax(dim=-1)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (None: use torch's global generator)."""
    if seed is None:
        return None
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(int(seed))
    return generator


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature} (for greedy decoding pass do_sample=False)")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be a non-negative integer (0 or None: no top-k filter), got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def check_prompt(model, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Validate a prompt (B, T) of token ids for ``model`` before decoding ``max_new_tokens`` after it."""
    cfg = model.config
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must be an integer tensor, got {getattr(input_ids, 'dtype', type(input_ids))}")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty (batch, seq) tensor, got shape {tuple(input_ids.shape)}")
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= cfg.vocab_size:
        raise ValueError(f"input_ids must lie in [0, {cfg.vocab_size}) (colors 0..{cfg.vocab_size - 2}, start "
                         f"token {cfg.vocab_size - 1}), got values in [{int(input_ids.min())}, "
                         f"{int(input_ids.max())}]")  # fmt: skip
    t = input_ids.shape[1]
    if t > cfg.n_positions:
        raise ValueError(f"the prompt has {t} tokens but the model has only n_positions={cfg.n_positions}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    # The last new token is predicted from position t + max_new_tokens - 2 and never fed back in.
    if t + max_new_tokens > cfg.n_positions + 1:
        raise ValueError(f"{t} prompt tokens + {max_new_tokens} new ones need {t + max_new_tokens - 1} positions; "
                         f"the model has n_positions={cfg.n_positions} (at most {cfg.n_positions + 1 - t} new "
                         f"tokens after this prompt)")  # fmt: skip
    return input_ids


@torch.inference_mode()
def iter_tokens(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    cuda_graph: bool | None = None,
    cpu_packed: bool | None = None,
    num_threads: int | None = None,
    share_prompts: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every sequence, (B,) on the model's device, ``max_new_tokens`` times.

    ``model`` is an :class:`~imagegpt.ImageGPTForCausalImageModeling`; ``input_ids`` (B, T) is the prompt,
    usually led by the start token. The start token is never produced (the LM head has no output for it).
    ``cuda_graph`` (default: on for CUDA models) replays each decode step as one captured CUDA graph;
    ``cpu_packed`` (default: on for float32 CPU models whose linear weights exceed 64 MiB, where oneDNN is
    present) runs the linear layers on weights repacked for oneDNN (:func:`imagegpt.cpu_decode.packed_linears`);
    otherwise steps of several rows run the Conv1D projections on (out, in) copies, unless ``cpu_packed=False``
    (:func:`imagegpt.cpu_decode.decode_weights`).
    ``num_threads`` (CPU): torch's intra-op threads while a step computes, restored before each token is yielded
    (default :func:`imagegpt.cpu_decode.decode_threads`: one for small models, torch's current setting otherwise).
    ``share_prompts``: when the prompts repeat in consecutive runs of equal length (several samples per prompt),
    prefill each distinct prompt once and keep its cache once (:class:`~imagegpt.kv_cache.SharedPrefixKVCache`).
    """
    _check_sampling(temperature, top_k, top_p)
    input_ids = check_prompt(model, input_ids, max_new_tokens)
    if max_new_tokens == 0:
        return
    cfg, body = model.config, model.transformer
    device = body.wte.weight.device
    batch, t = input_ids.shape
    if cuda_graph is None:
        cuda_graph = device.type == "cuda"
    if num_threads is None:
        num_threads = decode_threads(model) if device.type == "cpu" else None
    elif num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 (or None: chosen from the model's size), got {num_threads}")
    group = prompt_group(input_ids) if share_prompts and not cuda_graph and t > 1 and not cfg.add_cross_attention and (
        model.transformer.attn_implementation != "eager") else 1  # fmt: skip
    pick = dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    with decode_weights(model, batch, cpu_packed):
        yield from _decode(model, input_ids.to(device), max_new_tokens, cuda_graph, pick, group, num_threads)


def prompt_group(input_ids: torch.Tensor) -> int:
    """G > 1 when the rows of ``input_ids`` (B, T) come in consecutive runs of G identical prompts (B = U * G,
    as ``repeat_interleave`` makes them), else 1."""
    b = input_ids.shape[0]
    first = input_ids[0]
    g = 1
    while g < b and torch.equal(input_ids[g], first):
        g += 1
    if g == 1 or b % g:
        return 1
    runs = input_ids.view(b // g, g, -1)
    return g if bool((runs == runs[:, :1]).all()) else 1


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block and restored after it (None: unchanged)."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _decode(model, input_ids: torch.Tensor, max_new_tokens: int, cuda_graph: bool, pick: dict, group: int,
            num_threads: int | None) -> Iterator[torch.Tensor]:  # fmt: skip
    cfg, device = model.config, input_ids.device
    dtype = model.transformer.wte.weight.dtype
    batch, t = input_ids.shape
    head_dim = cfg.n_embd // cfg.n_head
    capacity = t + max_new_tokens - 1  # the final token is never fed back
    step = _step_fn(model)
    with _threads(num_threads):  # the caller's setting holds again whenever a token is handed out
        if group > 1:  # prefill each distinct prompt once, then decode on a cache that holds it once
            prefix = KVCache.static(cfg.n_layer, batch // group, cfg.n_head, head_dim, t, dtype=dtype, device=device)
            logits = step(input_ids[::group], prefix).repeat_interleave(group, dim=0)
            cache = SharedPrefixKVCache(prefix, group, max(max_new_tokens - 1, 1))
        else:
            cache = KVCache.static(cfg.n_layer, batch, cfg.n_head, head_dim, capacity, dtype=dtype, device=device)
            logits = step(input_ids, cache)
        if not bool(torch.isfinite(logits).all()):  # once per call, not in the decode loop
            raise ValueError("the model's logits are NaN or infinite: its weights hold NaN or infinite values (a "
                             "diverged or corrupt checkpoint); load an earlier checkpoint")  # fmt: skip
        tokens = choose_tokens(logits, **pick)
        if cuda_graph and max_new_tokens > 1:
            step = _GraphedStep(step, cache, batch, device)
    for i in range(max_new_tokens):
        yield tokens
        if i + 1 < max_new_tokens:
            with _threads(num_threads):
                tokens = choose_tokens(step(tokens[:, None], cache), **pick)


class _GraphedStep:
    """One decode step captured as a CUDA graph and replayed: the ~10 kernels per layer launch at once, instead
    of one Python dispatch each (which bounds small-batch decoding on a GPU). Fixed shapes: the cache is written
    at a position held in a tensor and attention runs over the whole buffer, masked past the current position."""

    def __init__(self, step: Callable, cache: KVCache, batch: int, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError("cuda_graph=True needs the model on a CUDA device")
        self.next_position = cache.get_seq_length()
        self.ids = torch.zeros((batch, 1), dtype=torch.long, device=device)
        # Warm-up and capture write into the last slot, which only the final decode step fills for real.
        cache.position = torch.full((1,), cache.capacity - 1, dtype=torch.long, device=device)
        self.position = cache.position
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            step(self.ids, cache)  # warm-up: lazy initialisations happen outside the capture
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step(self.ids, cache)

    def __call__(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        self.ids.copy_(ids)
        self.position.fill_(self.next_position)
        self.next_position += 1
        self.graph.replay()
        return self.logits


def _step_fn(model) -> Callable[[torch.Tensor, KVCache], torch.Tensor]:
    """(B, T) ids + cache -> logits (B, V) of the last position: the model's own decoder forward (no checks
    repeated per step) and the LM head applied to the last position only."""
    body, head = model.transformer, model.lm_head

    def step(ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        return head(body.decode(ids, cache)[:, -1])

    return step


def generate(
    model,
    input_ids: torch.Tensor | None = None,
    max_length: int | None = None,
    max_new_tokens: int | None = None,
    do_sample: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    num_return_sequences: int = 1,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    attention_mask: torch.Tensor | None = None,
    cuda_graph: bool | None = None,
    cpu_packed: bool | None = None,
    num_threads: int | None = None,
    share_prompts: bool = True,
    **kwargs,
) -> torch.Tensor:
    """transformers' ``generate`` for ImageGPT: returns (B * num_return_sequences, T + new) token ids.

    Same arguments and defaults as transformers (20 new tokens when no length is given, ``top_k`` 50 when
    sampling); greedy when ``do_sample`` is False. Extra: ``generator`` or ``seed`` for reproducible draws.
    A full 32x32 image is ``max_length=model.config.n_positions + 1`` from the start token alone, as in
    transformers' ImageGPT example. Prompts must be unpadded (``attention_mask``, if given, all ones).
    ``cuda_graph``, ``cpu_packed``, ``num_threads``, ``share_prompts``: see :func:`iter_tokens`.
    """
    ignored = {"pad_token_id", "eos_token_id", "bos_token_id", "use_cache", "output_scores", "return_dict_in_generate"}
    unknown = set(kwargs) - ignored
    if unknown:
        raise TypeError(f"generate() got unsupported argument(s): {', '.join(sorted(unknown))}")
    if kwargs.get("eos_token_id") is not None:
        raise ValueError("ImageGPT has no end-of-sequence token; images end after a fixed number of pixels")
    if kwargs.get("return_dict_in_generate"):
        raise ValueError("return_dict_in_generate is not supported; generate returns the token ids")
    device = model.transformer.wte.weight.device
    if input_ids is None:  # one sequence from the start token
        input_ids = torch.full((1, 1), model.config.vocab_size - 1, dtype=torch.long, device=device)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if attention_mask is not None and not bool((attention_mask == 1).all()):
        raise ValueError("padded prompts are not supported: give prompts of equal length (attention_mask all ones)")
    if max_new_tokens is None:  # as transformers: max_new_tokens wins over max_length; default 20 new tokens
        max_new_tokens = GENERATE_DEFAULTS["new_tokens"] if max_length is None else max_length - input_ids.shape[1]
    if max_new_tokens <= 0:
        raise ValueError(f"nothing to generate: the prompt has {input_ids.shape[1]} tokens and max_length is "
                         f"{input_ids.shape[1] + max_new_tokens}")  # fmt: skip
    if num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be >= 1, got {num_return_sequences}")
    if num_return_sequences > 1:
        input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
    if do_sample and top_k is None:
        top_k = GENERATE_DEFAULTS["top_k"]
    if generator is None and seed is not None:
        generator = make_generator(seed, device)
    steps = iter_tokens(model, input_ids, max_new_tokens, do_sample=do_sample,
                        temperature=1.0 if temperature is None else temperature, top_k=top_k or None,
                        top_p=top_p, generator=generator, cuda_graph=cuda_graph,
                        cpu_packed=cpu_packed, num_threads=num_threads, share_prompts=share_prompts)  # fmt: skip
    new = list(steps)
    return torch.cat([input_ids.to(device), torch.stack(new, dim=1)], dim=1)
