"""ImageGPT (iGPT) in PyTorch, compatible with Hugging Face transformers' ImageGPT classes and checkpoints."""

from imagegpt.auto import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForCausalLM,
                           AutoModelForImageClassification)  # fmt: skip
from imagegpt.checkpoint import CheckpointError
from imagegpt.config import PRESETS, ImageGPTConfig
from imagegpt.generation import GenerationConfig
from imagegpt.hub import HubError
from imagegpt.kv_cache import KVCache
from imagegpt.heads import ImageGPTForCausalImageModeling, ImageGPTForImageClassification
from imagegpt.model import ImageGPTModel
from imagegpt.processor import BatchFeature, ImageGPTFeatureExtractor, ImageGPTImageProcessor

# transformers has two backends of one processor (torchvision and PIL); ours is one, identical to its PIL backend
ImageGPTImageProcessorPil = ImageGPTImageProcessor

__version__ = "0.1.0"

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
