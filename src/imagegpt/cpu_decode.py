"""The weights and threads of CPU decode steps: how :mod:`imagegpt.sampling` runs a step of a few rows fast.

A decode step feeds one token per sequence, so every linear layer multiplies a few rows by its whole weight: the
step is bound by streaming the weights, not by arithmetic. Three measured choices (benchmarks/README.md) follow:
oneDNN-packed copies of the weights for large float32 models, (out, in) copies of the Conv1D projections for
steps of several rows, and one OpenMP thread for small models. Each lives only inside a ``with`` block (or one
step), so the model itself is never changed.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
from torch import nn

from imagegpt.layers import Conv1D

__all__ = ["decode_threads", "decode_weights", "onednn_available", "packed_linears", "transposed_projections",
           "use_packed"]

# Packed oneDNN weights (CPU decode) win for a few rows per step, lose for long prefills, and gain nothing when
# all weights fit in the CPU's caches (measured: 1.3-1.45x faster steps for imagegpt-small, 300 MB of weights;
# equal or slower for 25 MB).
PACKED_MAX_ROWS = 64
PACKED_MIN_BYTES = 64 * 2**20
# Models whose linear weights are at most this size decode on one thread: a step is then a few dozen small
# kernels, and a second OpenMP thread adds synchronisation without work to share; worse, as soon as another
# process is busy each step waits for the descheduled thread (benchmarks/README.md, "The main job").
ONE_THREAD_MAX_BYTES = 16 * 2**20


def use_packed(model, cpu_packed: bool | None = None) -> bool:
    """Whether decoding runs on oneDNN-packed weights: ``cpu_packed`` when given, else for float32 CPU models whose
    linear weights exceed ``PACKED_MIN_BYTES`` (it pays only when the weights stream from memory, not from the
    CPU's caches) where oneDNN is present."""
    if cpu_packed is not None:
        return bool(cpu_packed)
    weight = model.transformer.wte.weight
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and onednn_available() and (
        _linear_bytes(model) > PACKED_MIN_BYTES
    )


def decode_threads(model) -> int:
    """The intra-op thread count :func:`imagegpt.sampling.iter_tokens` uses on a CPU by default: 1 when the model's
    linear weights total at most ``ONE_THREAD_MAX_BYTES`` (16 MiB), else torch's current setting."""
    return 1 if _linear_bytes(model) <= ONE_THREAD_MAX_BYTES else torch.get_num_threads()


def _linears(model) -> list[nn.Module]:
    """The model's linear layers: the Conv1D projections and the nn.Linear heads."""
    return [m for m in model.modules() if isinstance(m, (Conv1D, nn.Linear))]


def _linear_bytes(model) -> int:
    return sum(m.weight.numel() * m.weight.element_size() for m in _linears(model))


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's packed-weight linear (x86 CPU builds do)."""
    ops = getattr(torch.ops, "mkldnn", None)
    return torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise")


@contextlib.contextmanager
def decode_weights(model, batch: int, cpu_packed: bool | None = None) -> Iterator[None]:
    """The weights CPU decode steps of ``batch`` rows run on inside the block: oneDNN-packed copies of every
    linear layer when :func:`use_packed` says so (:func:`packed_linears`); else, for ``batch`` > 1 unless
    ``cpu_packed=False`` (which leaves the model untouched, e.g. shared between threads), (out, in) copies of the
    Conv1D projections (:func:`transposed_projections`); else the model's own. Nothing changes off the CPU."""
    on_cpu = model.transformer.wte.weight.device.type == "cpu"
    if use_packed(model, cpu_packed):
        context = packed_linears(model, batch)
    elif cpu_packed is None and batch > 1 and on_cpu:
        context = transposed_projections(model)
    else:
        context = contextlib.nullcontext()
    with context:
        yield


@contextlib.contextmanager
def transposed_projections(model) -> Iterator[None]:
    """While active, the Conv1D projections (weight (in, out), transformers' layout) run on (out, in) copies, as
    ``nn.Linear``: MKL's sgemm is 8-15% faster on that layout for a few rows of a 512-wide model (decode steps of
    4-16 rows; 1 row is faster on (in, out), so single rows keep it: benchmarks/README.md). CPU, inference only;
    the copies live only inside the ``with`` block."""
    projections = [m for m in model.modules() if isinstance(m, Conv1D)]
    with torch.no_grad():
        copies = [_out_in(m.weight.detach(), m) for m in projections]
    with _shadowed_forwards(projections, copies, _linear_forward):
        yield


def _linear_forward(module: Conv1D, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x, weight, module.bias)


@contextlib.contextmanager
def packed_linears(model, batch: int) -> Iterator[None]:
    """While active, the model's linear layers run on copies of their weights reordered for oneDNN's matmul
    (a blocked layout sized for ``batch`` rows), float32, CPU, inference only. Decoding feeds a few rows per step
    and is bound by streaming the weights: this layout made imagegpt-small's decode steps 1.3-1.45x faster than MKL's
    sgemm on row-major weights (benchmarks/README.md). The extra copy lives only inside the ``with`` block."""
    linears = _linears(model)
    with torch.no_grad():  # oneDNN packs from nn.Linear's (out, in); a Conv1D's (in, out) weight is transposed once
        packed = [torch.ops.mkldnn._reorder_linear_weight(_out_in(m.weight.detach(), m), batch) for m in linears]
    with _shadowed_forwards(linears, packed, _packed_forward):
        yield


@contextlib.contextmanager
def _shadowed_forwards(modules: list[nn.Module], weights: list[torch.Tensor], forward: Callable) -> Iterator[None]:
    """While active, each module computes ``forward(module, weight, x)`` with its own copy ``weight`` (an instance
    attribute shadows the class's ``forward``; removing it restores the class's)."""
    for module, weight in zip(modules, weights):
        module.forward = functools.partial(forward, module, weight)
    try:
        yield
    finally:
        for module in modules:
            del module.forward


def _out_in(weight: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """A linear layer's weight as (out, in), contiguous."""
    return weight.t().contiguous() if isinstance(module, Conv1D) else weight


def _packed_forward(module: nn.Module, packed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if x.numel() > PACKED_MAX_ROWS * x.shape[-1]:  # a prefill: MKL's sgemm is faster on many rows
        return type(module).forward(module, x)
    return torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")
