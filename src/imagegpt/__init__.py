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
    "KVCache": "imagegpt.kv_cache",
    "CheckpointError": "imagegpt.checkpoint",
    "HubError": "imagegpt.hub",
}

__all__ = [
    "ImageGPTConfig",
    "ImageGPTModel",
    "ImageGPTForCausalImageModeling",
    "ImageGPTForImageClassification",
    "KVCache",
    "PRESETS",
    "CheckpointError",
    "HubError",
]

if TYPE_CHECKING:  # pragma: no cover
    from imagegpt.checkpoint import CheckpointError
    from imagegpt.config import PRESETS, ImageGPTConfig
    from imagegpt.heads import ImageGPTForCausalImageModeling, ImageGPTForImageClassification
    from imagegpt.hub import HubError
    from imagegpt.kv_cache import KVCache
    from imagegpt.model import ImageGPTModel


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'imagegpt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
