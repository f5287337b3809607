"""Fine-tuning a pretrained iGPT as an image classifier (the paper's section 4.3).

:func:`finetune` turns a causal checkpoint into an :class:`~imagegpt.heads.ImageGPTForImageClassification` (a
linear head on the ``ln_f`` states averaged over positions) and trains every weight on labeled images, optionally
with the paper's joint objective ``L = L_clf + gen_weight * L_gen`` (the next-pixel loss, through the pretrained LM
head, is there to keep the features generative). Each step sees freshly augmented images (random crop after a
1.125x resize unless ``crop=False``, left-right flip unless ``flip=False``, as in pretraining). The head starts
random, or (``probe_init``) from a linear probe of the pretrained features (:func:`init_head_from_probe`).
Validation accuracy is measured every ``eval_interval`` steps; the best model is kept (written atomically, in
transformers' format), and so is the last one: on a small validation set the best step is a noisy pick, and the
last model is what the schedule ends on. Training stops after ``patience`` evaluations without improvement.
:func:`evaluate_classifier` and :func:`confusion_matrix` measure the result.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from imagegpt.checkpoint import atomic_write_text
from imagegpt.datasets import augment_images
from imagegpt.heads import ImageGPTForCausalImageModeling, ImageGPTForImageClassification
from imagegpt.probe import extract_features
from imagegpt.processor import ImageGPTImageProcessor
from imagegpt.training import configure_optimizer, lr_at

logger = logging.getLogger(__name__)

__all__ = ["FinetuneConfig", "finetune", "evaluate_classifier", "confusion_matrix", "joint_loss",
           "init_head_from_probe"]


@dataclasses.dataclass
class FinetuneConfig:
    """Settings of :func:`finetune`. Steps count optimizer updates of ``batch_size`` images."""

    batch_size: int = 32
    max_steps: int = 2000
    lr: float = 3e-4
    min_lr: float = 1e-5  # the cosine schedule ends here
    warmup_steps: int = 50
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    gen_weight: float = 0.0  # > 0: the paper's joint loss, L_clf + gen_weight * next-pixel loss
    probe_init: int = 0  # > 0: start the head from a linear probe on this many training images (LP-FT)
    augment: bool = True  # random crop + flip of every training batch
    flip: bool = True  # with augment: flip left-right half the time (off for digits and text, whose mirror differs)
    crop: bool = True  # with augment: random crop after a 1.125x resize (off for tiny images, where it distorts)
    dropout: float | None = None  # resid/embd/attn dropout during fine-tuning (None keeps the checkpoint's)
    eval_interval: int = 100
    eval_batch_size: int = 64
    patience: int = 5  # evaluations without a better validation accuracy before stopping; 0 never stops early
    max_time_minutes: float | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # autocast of the training forward: auto = bfloat16 on CUDA, float32 elsewhere
    progress: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        for name in ("batch_size", "max_steps", "eval_interval", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if min(self.min_lr, self.warmup_steps, self.patience, self.gen_weight, self.probe_init) < 0 or self.lr <= 0:
            raise ValueError("lr must be > 0; min_lr, warmup_steps, patience, gen_weight and probe_init >= 0")
        if self.augment and not (self.crop or self.flip):
            raise ValueError("augment with neither crop nor flip changes nothing; set augment=False instead")


def joint_loss(model: ImageGPTForImageClassification, lm_head: torch.nn.Module | None, ids: torch.Tensor,
               labels: torch.Tensor, gen_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward over ``ids[:, :-1]`` (ids: (B, 1 + H*W)): (total, classification loss, generative loss).

    The model sees what it saw in pretraining: the start token and every pixel but the last (which is only a
    target). The classifier pools all those positions; the next-pixel loss (0 unless ``gen_weight`` > 0) scores
    them against ``ids[:, 1:]`` through ``lm_head``.
    """
    hidden = model.transformer(ids[:, :-1], use_cache=False, return_dict=True).last_hidden_state  # (B, H*W, C)
    logits = model.score(hidden.mean(dim=1))  # (B, num_labels)
    clf = F.cross_entropy(logits.float(), labels)
    gen = torch.zeros((), device=ids.device)
    if gen_weight > 0 and lm_head is not None:
        pixel_logits = lm_head(hidden)  # (B, H*W, vocab-1): the start token is never a target
        gen = F.cross_entropy(pixel_logits.flatten(0, 1).float(), ids[:, 1:].flatten())
    return clf + gen_weight * gen, clf, gen


@torch.no_grad()
def evaluate_classifier(model: ImageGPTForImageClassification, ids: np.ndarray | torch.Tensor, labels: Any,
                        batch_size: int = 64, progress: bool = False, desc: str = "evaluate"
                        ) -> tuple[float, np.ndarray]:  # fmt: skip
    """(accuracy, predicted class ids (N,)) of ``model`` on ``ids`` (N, 1 + H*W) with true ``labels`` (N,).

    The model sees ``ids[:, :-1]``, as in :func:`joint_loss` (and as to call transformers' classifier)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    preds = []
    for start in tqdm(range(0, len(ids), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        logits = model(ids[start : start + batch_size, :-1].to(device), use_cache=False, return_dict=True).logits
        preds.append(logits.argmax(-1).cpu())
    model.train(was_training)
    pred = torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)
    y = np.asarray(labels)
    return (float((pred == y).mean()) if len(y) else math.nan), pred


@torch.no_grad()
def init_head_from_probe(model: ImageGPTForImageClassification, ids: np.ndarray, labels: np.ndarray,
                         batch_size: int = 64, l2: float = 1e-4, max_iter: int = 300, progress: bool = False) -> float:
    """Set ``model.score`` to a logistic regression fit on the model's own pooled features of ``ids`` (N, 1 + H*W).

    A freshly initialized head sends near-random gradients into the pretrained trunk for hundreds of steps;
    starting from the linear probe instead (LP-FT: Kumar et al., 2022) makes step 0 as good as the probe. The
    head has no bias (as transformers'), so the features are only scaled (not centered) for the fit and the
    scale is folded back into the weight. Returns the training accuracy.
    """
    n_layer = model.config.n_layer
    pooled = extract_features(model, ids, layers=[n_layer], batch_size=batch_size, progress=progress)[n_layer]
    x = torch.as_tensor(pooled, device=model.score.weight.device)  # (N, C): the ln_f output, pooled as the head pools
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=x.device)
    scale = x.std(dim=0).clamp_min(1e-6)
    z = x / scale
    w = torch.zeros(model.score.out_features, x.shape[1], device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    model.score.weight.copy_((w.detach() / scale).to(model.score.weight.dtype))
    return float(((z @ w.detach().T).argmax(-1) == y).float().mean())


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return matrix


def _save_atomic(model: ImageGPTForImageClassification, processor: ImageGPTImageProcessor, path: Path) -> None:
    """Write the model and its palette into ``path`` by way of a temporary directory: a crash keeps the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        os.chmod(tmp, 0o755)
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_inputs(ids: np.ndarray, labels: np.ndarray, images: np.ndarray | None, n_labels: int, what: str) -> None:
    if len(ids) != len(labels) or (images is not None and len(images) != len(labels)):
        raise ValueError(f"{what}: {len(labels)} labels for {len(ids)} images; pass one label per image")
    if len(labels) == 0:
        raise ValueError(f"{what}: no images")
    if labels.min() < 0 or labels.max() >= n_labels:
        raise ValueError(f"{what}: labels must be class ids in [0, {n_labels}), got {labels.min()}..{labels.max()}")


def finetune(model_name_or_path: str | os.PathLike, train: tuple[np.ndarray, np.ndarray, np.ndarray | None],
             val: tuple[np.ndarray, np.ndarray], out_dir: str | os.PathLike, cfg: FinetuneConfig | None = None,
             *, num_labels: int | None = None, label_names: Sequence[str] | None = None,
             on_eval: Callable[[dict], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Fine-tune ``model_name_or_path`` as a classifier; the best model by validation accuracy goes to
    ``out_dir/best`` (config.json, model.safetensors, preprocessor_config.json: transformers loads it), the model
    of the last step to ``out_dir/last``.

    Args:
        train: (ids (N, 1 + H*W), labels (N,), images (N, H, W, 3) uint8 or None) from
            :func:`imagegpt.datasets.load_labeled`; the images are needed for augmentation.
        val: (ids, labels) of the validation images that choose the best step.
        num_labels: classes (default: the largest training label + 1).
        label_names: names of the classes, written as the config's id2label.
        on_eval: called with each evaluation record.

    Returns:
        {"best_step", "best_val_acc", "steps", "last_val_acc", "stopped", "history", "seconds"} ("steps": the
        last step, whose model is in ``last``); history holds a record per
        evaluation ({"step", "loss", "clf_loss", "gen_loss", "val_acc", "lr"}).
    """
    from tqdm.auto import tqdm

    cfg = cfg or FinetuneConfig()
    ids, labels, images = train
    ids, labels, val_ids, val_labels = (np.asarray(a) for a in (ids, labels, val[0], val[1]))
    n_labels = int(num_labels if num_labels is not None else labels.max() + 1)
    _check_inputs(ids, labels, images, n_labels, "train")
    _check_inputs(val_ids, val_labels, None, n_labels, "val")
    if cfg.augment and images is None:
        raise ValueError("augmentation needs the training images (load_labeled(..., keep_images=True)), or "
                         "set augment=False")  # fmt: skip
    names = list(label_names) if label_names is not None else [str(i) for i in range(n_labels)]
    if len(names) != n_labels:
        raise ValueError(f"{len(names)} label names for {n_labels} classes")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    if cfg.dtype == "bfloat16" and device.type != "cuda":
        raise ValueError('dtype bfloat16 (autocast) is used on CUDA only; use dtype "float32" on the CPU')
    use_bf16 = device.type == "cuda" and cfg.dtype != "float32"
    torch.manual_seed(cfg.seed)
    overrides: dict[str, Any] = {"num_labels": n_labels, "id2label": dict(enumerate(names)),
                                 "label2id": {n: i for i, n in enumerate(names)}}  # fmt: skip
    if cfg.dropout is not None:
        overrides.update({f"{k}_pdrop": cfg.dropout for k in ("resid", "embd", "attn")})
    model = ImageGPTForImageClassification.from_pretrained(model_name_or_path, **overrides).to(device).train()
    processor = ImageGPTImageProcessor.from_pretrained(model_name_or_path)
    if ids.ndim != 2 or ids.shape[1] - 1 > model.config.n_positions:  # the model sees ids[:, :-1]
        raise ValueError(f"images of {ids.shape[1] - 1} pixels do not fit {model_name_or_path} "
                         f"({model.config.n_positions} positions); load them with its processor")  # fmt: skip
    if cfg.probe_init:
        n = min(cfg.probe_init, len(labels))
        acc = init_head_from_probe(model, ids[:n], labels[:n], cfg.eval_batch_size, progress=cfg.progress)
        logger.info("head initialized from a linear probe on %d training images (training accuracy %.4f)", n, acc)
    lm_head = None
    if cfg.gen_weight > 0:
        if getattr(model.config, "bidirectional", False):
            raise ValueError(f"{model_name_or_path} is bidirectional (BERT): the next-pixel loss does not apply; "
                             "set gen_weight=0")  # fmt: skip
        lm_head = ImageGPTForCausalImageModeling.from_pretrained(model_name_or_path).lm_head.to(device).train()
    params = torch.nn.ModuleList([model] + ([lm_head] if lm_head is not None else []))
    opt = configure_optimizer(params, cfg, device)  # reads lr, betas and weight_decay only
    size = (processor.size["height"], processor.size["width"])
    rng = np.random.default_rng([cfg.seed, 2])  # batches and augmentation, separate from the init seed
    out = Path(out_dir)
    history: list[dict] = []
    best_acc, best_step, since_best, stopped = -1.0, 0, 0, "max_steps"
    order, cursor = rng.permutation(len(labels)), 0
    sums = np.zeros(3)
    t0 = time.monotonic()

    def validate(step: int, n: int) -> bool:
        """Measure, record and keep the best; True when it improved on the best so far."""
        nonlocal best_acc, best_step
        acc, _ = evaluate_classifier(model, val_ids, val_labels, cfg.eval_batch_size, cfg.progress, "validate")
        mean = [float(v) / n for v in sums] if n else [None] * 3  # no training loss before the first step
        record = {"step": step, "loss": mean[0], "clf_loss": mean[1], "gen_loss": mean[2], "val_acc": acc,
                  "lr": lr_at(max(step - 1, 0), cfg), "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
        sums[:] = 0
        history.append(record)
        logger.info("step %d: loss %s val acc %.4f", step, "-" if n == 0 else f"{mean[0]:.4f}", acc)
        if on_eval is not None:
            on_eval(record)
        improved = acc > best_acc
        if improved:
            best_acc, best_step = acc, step
            _save_atomic(model, processor, out / "best")
        atomic_write_text(out / "history.json", json.dumps(history, indent=1) + "\n")
        return improved

    if cfg.probe_init:
        validate(0, 0)  # the probe-initialized start: fine-tuning has to beat it to replace it
    bar = tqdm(total=cfg.max_steps, desc="finetune", unit="step", disable=not cfg.progress)
    step = 0
    for step in range(1, cfg.max_steps + 1):
        if cursor + cfg.batch_size > len(order):
            order, cursor = rng.permutation(len(labels)), 0
        idx = order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        if cfg.augment:
            aug = augment_images(images[idx], size, rng, scale=1.125 if cfg.crop else 1.0, flip=cfg.flip,
                                 resample=processor.resample)  # fmt: skip
            batch = processor(list(aug), return_tensors="pt", add_start_token=True,
                              input_data_format="channels_last")["input_ids"]  # fmt: skip
        else:
            batch = torch.as_tensor(ids[idx], dtype=torch.long)
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, cfg)  # lr_at reads lr, min_lr, warmup_steps, max_steps only
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):  # weights stay float32
            loss, clf, gen = joint_loss(model, lm_head, batch.to(device),
                                        torch.as_tensor(labels[idx], device=device), cfg.gen_weight)  # fmt: skip
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step}; lower lr (now {cfg.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params.parameters(), cfg.grad_clip)
        opt.step()
        sums += (loss.item(), clf.item(), gen.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", best=f"{max(best_acc, 0):.3f}")
        out_of_time = cfg.max_time_minutes is not None and time.monotonic() - t0 > 60 * cfg.max_time_minutes
        if step % cfg.eval_interval and step != cfg.max_steps and not out_of_time:
            continue
        since_best = 0 if validate(step, (step - 1) % cfg.eval_interval + 1) else since_best + 1
        if out_of_time:
            stopped = "max_time_minutes"
            break
        if cfg.patience and since_best >= cfg.patience:
            stopped = "early_stopping"
            break
    bar.close()
    _save_atomic(model, processor, out / "last")  # every run ends with a validation, so history[-1] is this model
    return {"best_step": best_step, "best_val_acc": best_acc, "steps": step,
            "last_val_acc": history[-1]["val_acc"], "stopped": stopped,
            "history": history, "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
