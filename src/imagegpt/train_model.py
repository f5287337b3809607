"""What a training run trains and how it scores it: the model (new from settings, or loaded), the AdamW optimizer,
and the objectives' loss (autoregressive, or BERT's masked pixels). :mod:`imagegpt.training` runs the loop."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from imagegpt.config import PRESETS, ImageGPTConfig
from imagegpt.data import TokenDataset
from imagegpt.heads import ImageGPTForCausalImageModeling
from imagegpt.train_config import TrainConfig

__all__ = ["build_model", "configure_optimizer", "bert_mask", "compute_loss", "evaluate"]


def _check_palette(model_dir: str, data_dir: Path) -> None:
    from imagegpt.processor import ImageGPTImageProcessor

    try:
        mine = ImageGPTImageProcessor.from_pretrained(model_dir).clusters
    except OSError:
        return  # a model without a palette file: nothing to compare
    data = ImageGPTImageProcessor.from_pretrained(data_dir).clusters
    if mine is not None and (mine.shape != data.shape or not np.allclose(mine, data, atol=1e-6)):
        raise ValueError(f"the palette of {model_dir} differs from the one {data_dir} was tokenized with; tokenize "
                         f"the images with --palette {model_dir}")  # fmt: skip


def build_model(cfg: TrainConfig, dataset: TokenDataset) -> ImageGPTForCausalImageModeling:
    """A new model from ``cfg.model`` (fields; vocab_size and n_positions from the data) or one loaded from a path."""
    vocab, positions = dataset.vocab_size, dataset.height * dataset.width
    overrides: dict[str, Any] = {f"{k}_pdrop": cfg.dropout for k in ("resid", "embd", "attn")}
    if cfg.objective == "bert":
        overrides["bidirectional"] = True  # read by ImageGPTModel; saved in config.json
    if isinstance(cfg.model, str):
        model = ImageGPTForCausalImageModeling.from_pretrained(cfg.model, **overrides)
        config = model.config
        if config.vocab_size != vocab:
            raise ValueError(f"{cfg.model} has vocab_size {config.vocab_size} ({config.vocab_size - 1} colors) but "
                             f"{dataset.directory} uses {vocab - 1} colors; tokenize with its palette")  # fmt: skip
        if config.n_positions < positions:
            raise ValueError(f"{cfg.model} has {config.n_positions} positions; {dataset.height}x{dataset.width} "
                             f"images need {positions}")  # fmt: skip
        if cfg.objective == "autoregressive" and getattr(config, "bidirectional", False):
            raise ValueError(f"{cfg.model} is bidirectional (BERT); train it with objective = \"bert\"")
        _check_palette(cfg.model, dataset.directory)
        return model.train()
    fields = dict(cfg.model)
    preset = PRESETS.get(fields.pop("preset", None) or "", {})
    for key, value in (("vocab_size", vocab), ("n_positions", positions)):
        if key in fields and fields[key] != value:
            raise ValueError(f"model.{key} = {fields[key]} does not fit the data in {dataset.directory} ({key} "
                             f"{value}); leave it out: it is taken from the data")  # fmt: skip
    drop = {k: v for k, v in overrides.items() if k.endswith("_pdrop")}
    config = ImageGPTConfig(**{**preset, **drop, **fields, "vocab_size": vocab, "n_positions": positions,
                               **{k: v for k, v in overrides.items() if k == "bidirectional"}})  # fmt: skip
    return ImageGPTForCausalImageModeling(config).train()


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW: decay on parameters with >= 2 dims (matrices, embeddings), none on norms and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # fmt: skip
    fused = {"fused": True} if device.type == "cuda" else {}  # one kernel for the whole update
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **fused)


def bert_mask(pixels: torch.Tensor, prob: float, mask_id: int, generator: torch.Generator) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """Replace ``round(prob * L)`` (at least 1) random positions of each row by ``mask_id``: (inputs, bool mask)."""
    b, length = pixels.shape
    n = max(1, round(prob * length))
    scores = torch.rand(b, length, generator=generator)  # on the CPU: the same masks on every device
    mask = torch.zeros(b, length, dtype=torch.bool)
    mask.scatter_(1, scores.topk(n, dim=1).indices, True)
    mask = mask.to(pixels.device)
    return pixels.masked_fill(mask, mask_id), mask


def compute_loss(model: torch.nn.Module, ids: torch.Tensor, objective: str, *, mask_prob: float = 0.15,
                 mask_id: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Mean cross-entropy (nats per scored pixel) of a batch ``ids`` (B, 1 + H*W) led by the start token."""
    if objective == "autoregressive":
        logits = model(ids[:, :-1], use_cache=False, return_dict=True).logits  # the last pixel is only a target
        return F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
    pixels = ids[:, 1:]
    inputs, mask = bert_mask(pixels, mask_prob, int(ids[0, 0]) if mask_id is None else mask_id,
                             generator if generator is not None else torch.Generator())  # fmt: skip
    logits = model(inputs, use_cache=False, return_dict=True).logits
    return F.cross_entropy(logits[mask].float(), pixels[mask])  # scored at the masked positions only


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[torch.Tensor], cfg: TrainConfig, device: torch.device,
             autocast: Any = contextlib.nullcontext) -> float:  # fmt: skip
    """Mean loss (nats per scored pixel) over fixed ``batches``; BERT masks are seeded, so equal each time."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(cfg.seed)
    total, count = 0.0, 0
    for batch in batches:
        with autocast():
            loss = compute_loss(model, batch.to(device), cfg.objective, mask_prob=cfg.bert_mask_prob,
                                generator=generator)  # fmt: skip
        total, count = total + loss.item() * len(batch), count + len(batch)
    model.train(was_training)
    return total / max(count, 1)
