"""Pretraining ImageGPT on a token dataset: a nanoGPT-style loop with exact resume, DDP and safe checkpoints.

Example::

    from imagegpt.train_config import load_config
    from imagegpt.training import train

    summary = train(load_config("train.toml", {"max_steps": 2000}))
    print(summary["val_bits_per_dim"], summary["final_dir"])

Objectives: ``"autoregressive"`` predicts every pixel from the ones before it (the input is ``[start, p0 ..
p(HW-2)]``, so H*W positions suffice); ``"bert"`` (iGPT's BERT objective) trains a bidirectional model on the H*W
pixels with ``bert_mask_prob`` of them replaced by a [MASK] id and scores only those. The [MASK] id is the start
token's id (``vocab_size - 1``): BERT inputs hold no start token, so the id is free, the vocabulary stays the
palette's, and a BERT checkpoint has the same shapes as an autoregressive one.

Optimizer: AdamW with weight decay on every parameter of 2 or more dimensions (linear weights, the two embedding
tables, the LM head), none on norm weights and biases (as nanoGPT); the learning rate warms up linearly for
``warmup_steps`` then follows a cosine to ``min_lr`` at ``max_steps``. It is a pure function of the step
(:func:`lr_at`), so a resume needs no scheduler state.

Run directory (``out_dir``)::

    train_config.json     the resolved TrainConfig
    log.jsonl             one JSON record per logged step: step, loss, lr, tokens_per_s, elapsed_s, val_loss ...
    loss.png              train and validation loss curves
    checkpoints/step-0000500/  config.json, model.safetensors, preprocessor_config.json, trainer_state.pt
    checkpoints/latest    the name of the newest complete checkpoint
    final/                the last weights in save_pretrained layout (``imagegpt complete --model out_dir/final``)

A checkpoint is built in a hidden temporary directory beside its final name, fsynced, then renamed, and only
then does ``latest`` move to it: a crash leaves the previous checkpoint and pointer as they were.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from imagegpt.config import PRESETS, ImageGPTConfig
from imagegpt.data import TokenDataset, BatchIterator
from imagegpt.distributed import DistInfo, all_gather_objects, init_distributed, teardown
from imagegpt.heads import ImageGPTForCausalImageModeling
from imagegpt.train_checkpoint import STATE_FILE, latest_checkpoint, rng_state, set_rng_state, write_checkpoint
from imagegpt.train_config import TrainConfig
from imagegpt.viz import plot_loss_curve

logger = logging.getLogger(__name__)

__all__ = ["train", "TrainingDiverged", "lr_at", "build_model", "configure_optimizer", "compute_loss",
           "bert_mask", "evaluate", "latest_checkpoint", "plot_loss_curve"]  # fmt: skip

PROCESSOR_FILE = "preprocessor_config.json"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; no update was applied and the last checkpoint is untouched."""

    def __init__(self, step: int, loss: float, checkpoint: Path | None) -> None:
        where = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
        super().__init__(f"training diverged at step {step}: loss is {loss}; {where}. Lower lr, raise warmup_steps "
                         "or set grad_clip, then resume.")  # fmt: skip
        self.step, self.loss, self.checkpoint = step, loss, checkpoint


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of update ``step`` (0-based): linear warmup, then cosine decay to ``min_lr`` at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if step >= cfg.max_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


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


class _Trainer:
    """State of one run; :func:`train` is the public entry point."""

    def __init__(self, cfg: TrainConfig, info: DistInfo) -> None:
        if not cfg.data:
            raise ValueError("no training data: set data = \"DIR\" (a directory written by imagegpt tokenize)")
        self.cfg, self.info, self.device = cfg, info, info.device
        self.out, self.root = Path(cfg.out_dir), Path(cfg.out_dir) / "checkpoints"
        self.train_ds = TokenDataset(cfg.data, "train")
        val = TokenDataset(cfg.data, "val")
        b, n = cfg.batch_size, len(val)
        self.val_batches = [val.get_batch(np.arange(i, min(i + b, n))) for i in range(0, n, b)][: cfg.eval_batches]
        self.pixels = self.train_ds.height * self.train_ds.width
        resume_from = latest_checkpoint(self.out)
        if resume_from is not None and not cfg.resume:
            raise FileExistsError(f"{self.out} already holds checkpoints ({resume_from.name}); resume with "
                                  "--resume (resume = true) or choose another out_dir")  # fmt: skip
        if cfg.dtype == "bfloat16" and self.device.type != "cuda":
            raise ValueError("dtype bfloat16 (autocast) is used on CUDA only; use dtype = \"float32\" on the CPU")
        use_bf16 = self.device.type == "cuda" and cfg.dtype != "float32"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        if resume_from is not None:
            self.model = ImageGPTForCausalImageModeling.from_pretrained(resume_from).train()
        else:
            self.model = build_model(cfg, self.train_ds)
        self.model.to(self.device)
        self.optimizer = configure_optimizer(self.model, cfg, self.device)
        self.batches = BatchIterator(self.train_ds, cfg.batch_size, seed=cfg.seed, rank=info.rank,
                                     world_size=info.world_size)  # fmt: skip
        self._iter = None
        self.step, self.elapsed_before, self.checkpoint = 0, 0.0, resume_from
        torch.manual_seed(cfg.seed + info.rank)  # dropout streams differ between ranks
        if resume_from is not None:
            self._load(resume_from)
        forward = torch.compile(self.model) if cfg.compile else self.model
        if info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            forward = torch.nn.parallel.DistributedDataParallel(forward, device_ids=ids)
        self.forward = forward
        self.stop_signal: int | None = None
        self.out_of_time = False

    def _load(self, path: Path) -> None:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        if state["world_size"] != self.info.world_size:
            raise ValueError(f"{path} was written by {state['world_size']} processes, this run has "
                             f"{self.info.world_size}; resume with the same number")  # fmt: skip
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["batches"])
        self.step, self.elapsed_before = int(state["step"]), float(state["elapsed_s"])
        set_rng_state(state["rng"][self.info.rank], self.device)
        logger.info("resumed from %s at step %d", path, self.step)

    def _save(self) -> None:
        rng = all_gather_objects(rng_state(self.device), self.info)  # every rank's dropout stream
        if self.info.is_main:
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "rng": rng,
                     "batches": self.batches.state_dict(), "world_size": self.info.world_size,
                     "elapsed_s": self.elapsed_before + time.perf_counter() - self.start,
                     "lr": lr_at(self.step - 1, self.cfg), "config": json.dumps(self.cfg.to_dict())}  # fmt: skip
            files = [Path(self.cfg.data) / PROCESSOR_FILE]
            self.checkpoint = write_checkpoint(self.root, self.step, self.model, state, files, self.cfg.keep_last)
            logger.info("saved %s", self.checkpoint)
        if self.info.distributed:
            torch.distributed.barrier()  # nobody runs ahead (or exits) while rank 0 writes

    def _next_batch(self) -> torch.Tensor:
        while True:  # epochs follow each other; BatchIterator's state says where we are
            if self._iter is None:
                self._iter = iter(self.batches)
            try:
                return next(self._iter)
            except StopIteration:
                self._iter = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.stop_signal = signum
        logger.warning("got %s: finishing this step, then saving a checkpoint", signal.Signals(signum).name)

    def _train_step(self) -> tuple[float, bool]:
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            ids = self._next_batch().to(self.device, non_blocking=True)
            last = micro == cfg.grad_accum - 1
            # gradients are averaged across ranks once per update, on the last micro-batch
            sync = self.forward.no_sync() if self.info.distributed and not last else contextlib.nullcontext()
            generator = torch.Generator().manual_seed(hash((cfg.seed, self.info.rank, self.step, micro)) % 2**63)
            with sync:
                with self.autocast():
                    loss = compute_loss(self.forward, ids, cfg.objective, mask_prob=cfg.bert_mask_prob,
                                        generator=generator)  # fmt: skip
                (loss / cfg.grad_accum).backward()
            total += loss.detach() / cfg.grad_accum
        limit = cfg.max_time_minutes
        self.out_of_time = limit is not None and time.perf_counter() - self.start > 60 * limit
        stats = torch.stack([total.float(), torch.tensor(float(self.stop_signal is not None or self.out_of_time),
                                                         device=self.device)])  # fmt: skip
        if self.info.distributed:  # one all-reduce: the mean loss, and whether any rank must stop
            torch.distributed.all_reduce(stats)
        loss_value, stop = stats[0].item() / self.info.world_size, stats[1].item() > 0
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(self.step + 1, loss_value, self.checkpoint)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss_value, stop

    def run(self, on_step: Callable[[int, dict], bool | None] | None) -> dict[str, Any]:
        from tqdm.auto import tqdm

        cfg, main = self.cfg, self.info.is_main
        log_path = self.out / "log.jsonl"
        records: list[dict] = []
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "train_config.json")
            if log_path.is_file() and self.step:  # keep the history up to the checkpoint, drop what came after
                lines = log_path.read_text(encoding="utf-8").splitlines()
                records = [r for r in map(json.loads, filter(None, lines)) if r["step"] <= self.step]
            log_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
            for stale in self.root.glob(".step-*.tmp"):  # left by a crash mid-save
                shutil.rmtree(stale, ignore_errors=True)
        tokens_per_step = cfg.batch_size * cfg.grad_accum * self.info.world_size * self.pixels
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step",
                   disable=not (main and cfg.progress))
        self.start = last_time = time.perf_counter()
        first_step, last_step_logged, last_saved, stopped = self.step, self.step, self.step, "completed"
        loss = val = float("nan")
        try:
            while self.step < cfg.max_steps:
                loss, stop = self._train_step()
                record = {"step": self.step, "loss": loss, "lr": lr_at(self.step - 1, cfg)}
                if on_step is not None and on_step(self.step, record):
                    stop = True
                final = stop or self.step == cfg.max_steps
                if main and self.val_batches and (self.step % cfg.eval_interval == 0 or final):
                    val = evaluate(self.model, self.val_batches, cfg, self.device, self.autocast)
                    record.update(val_loss=val, val_bits_per_dim=val / math.log(2))
                now = time.perf_counter()
                if main and (self.step % cfg.log_interval == 0 or "val_loss" in record or final):
                    record.update(tokens_per_s=tokens_per_step * (self.step - last_step_logged) / (now - last_time),
                                  elapsed_s=self.elapsed_before + now - self.start)  # fmt: skip
                    last_step_logged, last_time = self.step, now
                    records.append(record)
                    with open(log_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(record) + "\n")
                    logger.info("step %d: %s", self.step, record)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if self.step % cfg.save_interval == 0 or final:
                    self._save()
                    last_saved = self.step
                if main and "val_loss" in record:
                    plot_loss_curve(records, self.out / "loss.png")
                if stop:
                    stopped = "signal" if self.stop_signal is not None else "time" if self.out_of_time else "callback"
                    break
        finally:
            bar.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        if last_saved != self.step:  # resumed at max_steps: nothing new, but make sure the state is on disk
            self._save()
        elapsed = time.perf_counter() - self.start
        final_dir = self.out / "final"
        if main:
            self.model.save_pretrained(final_dir)
            shutil.copy2(Path(cfg.data) / PROCESSOR_FILE, final_dir / PROCESSOR_FILE)
            plot_loss_curve(records, self.out / "loss.png")
        return {"steps": self.step, "steps_this_run": self.step - first_step, "stopped": stopped,
                "train_loss": loss, "train_bits_per_dim": loss / math.log(2), "val_loss": val,
                "val_bits_per_dim": val / math.log(2), "elapsed_s": elapsed,
                "tokens_per_s": tokens_per_step * (self.step - first_step) / max(elapsed, 1e-9),
                "final_dir": str(final_dir), "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "out_dir": str(self.out), "num_parameters": self.model.num_parameters(),
                "rank": self.info.rank, "world_size": self.info.world_size}  # fmt: skip


def train(cfg: TrainConfig, on_step: Callable[[int, dict], bool | None] | None = None) -> dict[str, Any]:
    """Train (or, with ``cfg.resume``, continue training) as ``cfg`` says; returns a summary dict.

    Under torchrun this joins the process group (and leaves it at the end). ``on_step(step, record)`` is called
    after every update with the step's record (loss, lr); returning True stops after a checkpoint, as SIGINT and
    SIGTERM do. Raises :class:`TrainingDiverged` on a non-finite loss, ValueError / OSError for bad settings or
    data. Summary keys: steps, stopped ("completed", "signal", "time", "callback"), train_loss, val_loss (nats
    per pixel), *_bits_per_dim, elapsed_s, tokens_per_s, final_dir, checkpoint, out_dir, num_parameters, rank,
    world_size.
    """
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = init_distributed(cfg.device)
    try:
        return _Trainer(cfg, info).run(on_step)
    finally:
        if owns_group:
            teardown()
