"""Minimal ``Auto*`` classes, so code written for transformers' ImageGPT (``AutoImageProcessor.from_pretrained``,
``AutoModelForImageClassification.from_pretrained``...) runs with only its imports changed. They know one model
type, ``imagegpt``, and raise a clear error for any other."""

from __future__ import annotations

import os
from typing import Any

from imagegpt.config import ImageGPTConfig

__all__ = [
    "AutoConfig",
    "AutoImageProcessor",
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForImageClassification",
]


def _check_type(config: Any, what: str) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type != "imagegpt":
        raise ValueError(f"{what}: imagegpt only knows model_type 'imagegpt', got {model_type!r}; use transformers' "
                         "Auto classes for other models")  # fmt: skip


class AutoConfig:
    """``AutoConfig.from_pretrained(path)`` -> :class:`~imagegpt.ImageGPTConfig`."""

    @staticmethod
    def from_pretrained(name_or_path: str | os.PathLike, **kwargs: Any) -> ImageGPTConfig:
        import json

        from imagegpt.hub import resolve_file

        hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
        data = json.loads(resolve_file(name_or_path, "config.json", **hub).read_text(encoding="utf-8"))
        if data.get("model_type", "imagegpt") != "imagegpt":
            raise ValueError(f"{name_or_path}: imagegpt only knows model_type 'imagegpt', got {data['model_type']!r}")
        return ImageGPTConfig.from_pretrained(name_or_path, **kwargs)

    @staticmethod
    def for_model(model_type: str, **kwargs: Any) -> ImageGPTConfig:
        _check_type(type("C", (), {"model_type": model_type}), "AutoConfig.for_model")
        return ImageGPTConfig(**kwargs)


class AutoImageProcessor:
    """``AutoImageProcessor.from_pretrained(path)`` -> :class:`~imagegpt.ImageGPTImageProcessor` (it reads
    ``preprocessor_config.json`` written by us or by transformers, including the old feature-extractor files)."""

    @staticmethod
    def from_pretrained(name_or_path: str | os.PathLike, **kwargs: Any):
        from imagegpt.processor import ImageGPTImageProcessor

        kwargs.pop("use_fast", None)  # transformers' backend switch; there is one implementation here
        kwargs.pop("backend", None)
        return ImageGPTImageProcessor.from_pretrained(name_or_path, **kwargs)


class _AutoModel:
    _class_name = ""

    @classmethod
    def _model_class(cls):
        from imagegpt import heads, model  # imported when used (torch); neither imports this module

        return getattr(heads, cls._class_name, None) or getattr(model, cls._class_name)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """As the model class's ``from_pretrained``; a config of another model type raises ValueError."""
        config = kwargs.get("config")
        if config is not None:
            _check_type(config, cls.__name__)
        return cls._model_class().from_pretrained(name_or_path, *args, **kwargs)

    @classmethod
    def from_config(cls, config: ImageGPTConfig, **kwargs: Any):
        """A randomly initialized model for ``config``."""
        _check_type(config, cls.__name__)
        return cls._model_class()(config)


class AutoModel(_AutoModel):
    """-> :class:`~imagegpt.ImageGPTModel`."""

    _class_name = "ImageGPTModel"


class AutoModelForCausalLM(_AutoModel):
    """-> :class:`~imagegpt.ImageGPTForCausalImageModeling`."""

    _class_name = "ImageGPTForCausalImageModeling"


class AutoModelForImageClassification(_AutoModel):
    """-> :class:`~imagegpt.ImageGPTForImageClassification`."""

    _class_name = "ImageGPTForImageClassification"
