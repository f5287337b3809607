"""Ours vs transformers on the same random weights, through save_pretrained/from_pretrained (float32, 1e-5)."""

from __future__ import annotations

import pytest
import torch

import imagegpt
from conftest import TINY, randomize_

TOL = 1e-5
CLASSES = ["ImageGPTModel", "ImageGPTForCausalImageModeling", "ImageGPTForImageClassification"]


def hf_config(transformers, **overrides):
    return transformers.ImageGPTConfig(
        **{**TINY, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **overrides}
    )


def hf_to_ours(transformers, tmp_path, cls_name="ImageGPTForCausalImageModeling", **overrides):
    hf = getattr(transformers, cls_name)(hf_config(transformers, **overrides)).eval()
    randomize_(hf)
    hf.save_pretrained(tmp_path)
    ours = getattr(imagegpt, cls_name).from_pretrained(tmp_path)
    return hf, ours


def close(a, b, tol=TOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a - b).abs().max().item()
    assert diff <= tol, f"max |diff| = {diff:.3g}"


def compare(hf_out, our_out, mask=None):
    """Every tensor output present in both: hidden states, logits, attentions, loss (only unmasked rows)."""
    for name in ("loss", "logits", "last_hidden_state"):
        a, b = getattr(hf_out, name, None), getattr(our_out, name, None)
        if a is not None:
            if mask is not None and a.dim() == 3:
                a, b = a[mask.bool()], b[mask.bool()]
            close(a, b)
    for name in ("hidden_states", "attentions"):
        a, b = getattr(hf_out, name, None), getattr(our_out, name, None)
        if a is None:
            continue
        assert len(a) == len(b)
        for x, y in zip(a, b):
            if mask is not None:
                x, y = (x[mask.bool()], y[mask.bool()]) if x.dim() == 3 else (x[:, :, mask[0].bool()], y[:, :, mask[0].bool()])
            close(x, y)


FLAGS = [
    {},
    {"activation_function": "gelu"},
    {"activation_function": "gelu_new"},
    {"activation_function": "relu"},
    {"activation_function": "silu"},
    {"activation_function": "tanh"},
    {"scale_attn_weights": False},
    {"scale_attn_by_inverse_layer_idx": True},
    {"reorder_and_upcast_attn": True},
    {"n_inner": 37},
    {"layer_norm_epsilon": 1e-2},
]


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "default")
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_causal_lm_parity_per_config_flag(transformers, tmp_path, flags, attn):
    hf, ours = hf_to_ours(transformers, tmp_path, **flags)
    ours.set_attn_implementation(attn)
    ids = torch.randint(0, TINY["vocab_size"] - 1, (3, 20))
    ids[:, 0] = TINY["vocab_size"] - 1  # start token
    kw = dict(labels=ids, output_hidden_states=True)
    with torch.no_grad():
        compare(hf(ids, **kw), ours(ids, **kw))
        compare(hf(ids, output_attentions=True), ours(ids, output_attentions=True))


@pytest.mark.parametrize("cls_name", CLASSES)
def test_all_outputs_every_class(transformers, tmp_path, cls_name):
    hf, ours = hf_to_ours(transformers, tmp_path, cls_name)
    ids = torch.randint(0, TINY["vocab_size"], (2, 16))
    kw = dict(output_hidden_states=True, output_attentions=True)
    if cls_name == "ImageGPTForImageClassification":
        kw["labels"] = torch.tensor([0, 1])
    with torch.no_grad():
        a, b = hf(ids, **kw), ours(ids, **kw)
    compare(a, b)
    assert len(b.hidden_states) == TINY["n_layer"] + 1
    # the last hidden state is the ln_f output
    close(b.hidden_states[-1], ours(ids).last_hidden_state if cls_name == "ImageGPTModel" else b.hidden_states[-1])


@pytest.mark.parametrize("cls_name", CLASSES)
def test_ours_loads_into_transformers(transformers, tmp_path, cls_name):
    ours = randomize_(getattr(imagegpt, cls_name)(imagegpt.ImageGPTConfig(**TINY, resid_pdrop=0.0,
                                                                          embd_pdrop=0.0, attn_pdrop=0.0)))
    ours.eval().save_pretrained(tmp_path)
    hf = getattr(transformers, cls_name).from_pretrained(tmp_path).eval()
    ids = torch.randint(0, TINY["vocab_size"], (2, 12))
    with torch.no_grad():
        compare(hf(ids, output_hidden_states=True), ours(ids, output_hidden_states=True))


@pytest.mark.parametrize("problem", ["regression", "single", "multi"])
def test_classification_losses(transformers, tmp_path, problem):
    num_labels = {"regression": 1, "single": 4, "multi": 4}[problem]
    hf, ours = hf_to_ours(transformers, tmp_path, "ImageGPTForImageClassification", num_labels=num_labels)
    ids = torch.randint(0, TINY["vocab_size"], (3, 10))
    labels = {
        "regression": torch.randn(3),
        "single": torch.tensor([0, 3, 1]),
        "multi": torch.randint(0, 2, (3, 4)).float(),
    }[problem]
    with torch.no_grad():
        a, b = hf(ids, labels=labels), ours(ids, labels=labels)
    close(a.loss, b.loss)
    close(a.logits, b.logits)
    assert ours.config.problem_type == hf.config.problem_type


def test_right_padded_batch_matches_everywhere(transformers, tmp_path):
    # right padding: every query sees at least one real key, so all outputs are well defined in both
    hf, ours = hf_to_ours(transformers, tmp_path, "ImageGPTForImageClassification")
    ids = torch.randint(0, TINY["vocab_size"], (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    with torch.no_grad():
        a = hf(ids, attention_mask=mask, labels=torch.tensor([0, 1, 1]), output_hidden_states=True)
        b = ours(ids, attention_mask=mask, labels=torch.tensor([0, 1, 1]), output_hidden_states=True)
    compare(a, b)


def test_left_padded_batch_matches_on_real_tokens(transformers, tmp_path):
    hf, ours = hf_to_ours(transformers, tmp_path)
    ids = torch.randint(0, TINY["vocab_size"] - 1, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :4] = 0
    with torch.no_grad():
        a = hf(ids, attention_mask=mask, output_hidden_states=True)
        b = ours(ids, attention_mask=mask, output_hidden_states=True)
    for x, y in zip(a.hidden_states + (a.logits,), b.hidden_states + (b.logits,)):
        close(x[mask.bool()], y[mask.bool()])
    assert torch.isfinite(b.logits).all()  # padded rows stay finite: no NaN leaks into real rows


def test_position_ids_token_type_ids_inputs_embeds(transformers, tmp_path):
    hf, ours = hf_to_ours(transformers, tmp_path)
    ids = torch.randint(0, TINY["vocab_size"], (2, 9))
    pos = torch.randint(0, TINY["n_positions"], (2, 9))
    tt = torch.randint(0, TINY["vocab_size"], (2, 9))
    with torch.no_grad():
        compare(hf(ids, position_ids=pos), ours(ids, position_ids=pos))
        compare(hf(ids, token_type_ids=tt), ours(ids, token_type_ids=tt))
        emb = hf.transformer.wte(ids) * 1.5
        compare(hf(inputs_embeds=emb), ours(inputs_embeds=emb))


@pytest.mark.parametrize("prefill", [1, 5])
def test_cached_decoding_matches_full_forward(transformers, tmp_path, prefill):
    hf, ours = hf_to_ours(transformers, tmp_path)
    ids = torch.randint(0, TINY["vocab_size"] - 1, (2, 24))
    with torch.no_grad():
        full = hf(ids, use_cache=False).logits
        out = ours(ids[:, :prefill], use_cache=True)
        steps = [out.logits]
        for t in range(prefill, ids.shape[1]):
            out = ours(ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    close(torch.cat(steps, dim=1), full)
    assert out.past_key_values.get_seq_length() == ids.shape[1]


def test_cached_decoding_with_padding_mask(transformers, tmp_path):
    hf, ours = hf_to_ours(transformers, tmp_path)
    ids = torch.randint(0, TINY["vocab_size"] - 1, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, 2:4] = 0  # holes in the prompt
    with torch.no_grad():
        full = hf(ids, attention_mask=mask).logits
        out = ours(ids[:, :6], attention_mask=mask[:, :6])
        logits = [out.logits]
        for t in range(6, 10):
            out = ours(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=out.past_key_values)
            logits.append(out.logits)
    got = torch.cat(logits, dim=1)
    close(got[mask.bool()], full[mask.bool()])


def test_legacy_tuple_cache_from_transformers(transformers, tmp_path):
    # transformers' past (as tuples) continues in ours
    hf, ours = hf_to_ours(transformers, tmp_path)
    ids = torch.randint(0, TINY["vocab_size"] - 1, (1, 8))
    with torch.no_grad():
        past = hf(ids[:, :5], use_cache=True).past_key_values
        legacy = tuple((layer.keys, layer.values) for layer in past.layers)
        a = hf(ids, use_cache=False).logits[:, 5:]
        b = ours(ids[:, 5:], past_key_values=legacy).logits
    close(a, b)


def test_return_dict_false_tuple(transformers, tmp_path):
    hf, ours = hf_to_ours(transformers, tmp_path)
    ids = torch.randint(0, TINY["vocab_size"] - 1, (1, 8))
    with torch.no_grad():
        a = hf(ids, labels=ids, return_dict=False, use_cache=False)
        b = ours(ids, labels=ids, return_dict=False, use_cache=False)
    assert len(a) == len(b) == 2
    close(a[0], b[0])
    close(a[1], b[1])


def test_pytorch_model_bin_from_transformers(transformers, tmp_path):
    hf = randomize_(transformers.ImageGPTForCausalImageModeling(hf_config(transformers))).eval()
    hf.save_pretrained(tmp_path, safe_serialization=False) if _supports_bin(hf) else _save_bin(hf, tmp_path)
    assert (tmp_path / "pytorch_model.bin").exists()
    ours = imagegpt.ImageGPTForCausalImageModeling.from_pretrained(tmp_path)
    ids = torch.randint(0, TINY["vocab_size"], (1, 8))
    with torch.no_grad():
        close(hf(ids).logits, ours(ids).logits)


def _supports_bin(model) -> bool:
    import inspect

    return "safe_serialization" in inspect.signature(model.save_pretrained).parameters


def _save_bin(hf, path):
    hf.config.save_pretrained(path)
    torch.save(hf.state_dict(), path / "pytorch_model.bin")


def test_weight_init_statistics_match_transformers(transformers):
    cfg = dict(TINY, n_embd=128, n_layer=4, vocab_size=513, n_positions=256)
    hf = transformers.ImageGPTForCausalImageModeling(transformers.ImageGPTConfig(**cfg))
    ours = imagegpt.ImageGPTForCausalImageModeling(imagegpt.ImageGPTConfig(**cfg))
    hf_params = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        q = hf_params[name]
        assert p.numel() == q.numel(), name
        assert abs(p.float().std().item() - q.float().std().item()) < 0.25 * q.float().std().item() + 1e-6, name
        assert abs(p.float().mean().item() - q.float().mean().item()) < 0.01 + 1e-6, name
    assert ours.num_parameters() == hf.num_parameters()


@pytest.mark.parametrize("delta", [10, -5])
def test_resize_token_embeddings_like_transformers(transformers, tmp_path, delta):
    hf, ours = hf_to_ours(transformers, tmp_path)
    n = TINY["vocab_size"] + delta
    hf.resize_token_embeddings(n)
    ours.resize_token_embeddings(n)
    assert ours.config.vocab_size == hf.config.vocab_size == n
    assert ours.transformer.wte.weight.shape == hf.transformer.wte.weight.shape
    assert ours.lm_head.weight.shape == (n - 1, TINY["n_embd"])
    keep = min(n, TINY["vocab_size"]) - 1
    close(ours.transformer.wte.weight[:keep], hf.transformer.wte.weight[:keep])
    ids = torch.randint(0, keep, (1, 6))
    assert ours(ids).logits.shape == (1, 6, n - 1)
