"""Task heads on the ImageGPT decoder: the causal image-modeling head and the image classifier, with their losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imagegpt.checkpoint import PreTrainedMixin
from imagegpt.config import ImageGPTConfig
from imagegpt.model import ImageGPTModel
from imagegpt.outputs import CausalLMOutput, ImageClassifierOutput
from imagegpt.generation import generate
from imagegpt.generation_config import GenerationConfig

__all__ = [
    "ImageGPTForCausalImageModeling",
    "ImageGPTForImageClassification",
    "causal_lm_loss",
    "classification_loss",
]


class ImageGPTForCausalImageModeling(PreTrainedMixin, nn.Module):
    """ImageGPT with its untied LM head of ``vocab_size - 1`` outputs (the start token is never predicted).

    ``labels`` follow transformers: they are shifted inside (``logits[:, :-1]`` predict ``labels[:, 1:]``), so
    ``labels=input_ids`` works; -100 is ignored.
    """

    def __init__(self, config: ImageGPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = ImageGPTModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size - 1, bias=False)
        self.post_init()  # initializes the head (the decoder already is)
        self.generation_config = GenerationConfig.from_model_config(config)  # saved as generation_config.json

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
                position_ids=None, inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
                labels: torch.Tensor | None = None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None) -> CausalLMOutput | tuple:  # fmt: skip
        """As :meth:`ImageGPTModel.forward`, plus ``labels`` (B, T) for the shifted next-token loss."""
        out = self.transformer(input_ids, past_key_values, attention_mask, token_type_ids, position_ids,
                               inputs_embeds, encoder_hidden_states, encoder_attention_mask, use_cache,
                               output_attentions, output_hidden_states, return_dict=True)  # fmt: skip
        logits = self.lm_head(out.last_hidden_state)  # (B, T, vocab_size - 1)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        result = CausalLMOutput(loss, logits, out.past_key_values, out.hidden_states, out.attentions,
                                out.cross_attentions)  # fmt: skip
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, past_key_values=None, attention_mask=None,
                                      inputs_embeds=None, **kwargs) -> dict:  # fmt: skip
        """transformers' hook for custom decoding loops: the forward arguments for the next step. With a cache,
        only the positions not yet cached are fed (``inputs_embeds`` only before anything is cached); other
        ``kwargs`` are forwarded as they are."""
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        inputs = {"past_key_values": past_key_values, "attention_mask": attention_mask}
        if inputs_embeds is not None and past == 0:
            inputs.update(input_ids=None, inputs_embeds=inputs_embeds)
            length = inputs_embeds.shape[1]
        else:
            inputs["input_ids"] = input_ids[:, past:] if past else input_ids
            length = inputs["input_ids"].shape[1]
        for name in ("position_ids", "token_type_ids"):
            value = kwargs.pop(name, None)
            if value is not None:
                inputs[name] = value[:, -length:]
        inputs.update(kwargs)
        return inputs

    def generate(self, inputs: torch.Tensor | None = None, **kwargs):
        """transformers' ``generate`` on a static KV cache; see :func:`imagegpt.generation.generate`."""
        return generate(self, inputs, **kwargs)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits[:, :-1]`` against ``labels[:, 1:]``, ignoring -100."""
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must be {tuple(logits.shape[:-1])} like the input, got {tuple(labels.shape)}")
    n = logits.shape[-1]
    shifted = labels[:, 1:].to(logits.device)
    bad = (shifted != -100) & ((shifted < 0) | (shifted >= n))
    if bad.any():
        raise ValueError(
            f"labels must be -100 or in [0, {n}); got {int(shifted[bad][0])}. The start token ({n}) is never "
            "predicted: only the first label may be the start token, or use -100 to ignore a position."
        )
    return F.cross_entropy(logits[:, :-1].reshape(-1, n), shifted.reshape(-1), ignore_index=-100)


class ImageGPTForImageClassification(PreTrainedMixin, nn.Module):
    """ImageGPT with a linear head (no bias) on the hidden states of ``ln_f`` averaged over all positions."""

    def __init__(self, config: ImageGPTConfig) -> None:
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.transformer = ImageGPTModel(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init()  # initializes the head (the decoder already is)

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
                position_ids=None, inputs_embeds=None, labels: torch.Tensor | None = None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None
                ) -> ImageClassifierOutput | tuple:  # fmt: skip
        """``labels``: class ids (B,) for single-label, floats (B, num_labels) for multi-label, or floats for
        regression (num_labels == 1); ``config.problem_type`` is inferred as in transformers when unset."""
        out = self.transformer(input_ids, past_key_values, attention_mask, token_type_ids, position_ids,
                               inputs_embeds, None, None, use_cache, output_attentions, output_hidden_states,
                               return_dict=True)  # fmt: skip
        logits = self.score(out.last_hidden_state.mean(dim=1))  # (B, num_labels); padding included, as transformers
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        result = ImageClassifierOutput(loss, logits, out.past_key_values, out.hidden_states, out.attentions)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: ImageGPTConfig) -> torch.Tensor:
    """Regression (MSE), single-label (cross-entropy) or multi-label (BCE with logits) by ``problem_type``."""
    n = config.num_labels
    labels = labels.to(logits.device)
    if config.problem_type is None:
        if n == 1:
            config.problem_type = "regression"
        elif not labels.dtype.is_floating_point:
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze()) if n == 1 else F.mse_loss(logits, labels)
    if config.problem_type == "single_label_classification":
        labels = labels.view(-1)
        if labels.dtype.is_floating_point or labels.shape[0] != logits.shape[0]:
            raise ValueError(f"single-label classification needs integer labels of shape ({logits.shape[0]},)")
        if bool(((labels < 0) | (labels >= n)).any()):
            raise ValueError(f"labels must be class ids in [0, {n}), got {labels.tolist()}")
        return F.cross_entropy(logits, labels)
    if labels.shape != logits.shape:
        raise ValueError(f"multi-label classification needs labels shaped {tuple(logits.shape)}")
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
