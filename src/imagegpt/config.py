"""ImageGPTConfig: the same fields, defaults, aliases and ``config.json`` format as transformers' ImageGPTConfig."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

from imagegpt.atomic import atomic_write_text
from imagegpt.hub import resolve_file

logger = logging.getLogger(__name__)

__all__ = ["ImageGPTConfig", "PRESETS", "ACTIVATIONS"]

# Activation names understood by the model (transformers' ACT2FN names that make sense for an MLP).
ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu", "swish", "tanh")

# The released OpenAI sizes (n_embd, n_head, n_layer); the paper's iGPT-S/M/L.
PRESETS: dict[str, dict[str, int]] = {
    "small": {"n_embd": 512, "n_head": 8, "n_layer": 24},
    "medium": {"n_embd": 1024, "n_head": 8, "n_layer": 36},
    "large": {"n_embd": 1536, "n_head": 16, "n_layer": 48},
}

_ALIASES = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}

# Keys transformers writes for its own bookkeeping; read and dropped.
_BOOKKEEPING = {"transformers_version", "_name_or_path", "model_type"}

_DEFAULTS: dict[str, Any] = {
    "vocab_size": 512 + 1,  # 512 colors + the start-of-sequence token (id 512)
    "n_positions": 32 * 32,
    "n_embd": 512,
    "n_layer": 24,
    "n_head": 8,
    "n_inner": None,  # None means 4 * n_embd
    "activation_function": "quick_gelu",
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02,
    "scale_attn_weights": True,
    "use_cache": True,
    "tie_word_embeddings": False,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
    "problem_type": None,
    "output_hidden_states": False,
    "output_attentions": False,
    "return_dict": True,
    # transformers' PreTrainedConfig fields, kept and written as it does
    "architectures": None,
    "chunk_size_feed_forward": 0,
    "dtype": None,  # a torch.dtype once set ("float16" and "torch.float16" are read as torch.float16)
    "is_encoder_decoder": False,
}

# The fields every transformers config has: to_diff_dict writes them only when they differ from the default.
_COMMON = {"problem_type", "output_hidden_states", "output_attentions", "return_dict", "architectures",
           "chunk_size_feed_forward", "dtype", "is_encoder_decoder", "id2label", "label2id"}  # fmt: skip

# The keys ImageGPTConfig reads (a training config's [model] table is checked against them, aliases included).
KNOWN_KEYS = frozenset(_DEFAULTS) | frozenset(_ALIASES) | {"bidirectional", "num_labels", "id2label", "label2id"}

_PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


class ImageGPTConfig:
    """Configuration of an ImageGPT model, field for field transformers' ``ImageGPTConfig``.

    Aliases ``hidden_size``, ``max_position_embeddings``, ``num_attention_heads`` and ``num_hidden_layers`` read
    and write ``n_embd``, ``n_positions``, ``n_head`` and ``n_layer``. For classification, ``num_labels`` (default
    2), ``id2label``, ``label2id`` and ``problem_type`` work as in transformers. Unknown keys are kept and written
    back, so a ``config.json`` round-trips.

    Example::

        config = ImageGPTConfig.preset("small", resid_pdrop=0.0)
        config.save_pretrained("my-model")
    """

    model_type = "imagegpt"
    sub_configs: dict[str, type] = {}  # none: ImageGPT is not a composite model
    base_model_tp_plan = None  # no tensor-parallel plan (a transformers field)

    def __init__(self, **kwargs: Any) -> None:
        for alias, name in _ALIASES.items():
            if alias in kwargs:
                kwargs[name] = kwargs.pop(alias)
        for key in _BOOKKEEPING:
            kwargs.pop(key, None)
        # transformers' attention switch: "sdpa" (default) or "eager"; a setting of the model, not saved
        object.__setattr__(self, "_attn_implementation", kwargs.pop("attn_implementation", None))
        if "torch_dtype" in kwargs:  # transformers' older name
            torch_dtype = kwargs.pop("torch_dtype")
            kwargs.setdefault("dtype", torch_dtype)
        for key, default in _DEFAULTS.items():
            object.__setattr__(self, key, kwargs.pop(key, default))
        id2label = kwargs.pop("id2label", None)
        num_labels = kwargs.pop("num_labels", None)
        label2id = kwargs.pop("label2id", None)
        if id2label is None:
            n = 2 if num_labels is None else int(num_labels)
            id2label = {i: f"LABEL_{i}" for i in range(n)}
        self.id2label = {int(k): v for k, v in id2label.items()}
        if num_labels is not None and int(num_labels) != len(self.id2label):
            self.id2label = {i: f"LABEL_{i}" for i in range(int(num_labels))}
        self.label2id = dict(label2id) if label2id is not None else {v: k for k, v in self.id2label.items()}
        if len(self.label2id) != len(self.id2label):
            self.label2id = {v: k for k, v in self.id2label.items()}
        self.extra: dict[str, Any] = kwargs  # unknown keys, kept for round trips
        if self.dtype is not None:
            self.dtype = _as_dtype(self.dtype)
        self.validate()

    # --- aliases, as transformers' attribute_map -------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name in _ALIASES:
            return getattr(self, _ALIASES[name])
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, _ALIASES.get(name, name), value)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if n != len(self.id2label):
            self.id2label = {i: f"LABEL_{i}" for i in range(int(n))}
            self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def inner_dim(self) -> int:
        """Width of the MLP hidden layer (``n_inner`` or 4 * ``n_embd``)."""
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def start_token_id(self) -> int:
        """Id of the start-of-sequence token that leads every sequence: ``vocab_size - 1``."""
        return self.vocab_size - 1

    def get_text_config(self, decoder: bool | None = None) -> "ImageGPTConfig":
        """The config itself (transformers' composite models return a sub-config here)."""
        return self

    def validate(self, for_model: bool = False) -> None:
        """Raise ValueError naming the first invalid field and its value. ``n_embd`` divisible by ``n_head`` is
        checked only ``for_model`` (when a model is built), as transformers accepts such a config on its own."""
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ImageGPTConfig.{name} must be a positive integer, got {value!r}")
        if self.vocab_size < 2:
            raise ValueError(
                f"ImageGPTConfig.vocab_size must be >= 2 (colors + the start token), got {self.vocab_size!r}"
            )
        if for_model and self.n_embd % self.n_head != 0:
            raise ValueError(
                f"ImageGPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}) to build a model"
            )
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner <= 0):
            raise ValueError(f"ImageGPTConfig.n_inner must be None or a positive integer, got {self.n_inner!r}")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"ImageGPTConfig.activation_function {self.activation_function!r} is unknown; "
                f"use one of {', '.join(ACTIVATIONS)}"
            )
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"ImageGPTConfig.{name} must be in [0, 1), got {value!r}")
        if not isinstance(self.layer_norm_epsilon, (int, float)) or self.layer_norm_epsilon <= 0:
            raise ValueError(f"ImageGPTConfig.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
        if self.problem_type not in _PROBLEM_TYPES:
            raise ValueError(
                f"ImageGPTConfig.problem_type must be one of {_PROBLEM_TYPES}, got {self.problem_type!r}"
            )

    # --- construction ---------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ImageGPTConfig":
        """A config of a released size: ``"small"``, ``"medium"`` or ``"large"`` (other fields: defaults)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> "ImageGPTConfig":
        """Build from a dict such as a parsed ``config.json``; ``kwargs`` override its values."""
        model_type = config_dict.get("model_type", "imagegpt")
        if model_type != "imagegpt":
            raise ValueError(f"config has model_type {model_type!r}; expected 'imagegpt'")
        return cls(**{**config_dict, **kwargs})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "ImageGPTConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); is the file truncated?") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text ({e}); it is no model config.json") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object of model settings "
                             "(config.json is {\"n_embd\": ..., \"n_layer\": ...})")  # fmt: skip
        return cls.from_dict(data)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> "ImageGPTConfig":
        """Read ``config.json`` from a directory or Hub id; other ``kwargs`` override fields."""
        hub_kwargs = {k: kwargs.pop(k) for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
        subfolder = kwargs.pop("subfolder", None) or ""
        if subfolder:
            name_or_path = Path(name_or_path) / subfolder
        path = resolve_file(name_or_path, "config.json", **hub_kwargs)
        config = cls.from_json_file(path)
        return cls(**{**config.to_dict(), **kwargs}) if kwargs else config

    # --- serialization --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A dict in transformers' ``config.json`` layout."""
        out: dict[str, Any] = {key: copy.deepcopy(getattr(self, key)) for key in _DEFAULTS}
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = dict(self.label2id)
        out.update(copy.deepcopy(self.extra))
        out["model_type"] = self.model_type
        if out["dtype"] is not None:
            out["dtype"] = str(out["dtype"]).removeprefix("torch.")
        return dict(sorted(out.items()))

    def to_diff_dict(self) -> dict[str, Any]:
        """As transformers: ``to_dict`` without the fields common to all configs that keep their default value."""
        defaults = ImageGPTConfig().to_dict()
        return {k: v for k, v in self.to_dict().items() if k not in _COMMON or v != defaults.get(k)}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_json_string` to ``path`` (atomically)."""
        atomic_write_text(path, self.to_json_string())

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write ``config.json`` (atomically) into ``save_directory``."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / "config.json", self.to_json_string())

    def copy(self, **overrides: Any) -> "ImageGPTConfig":
        return type(self)(**{**self.to_dict(), **overrides})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageGPTConfig) and self.to_dict() == other.to_dict()

    def __iter__(self):
        """The field names, as iterating a transformers config (``for key in config``)."""
        return iter(self.to_dict())

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


def _as_dtype(value: Any) -> Any:
    import torch

    if isinstance(value, torch.dtype):
        return value
    found = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(found, torch.dtype):
        raise ValueError(f"ImageGPTConfig.dtype must be a torch dtype or its name (e.g. 'float16'), got {value!r}")
    return found
