"""TrainConfig: every setting of a training run, with defaults, read from a TOML file plus ``key=value`` overrides.

Example ``train.toml``::

    data = "tokens/"          # a directory written by imagegpt.data.tokenize
    out_dir = "runs/mnist"
    objective = "autoregressive"
    batch_size = 32
    max_steps = 5000
    lr = 3e-4

    [model]                   # ImageGPTConfig fields; vocab_size and n_positions come from the data
    n_embd = 256
    n_head = 8
    n_layer = 8

``model`` may instead be a string: a model directory (or Hub id) to continue training from.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "load_config", "parse_overrides", "resume_config", "resume_changes", "SAFE_ON_RESUME"]

OBJECTIVES = ("autoregressive", "bert")
DTYPES = ("auto", "float32", "bfloat16")
FLOAT32_MAX = 3.4028234663852886e38
# What a resumed run may change: when and how long to train, what to log, and the learning-rate schedule (the
# remedy for a divergence). Anything else (model, data, batch, objective, seed ...) would make the checkpoint's
# optimizer state, batch order or shapes wrong.
SAFE_ON_RESUME = frozenset({"max_steps", "eval_interval", "eval_batches", "save_interval", "log_interval",
                            "keep_last", "max_time_minutes", "progress", "device", "compile", "lr", "min_lr",
                            "warmup_steps", "grad_clip", "resume", "out_dir"})  # fmt: skip


@dataclasses.dataclass
class TrainConfig:
    """Settings of :func:`imagegpt.training.train`. Steps count optimizer updates, not micro-batches.

    One update sees ``batch_size * grad_accum * world_size`` images (``batch_size`` per rank and micro-step).
    """

    data: str = ""  # token dataset directory (imagegpt tokenize)
    out_dir: str = "runs/train"
    model: dict[str, Any] | str = dataclasses.field(
        default_factory=lambda: {"n_embd": 256, "n_head": 8, "n_layer": 8}
    )  # ImageGPTConfig kwargs, or a model directory / Hub id to start from
    objective: str = "autoregressive"  # or "bert" (bidirectional model, masked-pixel prediction)
    bert_mask_prob: float = 0.15
    batch_size: int = 32
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 3e-4
    min_lr: float = 3e-5  # the cosine schedule ends here
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on matrices and embeddings only
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    dropout: float = 0.0  # sets resid/embd/attn_pdrop unless the model dict sets them
    eval_interval: int = 100
    eval_batches: int = 10
    save_interval: int = 500
    keep_last: int = 3  # checkpoints kept; 0 keeps all
    log_interval: int = 10
    seed: int = 0
    device: str = "auto"  # auto: cuda when available
    dtype: str = "auto"  # autocast: auto = bfloat16 on CUDA, float32 on CPU
    compile: bool = False  # torch.compile the model
    max_time_minutes: float | None = None  # stop (with a checkpoint) after this much wall time
    resume: bool = False  # continue from out_dir/checkpoints/latest
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not isinstance(self.model, (dict, str)):
            raise ValueError(f"model must be a table of ImageGPTConfig fields or a model path, got {self.model!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("batch_size", "grad_accum", "max_steps", "eval_interval", "eval_batches", "save_interval",
                     "log_interval"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "keep_last", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "dropout", "bert_mask_prob", "max_time_minutes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):  # fmt: skip
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not all(isinstance(b, (int, float)) and math.isfinite(b) for b in self.betas):
            raise ValueError(f"betas must be two finite numbers in [0, 1), got {self.betas!r}")
        if self.lr > FLOAT32_MAX:
            raise ValueError(f"lr = {self.lr} does not fit a float32 (at most {FLOAT32_MAX:.3g}); typical values "
                             "are 1e-4 to 1e-2")  # fmt: skip
        _check_device(self.device)
        if not 0 < self.bert_mask_prob < 1:
            raise ValueError(f"bert_mask_prob must be in (0, 1), got {self.bert_mask_prob!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0")
        if self.max_time_minutes is not None and self.max_time_minutes <= 0:
            raise ValueError(f"max_time_minutes must be positive (or unset), got {self.max_time_minutes!r}")

    def to_dict(self) -> dict[str, Any]:
        """Every field, as JSON-ready values (betas as a list)."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write the resolved config as JSON, atomically."""
        from imagegpt.checkpoint import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def _toml():
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ValueError("reading TOML needs Python >= 3.11 or the 'tomli' package (pip install tomli)") from None
    return tomllib


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=1e-3", "model.n_layer=4", "data=tokens/"]`` -> a dict; values are TOML values, else plain strings."""
    tomllib = _toml()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # a bare word: a string
        out[key.strip()] = value
    return out


def _check_device(device: Any) -> None:
    import re

    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N (or mps, xpu), got {device!r}")


def _unknown(kind: str, key: str, known: Any) -> ValueError:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"
    return ValueError(f"unknown {kind} {key!r}{hint}")


def _check_model_keys(model: Any) -> None:
    from imagegpt.config import KNOWN_KEYS

    if isinstance(model, dict):
        for key in model:
            if key not in KNOWN_KEYS | {"preset"}:
                raise _unknown("model setting", f"model.{key}", {f"model.{k}" for k in KNOWN_KEYS | {"preset"}})


def _read_values(path: str | os.PathLike | None, overrides: dict[str, Any] | None,
                 base: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """``base`` <- the TOML file <- overrides, as raw values; unknown keys (at any depth) are errors."""
    values: dict[str, Any] = dict(base or {})
    if path is not None:
        tomllib = _toml()
        try:
            values.update(tomllib.loads(Path(path).read_text(encoding="utf-8")))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path} is not valid TOML: {e}") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text ({e})") from None
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, value in (overrides or {}).items():
        if key.startswith("model."):
            model = values.get("model", fields["model"].default_factory())
            if not isinstance(model, dict):
                raise ValueError(f"cannot set {key}: model is the path {model!r}, not a table of fields")
            values["model"] = {**model, key.removeprefix("model."): value}
        else:
            values[key] = value
    for key in values:
        if key not in fields:
            raise _unknown("training setting", key, fields)
    _check_model_keys(values.get("model"))
    return values


def _build(values: dict[str, Any]) -> TrainConfig:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, value in list(values.items()):  # TOML has no tuples, and 1 may stand for 1.0
        if key == "betas" and isinstance(value, list):
            values[key] = tuple(float(b) for b in value)
        elif isinstance(fields[key].default, float) and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif key == "max_time_minutes" and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        expected = type(fields[key].default) if fields[key].default is not dataclasses.MISSING else None
        if expected in (int, float, str, bool) and not isinstance(values[key], expected):
            raise ValueError(f"{key} must be a {expected.__name__}, got {value!r}")
    return TrainConfig(**values)


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- the TOML file at ``path`` (if any) <- ``overrides`` (``"model.n_layer"`` sets a model field).

    Unknown keys, top-level or in the ``[model]`` table, are errors that suggest the nearest known key (a typo
    should not silently train with a default). Raises ValueError / OSError.
    """
    return _build(_read_values(path, overrides))


def _same(key: str, a: Any, b: Any) -> bool:
    if key == "data" and a and b:
        return Path(a).resolve() == Path(b).resolve()
    if key == "betas":
        return [float(x) for x in a] == [float(x) for x in b]
    if key == "model" and isinstance(a, str) and isinstance(b, str):
        return a == b or Path(a).resolve() == Path(b).resolve()
    return a == b


def resume_changes(saved: dict[str, Any], cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The settings in which ``cfg`` differs from a run's ``saved`` ones: {key: (saved, new)}.

    Raises ValueError when one of them is not safe to change mid-run (see :data:`SAFE_ON_RESUME`).
    """
    new = cfg.to_dict()
    changes = {k: (saved.get(k), new[k]) for k in new if k in saved and not _same(k, saved[k], new[k])}
    unsafe = {k: v for k, v in changes.items() if k not in SAFE_ON_RESUME}
    if unsafe:
        listed = "; ".join(f"{k}: {old!r} -> {value!r}" for k, (old, value) in unsafe.items())
        safe = ", ".join(sorted(SAFE_ON_RESUME - {"resume", "out_dir"}))
        raise ValueError(f"cannot change {', '.join(unsafe)} when resuming ({listed}): the checkpoint was trained "
                         f"with the old value. A resume may change only {safe}. "
                         "For other settings start a new run with another --out (--set model=RUN/final starts from "
                         "the trained weights); in Python, resume_config(out_dir=RUN) restores a run's own settings")
    return {k: v for k, v in changes.items() if k not in ("resume", "out_dir", "progress")}


Changes = dict[str, tuple[Any, Any]]


def resume_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                  out_dir: str | os.PathLike | None = None) -> tuple[TrainConfig, Changes]:
    """The settings to resume a run with: the run's own (``out_dir/train_config.json``) <- the TOML file <-
    ``overrides``; returns (config, changes) where changes = {key: (saved, new)}. Raises ValueError when a change is
    not safe mid-run (:func:`resume_changes`) and FileNotFoundError when the run has no saved settings."""
    given = _read_values(path, overrides)
    run = Path(out_dir or given.get("out_dir") or TrainConfig.out_dir)
    saved_path = run / "train_config.json"
    try:
        if saved_path.is_file():
            saved = json.loads(saved_path.read_text(encoding="utf-8"))
        else:  # lost: the checkpoint carries the settings it was trained with
            from imagegpt.train_checkpoint import latest_checkpoint, read_state

            checkpoint = latest_checkpoint(run)
            if checkpoint is None:
                raise FileNotFoundError(f"nothing to resume: {saved_path} does not exist and {run} holds no "
                                        "checkpoint (is --out the run directory?)")  # fmt: skip
            saved_path = checkpoint / "trainer_state.pt"
            saved = json.loads(read_state(checkpoint).get("config") or "null")
    except ValueError as e:  # JSON, UTF-8 (a CheckpointError names its file already)
        if type(e).__name__ == "CheckpointError":
            raise
        raise ValueError(f"{saved_path} does not hold the run's settings ({e})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{saved_path} does not hold a JSON object of settings")
    base = {k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    values = _read_values(path, overrides, base)  # --set model.x lands on the saved model table
    cfg = _build({**values, "out_dir": str(run), "resume": True})
    return cfg, resume_changes(saved, cfg)
