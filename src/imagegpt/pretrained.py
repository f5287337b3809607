"""Models shipped inside the package: loadable by a short name, offline, with example images.

- ``emoji``: 32x32 colour, 512 colours, trained on Twitter's and Google's emoji artwork; the default of
  ``imagegpt sample`` and ``imagegpt complete``.
- ``fashion-mnist``: 28x28, 16 grays, trained on Fashion-MNIST.

``ImageGPTForCausalImageModeling.from_pretrained("emoji")`` (and the processor's, and the CLI's ``--model emoji``)
resolve to the folder ``imagegpt/models/emoji`` inside the installed package. A local directory of the same name
wins.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["DEFAULT_MODEL", "packaged_models", "packaged_model_dir", "packaged_examples"]

DEFAULT_MODEL = "emoji"
_ROOT = "models"


def _models_root() -> Path:
    return Path(str(resources.files("imagegpt"))) / _ROOT


def packaged_models() -> list[str]:
    """Names of the models inside this installation."""
    root = _models_root()
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file()) if root.is_dir() else []


def packaged_model_dir(name: str) -> Path | None:
    """The folder of the packaged model ``name``, or None when there is no such packaged model."""
    if "/" in name or name.startswith("."):
        return None
    path = _models_root() / name
    return path if (path / "config.json").is_file() else None


def packaged_examples(name: str = DEFAULT_MODEL) -> list[Path]:
    """The example images shipped with the packaged model ``name`` (test-split images, never trained on)."""
    path = packaged_model_dir(name)
    if path is None:
        raise ValueError(f"{name!r} is not a packaged model (packaged: {', '.join(packaged_models()) or 'none'})")
    return sorted((path / "examples").glob("*.png"))
