"""ImageGPT (iGPT) in PyTorch, compatible with Hugging Face transformers' ImageGPT classes and checkpoints.

The names below load on first use (PEP 562), so ``import imagegpt`` and the CLI's ``--help`` do not pay for
importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_WHERE = {
    "ImageGPTConfig": "imagegpt.config",
    "PRESETS": "imagegpt.config",
    "ImageGPTModel": "imagegpt.model",
    "ImageGPTForCausalImageModeling": "imagegpt.heads",
    "ImageGPTForImageClassification": "imagegpt.heads",
    "ImageGPTImageProcessor": "imagegpt.processor",
    "ImageGPTFeatureExtractor": "imagegpt.processor",
    "BatchFeature": "imagegpt.processor",
    "GenerationConfig": "imagegpt.generation",
    "AutoConfig": "imagegpt.auto",
    "AutoImageProcessor": "imagegpt.auto",
    "AutoModel": "imagegpt.auto",
    "AutoModelForCausalLM": "imagegpt.auto",
    "AutoModelForImageClassification": "imagegpt.auto",
    "KVCache": "imagegpt.kv_cache",
    "CheckpointError": "imagegpt.checkpoint",
    "HubError": "imagegpt.hub",
}
# transformers has two backends of one processor (torchvision and PIL); ours is one, identical to its PIL backend
_ALIASES = {"ImageGPTImageProcessorPil": "ImageGPTImageProcessor"}

__all__ = [
    "ImageGPTConfig",
    "ImageGPTModel",
    "ImageGPTForCausalImageModeling",
    "ImageGPTForImageClassification",
    "ImageGPTImageProcessor",
    "ImageGPTImageProcessorPil",
    "ImageGPTFeatureExtractor",
    "BatchFeature",
    "GenerationConfig",
    "AutoConfig",
    "AutoImageProcessor",
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForImageClassification",
    "KVCache",
    "PRESETS",
    "CheckpointError",
    "HubError",
]

if TYPE_CHECKING:  # pragma: no cover
    from imagegpt.auto import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForCausalLM,
                               AutoModelForImageClassification)  # fmt: skip
    from imagegpt.checkpoint import CheckpointError
    from imagegpt.config import PRESETS, ImageGPTConfig
    from imagegpt.generation import GenerationConfig
    from imagegpt.heads import ImageGPTForCausalImageModeling, ImageGPTForImageClassification
    from imagegpt.hub import HubError
    from imagegpt.kv_cache import KVCache
    from imagegpt.model import ImageGPTModel
    from imagegpt.processor import BatchFeature, ImageGPTFeatureExtractor, ImageGPTImageProcessor

    ImageGPTImageProcessorPil = ImageGPTImageProcessor


def __getattr__(name: str):
    target = _ALIASES.get(name, name)
    if target in _WHERE:
        value = getattr(importlib.import_module(_WHERE[target]), target)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'imagegpt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE, *_ALIASES])
