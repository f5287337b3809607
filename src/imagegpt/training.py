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
                          (and {"step", "event": "resume", "changed": {key: {"from", "to"}}} where a resume
                          changed settings)
    loss.png              train and validation loss curves
    checkpoints/step-0000500/  config.json, model.safetensors, preprocessor_config.json, trainer_state.pt
    checkpoints/latest    the name of the newest complete checkpoint
    final/                the last weights in save_pretrained layout (``imagegpt complete --model out_dir/final``)

A checkpoint is built in a hidden temporary directory beside its final name, fsynced, then renamed, and only
then does ``latest`` move to it: a crash leaves the previous checkpoint and pointer as they were. The run holds
an OS lock on ``out_dir/.lock`` (:mod:`imagegpt.run_dir`): a second run into the same directory is refused. Nothing
non-finite is applied or saved (:mod:`imagegpt.divergence`). A resume restores the saved settings and may change
only the safe ones (:func:`imagegpt.train_config.resume_changes`); the changes are recorded in ``log.jsonl``.
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

from imagegpt.data import BatchIterator, TokenDataset
from imagegpt.distributed import DistInfo, all_gather_objects, init_distributed, teardown
from imagegpt.divergence import TrainingDiverged, all_finite, global_norm
from imagegpt.heads import ImageGPTForCausalImageModeling
from imagegpt.layout import WEIGHT_LAYOUT, optimizer_state_from_linear_layout
from imagegpt.run_dir import (DiskFullError, RunLock, append_log, is_disk_full, read_log, remove_stale_temp_files,
                              rewrite_log)  # fmt: skip
from imagegpt.train_checkpoint import latest_checkpoint, read_state, rng_state, set_rng_state, write_checkpoint
from imagegpt.train_config import TrainConfig, resume_changes
from imagegpt.train_model import bert_mask, build_model, compute_loss, configure_optimizer, evaluate
from imagegpt.viz import plot_loss_curve

logger = logging.getLogger(__name__)

__all__ = ["train", "TrainingDiverged", "lr_at", "build_model", "configure_optimizer", "compute_loss",
           "bert_mask", "evaluate", "latest_checkpoint", "plot_loss_curve"]  # fmt: skip

PROCESSOR_FILE = "preprocessor_config.json"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of update ``step`` (0-based): linear warmup, then cosine decay to ``min_lr`` at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if step >= cfg.max_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


class _Trainer:
    """State of one run; :func:`train` is the public entry point."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, lock: RunLock | None, stop: _Stop) -> None:
        self.stop = stop  # set by SIGINT/SIGTERM, from before this constructor runs
        if not cfg.data:
            raise ValueError("no training data: set data = \"DIR\" (a directory written by imagegpt tokenize)")
        self.cfg, self.info, self.device = cfg, info, info.device
        self.out, self.root = Path(cfg.out_dir), Path(cfg.out_dir) / "checkpoints"
        self.train_ds = TokenDataset(cfg.data, "train")
        val = TokenDataset(cfg.data, "val")
        b, n = cfg.batch_size, len(val)
        self.val_batches = [val.get_batch(np.arange(i, min(i + b, n))) for i in range(0, n, b)][: cfg.eval_batches]
        self.pixels = self.train_ds.height * self.train_ds.width
        if lock is not None:
            lock.acquire()  # before anything in out_dir is read or written; refuses while another run holds it
            remove_stale_temp_files(self.out, self.root, self.out / "final")
        resume_from = latest_checkpoint(self.out)
        if resume_from is not None and not cfg.resume:
            raise FileExistsError(f"{self.out} already holds checkpoints ({resume_from.name}); resume with "
                                  "--resume (resume = true) or choose another out_dir")  # fmt: skip
        state, self.changes = None, {}
        if resume_from is not None:
            state = read_state(resume_from)
            if "config" in state:  # the settings the checkpoint was trained with: only safe ones may change
                self.changes = resume_changes(json.loads(state["config"]), cfg)
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
        if state is not None:
            self._load(resume_from, state)
        forward = torch.compile(self.model) if cfg.compile else self.model
        if info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            forward = torch.nn.parallel.DistributedDataParallel(forward, device_ids=ids)
        self.forward = forward
        self.out_of_time = False

    def _load(self, path: Path, state: dict) -> None:
        if state["world_size"] != self.info.world_size:
            raise ValueError(f"{path} was written by {state['world_size']} processes, this run has "
                             f"{self.info.world_size}; resume with the same number")  # fmt: skip
        optimizer = state["optimizer"]
        if state.get("weight_layout") != WEIGHT_LAYOUT:  # written while the projections were nn.Linear (out, in)
            names = {id(p): n for n, p in self.model.named_parameters()}
            index = {i: names[id(p)] for saved, group in zip(optimizer["param_groups"], self.optimizer.param_groups)
                     for i, p in zip(saved["params"], group["params"])}  # fmt: skip
            optimizer = optimizer_state_from_linear_layout(optimizer, index)
        self.optimizer.load_state_dict(optimizer)
        self.batches.load_state_dict(state["batches"])
        self.step, self.elapsed_before = int(state["step"]), float(state["elapsed_s"])
        set_rng_state(state["rng"][self.info.rank], self.device)
        logger.info("resumed from %s at step %d", path, self.step)

    def _diverged(self, step: int, what: str, loss: float = float("nan")) -> TrainingDiverged:
        self.optimizer.zero_grad(set_to_none=True)
        return TrainingDiverged(step, what, self.checkpoint, lr=self.cfg.lr, warmup_steps=self.cfg.warmup_steps,
                                out_dir=self.out, loss=loss)  # fmt: skip

    def _save(self) -> None:
        opt_state = [v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        if not all_finite([*self.model.parameters(), *opt_state]):  # never write a non-finite checkpoint
            raise self._diverged(self.step, "the weights or the optimizer state hold NaN or infinite values")
        rng = all_gather_objects(rng_state(self.device), self.info)  # every rank's dropout stream
        if self.info.is_main:
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "rng": rng,
                     "batches": self.batches.state_dict(), "world_size": self.info.world_size,
                     "elapsed_s": self.elapsed_before + time.perf_counter() - self.start,
                     "lr": lr_at(self.step - 1, self.cfg), "config": json.dumps(self.cfg.to_dict()),
                     "weight_layout": WEIGHT_LAYOUT}  # fmt: skip
            files = [Path(self.cfg.data) / PROCESSOR_FILE]
            try:
                self.checkpoint = write_checkpoint(self.root, self.step, self.model, state, files, self.cfg.keep_last)
            except OSError as e:
                if not is_disk_full(e):
                    raise
                kept = f"the previous checkpoint {self.checkpoint} is intact" if self.checkpoint else (
                    "no checkpoint yet")
                raise DiskFullError(e.errno, f"the disk is full: could not write checkpoint step-{self.step:07d} into "
                                    f"{self.root} ({e.strerror}); {kept}. Free space (or set keep_last lower), then "
                                    "resume with --resume") from None  # fmt: skip
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

    @property
    def stop_signal(self) -> int | None:
        return self.stop.signum

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
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = global_norm(p.grad for p in params).to(self.device)  # NaN/inf when any gradient is
        flag = torch.tensor(float(self.stop_signal is not None or self.out_of_time), device=self.device)
        stats = torch.stack([total.float(), flag, grad_norm])
        if self.info.distributed:  # one all-reduce: the mean loss, whether any rank must stop, finite gradients
            torch.distributed.all_reduce(stats)
        loss_value, stop, norm_sum = stats[0].item() / self.info.world_size, stats[1].item() > 0, stats[2].item()
        if not math.isfinite(loss_value):
            raise self._diverged(self.step + 1, f"the loss is {loss_value}", loss_value)
        if not math.isfinite(norm_sum):  # checked before optimizer.step: the update is never applied
            raise self._diverged(self.step + 1, f"the gradient norm is {norm_sum} (the loss was {loss_value:.4f})")
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, cfg.grad_clip, grad_norm)
        try:
            self.optimizer.step()
        except RuntimeError as e:  # AdamW's step size overflows float32 (lr near 3.4e38)
            if "overflow" not in str(e):
                raise
            what = f"the update overflows float32 (lr {lr_at(self.step, cfg):g})"
            raise self._diverged(self.step + 1, what) from None
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if not math.isfinite(global_norm(self.model.parameters()).item()):  # a finite update can still overflow
            what = f"the update made weights NaN or infinite (lr {lr_at(self.step - 1, cfg):g})"
            raise self._diverged(self.step, what, loss_value)
        return loss_value, stop

    def _start_log(self, log_path: Path) -> list[dict]:
        """The log up to the checkpoint (a partial last line dropped), rewritten atomically; resume changes added."""
        records = read_log(log_path, upto_step=self.step) if self.step else []
        if self.changes:
            changed = {k: {"from": old, "to": new} for k, (old, new) in self.changes.items()}
            records.append({"step": self.step, "event": "resume", "changed": changed})
            logger.warning("resuming at step %d with changed settings: %s", self.step, ", ".join(
                f"{k} {old!r} -> {new!r}" for k, (old, new) in self.changes.items()))  # fmt: skip
        rewrite_log(log_path, records)
        return records

    def run(self, on_step: Callable[[int, dict], bool | None] | None) -> dict[str, Any]:
        from tqdm.auto import tqdm

        cfg, main = self.cfg, self.info.is_main
        log_path = self.out / "log.jsonl"
        records: list[dict] = []
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "train_config.json")  # what is on disk now: the checkpoint's model, these settings
            records = self._start_log(log_path)
        tokens_per_step = cfg.batch_size * cfg.grad_accum * self.info.world_size * self.pixels
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
                    append_log(log_path, record)
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
        if last_saved != self.step:  # resumed at max_steps: nothing new, but make sure the state is on disk
            self._save()
        elapsed = time.perf_counter() - self.start
        final_dir = self.out / "final"
        if main:
            self.model.save_pretrained(final_dir)
            shutil.copy2(Path(cfg.data) / PROCESSOR_FILE, final_dir / PROCESSOR_FILE)
            plot_loss_curve(records, self.out / "loss.png")
        return {"steps": self.step, "steps_this_run": self.step - first_step, "stopped": stopped,
                "signal": self.stop_signal, "changed": self.changes,
                "train_loss": loss, "train_bits_per_dim": loss / math.log(2), "val_loss": val,
                "val_bits_per_dim": val / math.log(2), "elapsed_s": elapsed,
                "tokens_per_s": tokens_per_step * (self.step - first_step) / max(elapsed, 1e-9),
                "final_dir": str(final_dir), "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "out_dir": str(self.out), "num_parameters": self.model.num_parameters(),
                "rank": self.info.rank, "world_size": self.info.world_size}  # fmt: skip


class _Stop:
    """SIGINT/SIGTERM handler of a run: the first signal asks for a checkpoint and a stop after the current step
    (also when it comes while the run is still starting); a second one stops at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.handlers: dict = {}

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signum = signum
        logger.warning("got %s: finishing this step, then saving a checkpoint", signal.Signals(signum).name)

    def __enter__(self) -> "_Stop":
        if threading.current_thread() is threading.main_thread():
            self.handlers = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self.handlers.items():
            signal.signal(s, h)


def train(cfg: TrainConfig, on_step: Callable[[int, dict], bool | None] | None = None) -> dict[str, Any]:
    """Train (or, with ``cfg.resume``, continue training) as ``cfg`` says; returns a summary dict.

    Under torchrun this joins the process group (and leaves it at the end). ``on_step(step, record)`` is called
    after every update with the step's record (loss, lr); returning True stops after a checkpoint, as SIGINT and
    SIGTERM do. Raises :class:`TrainingDiverged` when the loss, gradients or weights become non-finite (nothing
    non-finite is saved), :class:`~imagegpt.run_dir.RunLocked` when another run holds ``out_dir``,
    :class:`~imagegpt.run_dir.DiskFullError` when the disk fills up, ValueError / OSError for bad settings or
    data (a resume that changes a setting other than :data:`~imagegpt.train_config.SAFE_ON_RESUME` included).
    Summary keys: steps, steps_this_run, stopped ("completed", "signal", "time", "callback"), signal (its number
    or None), changed (settings a resume changed: {key: (old, new)}), train_loss, val_loss (nats per pixel),
    *_bits_per_dim, elapsed_s, tokens_per_s, final_dir, checkpoint, out_dir, num_parameters, rank, world_size.
    """
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = init_distributed(cfg.device)
    lock = RunLock(cfg.out_dir) if info.is_main else None
    trainer = None
    try:
        with _Stop() as stop:
            trainer = _Trainer(cfg, info, lock, stop)
            return trainer.run(on_step)
    except OSError as e:
        if not is_disk_full(e) or isinstance(e, DiskFullError):
            raise
        last = trainer.checkpoint if trainer is not None else None
        raise DiskFullError(e.errno, f"the disk is full: writing {e.filename or cfg.out_dir} failed ({e.strerror}); "
                            f"the last checkpoint {last} is intact. Free space, then resume with --resume") from None
    finally:
        if lock is not None:
            lock.release()
        if owns_group:
            teardown()
