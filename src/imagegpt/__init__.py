"""ImageGPT (iGPT) in PyTorch, compatible with Hugging Face transformers' ImageGPT classes and checkpoints."""

from imagegpt.checkpoint import CheckpointError
from imagegpt.config import PRESETS, ImageGPTConfig
from imagegpt.hub import HubError
from imagegpt.kv_cache import KVCache
from imagegpt.heads import ImageGPTForCausalImageModeling, ImageGPTForImageClassification
from imagegpt.model import ImageGPTModel

__version__ = "0.1.0"

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
