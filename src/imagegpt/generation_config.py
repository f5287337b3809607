"""GenerationConfig: the settings of ``generate``, stored and read as transformers' ``generation_config.json``.

As in transformers 5, a field left unset is ``None`` and takes its default (:data:`DEFAULTS`) when ``generate``
runs, so a saved file holds only what was set. ``model.generation_config`` is built from the model config
(:meth:`GenerationConfig.from_model_config`) and written by ``save_pretrained``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from imagegpt.atomic import atomic_write_text

__all__ = ["GenerationConfig", "DEFAULTS", "GENERATION_CONFIG_NAME"]

GENERATION_CONFIG_NAME = "generation_config.json"

# The fields generate() understands, with transformers' defaults (applied when a field is unset).
DEFAULTS: dict[str, Any] = {
    "max_length": 20,
    "max_new_tokens": None,
    "min_length": 0,
    "min_new_tokens": None,
    "do_sample": False,
    "num_beams": 1,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "bad_words_ids": None,
    "remove_invalid_values": False,
    "renormalize_logits": False,
    "num_return_sequences": 1,
    "length_penalty": 1.0,
    "early_stopping": False,
    "output_scores": False,
    "output_logits": False,
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict_in_generate": False,
    "use_cache": True,
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
}
# Model-config fields copied into a generation config derived from it (as transformers' from_model_config).
_FROM_MODEL = ("output_attentions", "output_hidden_states", "use_cache", "pad_token_id", "bos_token_id",
               "eos_token_id")  # fmt: skip


class GenerationConfig:
    """Settings for ``generate``: any of :data:`DEFAULTS`' fields; unknown keys are kept (and saved) but unused.

    Example::

        config = GenerationConfig(do_sample=True, top_k=40, max_new_tokens=1024)
        model.generate(ids, generation_config=config)
    """

    def __init__(self, **kwargs: Any) -> None:
        self._from_model_config = bool(kwargs.pop("_from_model_config", False))
        kwargs.pop("transformers_version", None)
        for key, value in kwargs.items():
            setattr(self, key, value)

    def __getattr__(self, name: str) -> Any:
        if name in DEFAULTS:  # unset field
            return None
        raise AttributeError(f"GenerationConfig has no attribute {name!r}")

    def resolved(self) -> dict[str, Any]:
        """Every field of :data:`DEFAULTS` with the set values applied."""
        return {k: (v if (v := getattr(self, k)) is not None else default) for k, default in DEFAULTS.items()}

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Set the known fields among ``kwargs``; return the others (model inputs for ``generate``)."""
        unused = {}
        for key, value in kwargs.items():
            if key in DEFAULTS or key in self.__dict__:
                setattr(self, key, value)
            else:
                unused[key] = value
        return unused

    def validate(self) -> None:
        """Raise ValueError naming an impossible setting."""
        r = self.resolved()
        for name in ("num_beams", "num_return_sequences"):
            if not isinstance(r[name], int) or r[name] < 1:
                raise ValueError(f"{name} must be a positive integer, got {r[name]!r}")
        if r["num_return_sequences"] > r["num_beams"] and r["num_beams"] > 1:
            raise ValueError(f"num_return_sequences ({r['num_return_sequences']}) must be <= num_beams "
                             f"({r['num_beams']})")  # fmt: skip
        if r["do_sample"] and not r["temperature"] > 0:
            raise ValueError(f"temperature must be > 0, got {r['temperature']} (greedy decoding: do_sample=False)")
        if r["top_p"] is not None and not 0.0 <= r["top_p"] <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {r['top_p']}")
        if r["top_k"] is not None and (not isinstance(r["top_k"], int) or r["top_k"] < 0):
            raise ValueError(f"top_k must be a non-negative integer, got {r['top_k']!r}")
        if not r["repetition_penalty"] > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {r['repetition_penalty']}")

    @classmethod
    def from_model_config(cls, model_config: Any) -> "GenerationConfig":
        """The generation settings a model config implies (its cache, output and special-token fields)."""
        values = {k: getattr(model_config, k, None) for k in _FROM_MODEL}
        return cls(_from_model_config=True, **{k: v for k, v in values.items() if v is not None})

    # --- serialization --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (transformers writes the same subset)."""
        out = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if not k.startswith("_") and v is not None}
        if self._from_model_config:
            out["_from_model_config"] = True
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write ``generation_config.json`` into ``save_directory`` (atomically)."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / GENERATION_CONFIG_NAME, self.to_json_string())

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> "GenerationConfig":
        """Read ``generation_config.json`` from a directory or Hub id; ``kwargs`` override its fields."""
        from imagegpt.hub import resolve_file

        hub = {k: kwargs.pop(k) for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
        path = resolve_file(name_or_path, GENERATION_CONFIG_NAME, **hub)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
        return cls(**{**data, **kwargs})

    def copy(self) -> "GenerationConfig":
        return copy.deepcopy(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GenerationConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"GenerationConfig {self.to_json_string()}"
