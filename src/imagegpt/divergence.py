"""Divergence guards of the training loop: nothing non-finite is applied, kept or saved.

Each update is checked three times: the loss and the global gradient norm before ``optimizer.step`` (a NaN or
infinite gradient is never applied), the weights after it (a finite gradient times a huge learning rate can
still overflow them), and the optimizer state before a checkpoint is written. A failed check raises
:class:`TrainingDiverged`, which names the last finite checkpoint and what to change before resuming from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = ["TrainingDiverged", "global_norm", "all_finite"]


class TrainingDiverged(RuntimeError):
    """The loss, the gradients, the weights or the optimizer state became NaN or infinite.

    Nothing of the failing step reached a checkpoint: ``checkpoint`` (if any) is the last finite one.
    """

    def __init__(self, step: int, what: str, checkpoint: Path | None, *, lr: float | None = None,
                 warmup_steps: int | None = None, out_dir: Path | str | None = None,
                 loss: float = float("nan")) -> None:  # fmt: skip
        fix = []
        if lr is not None:
            fix.append(f"--set lr={lr / 10:g}")
        if warmup_steps is not None:
            fix.append(f"--set warmup_steps={max(100, 2 * warmup_steps)}")
        fix_text = " ".join(fix) or "--set lr=... (lower)"
        if checkpoint is not None:
            where = (f"The last finite checkpoint is {checkpoint}; resume from it with a lower learning rate or a "
                     f"longer warmup: imagegpt train --out {out_dir} --resume {fix_text}")  # fmt: skip
        else:
            where = ("No checkpoint was written yet; start again with a lower learning rate or a longer warmup "
                     f"({fix_text})")
        super().__init__(f"training diverged at step {step}: {what}; nothing of this step was saved. {where}. "
                         "A gradient clip (grad_clip, default 1.0) also helps.")  # fmt: skip
        self.step, self.what, self.checkpoint, self.loss = step, what, checkpoint, loss


def global_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all ``tensors`` together (0-dim, float32); NaN or inf when any element is."""
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(tensors).float()


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every element of every floating-point tensor is finite (one device sync)."""
    floats = [t.detach() for t in tensors if t is not None and t.is_floating_point()]
    if not floats:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in floats]).all())
