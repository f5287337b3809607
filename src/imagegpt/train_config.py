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
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "load_config", "parse_overrides"]

OBJECTIVES = ("autoregressive", "bert")
DTYPES = ("auto", "float32", "bfloat16")


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


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- the TOML file at ``path`` (if any) <- ``overrides`` (``"model.n_layer"`` sets a model field).

    Unknown keys are errors (a typo should not silently train with a default). Raises ValueError / OSError.
    """
    values: dict[str, Any] = {}
    if path is not None:
        tomllib = _toml()
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path} is not valid TOML: {e}") from None
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, value in (overrides or {}).items():
        if key.startswith("model."):
            model = values.get("model", fields["model"].default_factory())
            if not isinstance(model, dict):
                raise ValueError(f"cannot set {key}: model is the path {model!r}, not a table of fields")
            values["model"] = {**model, key.removeprefix("model."): value}
        else:
            values[key] = value
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown training setting(s): {', '.join(unknown)}; known: {', '.join(fields)}")
    for key, value in list(values.items()):  # TOML has no tuples, and 1 may stand for 1.0
        if key == "betas" and isinstance(value, list):
            values[key] = tuple(float(b) for b in value)
        elif isinstance(fields[key].default, float) and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif key == "max_time_minutes" and isinstance(value, int):
            values[key] = float(value)
        expected = type(fields[key].default) if fields[key].default is not dataclasses.MISSING else None
        if expected in (int, float, str, bool) and not isinstance(values[key], expected):
            raise ValueError(f"{key} must be a {expected.__name__}, got {value!r}")
    return TrainConfig(**values)
