"""Model and generation outputs: dataclasses that are also ordered dicts, like transformers' ModelOutput.

``out.logits``, ``out["logits"]`` and ``out[0]`` all work; the keys are the fields that are not ``None`` (so
``"loss" in out`` is False without labels), iteration yields keys, and integer indexing and :meth:`to_tuple` skip
``None`` fields, as transformers does, so ``loss, logits = model(ids, labels=ids)[:2]`` keeps working.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any

import torch

__all__ = [
    "ModelOutput",
    "BaseModelOutput",
    "CausalLMOutput",
    "ImageClassifierOutput",
    "GenerateDecoderOnlyOutput",
    "GenerateBeamDecoderOnlyOutput",
]


class ModelOutput(OrderedDict):
    """Base of the output dataclasses: attribute, key and index access over the non-``None`` fields."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                super().__setitem__(f.name, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.keys() and value is not None:
            super().__setitem__(name, value)
        elif value is not None and name in {f.name for f in fields(self)}:
            super().__setitem__(name, value)  # a field set after construction becomes a key, as transformers
        super().__setattr__(name, value)

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"cannot delete from a {type(self).__name__}; set the field to None instead")

    def __reduce__(self):  # pickling/deepcopy: rebuild from the fields, not as a plain OrderedDict
        return type(self), tuple(getattr(self, f.name) for f in fields(self))

    def to_tuple(self) -> tuple[Any, ...]:
        """The values of the non-``None`` fields, in field order."""
        return tuple(self[k] for k in self.keys())


@dataclass
class BaseModelOutput(ModelOutput):
    """Output of :class:`~imagegpt.ImageGPTModel`; ``hidden_states`` has n_layer + 1 entries, the last after ln_f."""

    last_hidden_state: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class CausalLMOutput(ModelOutput):
    """Output of :class:`~imagegpt.ImageGPTForCausalImageModeling`; logits are (B, T, vocab_size - 1)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class ImageClassifierOutput(ModelOutput):
    """Output of :class:`~imagegpt.ImageGPTForImageClassification`; logits are (B, num_labels)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class GenerateDecoderOnlyOutput(ModelOutput):
    """``generate(..., return_dict_in_generate=True)`` without beams, shaped as transformers' class of this name.

    ``scores``/``logits``: one (B, vocab_size - 1) tensor per new token (processed / raw); ``hidden_states``: per
    step, the tuple of (B, T_step, n_embd) hidden states; ``past_key_values``: the cache."""

    sequences: torch.Tensor | None = None
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[tuple[torch.Tensor, ...], ...] | None = None
    hidden_states: tuple[tuple[torch.Tensor, ...], ...] | None = None
    past_key_values: Any = None


@dataclass
class GenerateBeamDecoderOnlyOutput(ModelOutput):
    """``generate(..., num_beams>1, return_dict_in_generate=True)``, shaped as transformers' class of this name."""

    sequences: torch.Tensor | None = None
    sequences_scores: torch.Tensor | None = None
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    beam_indices: torch.Tensor | None = None
    attentions: tuple[tuple[torch.Tensor, ...], ...] | None = None
    hidden_states: tuple[tuple[torch.Tensor, ...], ...] | None = None
    past_key_values: Any = None
