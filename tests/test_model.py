"""Model behaviour on its own: causality, attention paths, cross-attention, bad inputs, training hooks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, randomize_, tiny_config
from imagegpt import ImageGPTForCausalImageModeling, ImageGPTForImageClassification, ImageGPTModel
from imagegpt.model import ImageGPTLayerNorm, quick_gelu, reference_attention


def test_layer_norm_does_not_center():
    norm = ImageGPTLayerNorm(4, eps=1e-5)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(norm(x), expected)
    assert norm(x + 10).mean().item() > 0.9  # no mean subtraction: a shifted input stays far from mean 0


def test_quick_gelu():
    x = torch.linspace(-4, 4, 17)
    torch.testing.assert_close(quick_gelu(x), x * torch.sigmoid(1.702 * x))


def test_lm_head_has_vocab_minus_one_outputs_and_is_untied():
    model = ImageGPTForCausalImageModeling(tiny_config())
    assert model.lm_head.weight.shape == (TINY["vocab_size"] - 1, TINY["n_embd"])
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    logits = model(torch.full((1, 3), TINY["vocab_size"] - 1)).logits
    assert logits.shape == (1, 3, TINY["vocab_size"] - 1)


def test_causality_future_tokens_do_not_change_past_logits():
    model = randomize_(ImageGPTForCausalImageModeling(tiny_config())).eval()
    ids = torch.randint(0, 16, (1, 20))
    changed = ids.clone()
    changed[0, 12:] = (changed[0, 12:] + 1) % 16
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-3


@pytest.mark.parametrize("with_mask", [False, True])
def test_sdpa_equals_reference_path(with_mask):
    model = randomize_(ImageGPTModel(tiny_config())).eval()
    ids = torch.randint(0, 17, (2, 15))
    mask = torch.ones(2, 15, dtype=torch.long)
    if with_mask:
        mask[0, 10:] = 0
    with torch.no_grad():
        fast = model(ids, attention_mask=mask).last_hidden_state
        model.set_attn_implementation("eager")
        slow = model(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_attention_weights_are_causal_and_normalized():
    model = randomize_(ImageGPTModel(tiny_config())).eval()
    with torch.no_grad():
        attn = model(torch.randint(0, 17, (1, 6)), output_attentions=True).attentions
    assert len(attn) == TINY["n_layer"] and attn[0].shape == (1, TINY["n_head"], 6, 6)
    torch.testing.assert_close(attn[0].sum(-1), torch.ones(1, TINY["n_head"], 6))
    assert attn[0].triu(1).abs().max() == 0


def _cross_reference(model: ImageGPTModel, ids, enc, enc_mask):
    """Hand-written decoder with cross-attention: causal self-attention, then cross-attention of each position
    over the encoder states with padded encoder positions masked out, then the MLP."""
    cfg = model.config
    x = model.wte(ids) + model.wpe(torch.arange(ids.shape[1]))
    n, hs = cfg.n_head, cfg.n_embd // cfg.n_head

    def heads(t):
        return t.view(t.shape[0], t.shape[1], n, hs).transpose(1, 2)

    causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
    for block in model.h:
        q, k, v = (heads(t) for t in block.attn.c_attn(block.ln_1(x)).split(cfg.n_embd, dim=2))
        y, _ = reference_attention(q, k, v, causal, hs**-0.5)
        x = x + block.attn.c_proj(y.transpose(1, 2).reshape(x.shape))
        ca = block.crossattention
        q = heads(ca.q_attn(block.ln_cross_attn(x)))
        k, v = (heads(t) for t in ca.c_attn(enc).split(cfg.n_embd, dim=2))
        scores = (q @ k.transpose(-1, -2)) * hs**-0.5
        scores = scores.masked_fill(~enc_mask.bool()[:, None, None, :], float("-inf"))
        y = scores.softmax(-1) @ v
        x = x + ca.c_proj(y.transpose(1, 2).reshape(x.shape))
        x = x + block.mlp(block.ln_2(x))
    return model.ln_f(x)


def test_cross_attention_matches_reference_and_respects_encoder_mask():
    model = randomize_(ImageGPTModel(tiny_config(add_cross_attention=True))).eval()
    ids = torch.randint(0, 17, (2, 7))
    enc = torch.randn(2, 5, TINY["n_embd"])
    enc_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        out = model(ids, encoder_hidden_states=enc, encoder_attention_mask=enc_mask, output_attentions=True)
        expected = _cross_reference(model, ids, enc, enc_mask)
        torch.testing.assert_close(out.last_hidden_state, expected, atol=1e-5, rtol=0)
        assert out.cross_attentions[0][1, :, :, 3:].abs().max() == 0  # masked encoder positions get no weight
        garbage = enc.clone()
        garbage[1, 3:] = 1e3  # changing masked encoder states changes nothing
        again = model(ids, encoder_hidden_states=garbage, encoder_attention_mask=enc_mask).last_hidden_state
        torch.testing.assert_close(again, out.last_hidden_state)


def test_cross_attention_cache_computed_once_and_decoding_matches():
    model = randomize_(ImageGPTModel(tiny_config(add_cross_attention=True))).eval()
    ids = torch.randint(0, 17, (2, 9))
    enc = torch.randn(2, 4, TINY["n_embd"])
    with torch.no_grad():
        full = model(ids, encoder_hidden_states=enc).last_hidden_state
        out = model(ids[:, :3], encoder_hidden_states=enc, use_cache=True)
        states = [out.last_hidden_state]
        for t in range(3, 9):
            out = model(ids[:, t : t + 1], encoder_hidden_states=enc, past_key_values=out.past_key_values)
            states.append(out.last_hidden_state)
    torch.testing.assert_close(torch.cat(states, 1), full, atol=1e-5, rtol=0)
    cache = out.past_key_values
    assert cache.get_seq_length() == 9  # self-attention cache is not doubled by cross-attention
    assert cache.cross[0][0].shape == (2, TINY["n_head"], 4, TINY["n_embd"] // TINY["n_head"])


def test_loss_equals_manual_shifted_cross_entropy_and_ignores_minus_100():
    model = randomize_(ImageGPTForCausalImageModeling(tiny_config())).eval()
    ids = torch.randint(0, 16, (2, 10))
    labels = ids.clone()
    labels[0, 4] = -100
    out = model(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, 16)
    expected = F.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(input_ids=torch.tensor([[0, 17]])), ValueError, r"input_ids must lie in \[0, 17\)"),
        (dict(input_ids=torch.tensor([[-1, 2]])), ValueError, "input_ids must lie"),
        (dict(input_ids=torch.rand(1, 4)), TypeError, "integer tensor"),
        (dict(input_ids=torch.zeros(1, 2, 3, dtype=torch.long)), ValueError, r"\(batch, seq\)"),
        (dict(input_ids=torch.zeros(1, 65, dtype=torch.long)), ValueError, "exceeds n_positions=64"),
        (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), ValueError, "empty"),
        (dict(), ValueError, "exactly one of input_ids and inputs_embeds"),
        (dict(inputs_embeds=torch.randn(1, 4, 7)), ValueError, "n_embd=32"),
        (dict(input_ids=torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 5)), ValueError,
         "attention_mask must be"),
        (dict(input_ids=torch.zeros(1, 4, dtype=torch.long), position_ids=torch.tensor([[0, 1, 2, 99]])),
         ValueError, "position_ids must lie"),
        (dict(input_ids=torch.zeros(1, 4, dtype=torch.long), encoder_hidden_states=torch.randn(1, 3, 32)),
         ValueError, "add_cross_attention=True"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, error, match):
    model = ImageGPTForCausalImageModeling(tiny_config())
    with pytest.raises(error, match=match):
        model(**kwargs)


def test_labels_with_start_token_raise_clear_error():
    model = ImageGPTForCausalImageModeling(tiny_config())
    ids = torch.full((1, 4), 16)  # the start token everywhere
    with pytest.raises(ValueError, match="start token"):
        model(ids, labels=ids)


def test_classification_label_errors():
    model = ImageGPTForImageClassification(tiny_config(num_labels=3))
    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"class ids in \[0, 3\)"):
        model(ids, labels=torch.tensor([0, 3]))


def test_cache_past_n_positions_raises():
    model = ImageGPTForCausalImageModeling(tiny_config(n_positions=8)).eval()
    out = model(torch.zeros(1, 8, dtype=torch.long), use_cache=True)
    with pytest.raises(ValueError, match="exceeds n_positions=8"):
        model(torch.zeros(1, 1, dtype=torch.long), past_key_values=out.past_key_values)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    a = randomize_(ImageGPTForCausalImageModeling(tiny_config()))
    b = randomize_(ImageGPTForCausalImageModeling(tiny_config()))
    b.gradient_checkpointing_enable()
    ids = torch.randint(0, 16, (2, 12))
    for m in (a, b):
        m.train()
        m(ids, labels=ids).loss.backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_dropout_active_only_in_training():
    model = ImageGPTForCausalImageModeling(tiny_config(resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5))
    ids = torch.randint(0, 16, (1, 10))
    model.eval()
    torch.testing.assert_close(model(ids).logits, model(ids).logits)
    model.train()
    assert not torch.allclose(model(ids).logits, model(ids).logits)


def test_num_parameters():
    model = ImageGPTForCausalImageModeling(tiny_config())
    total = sum(p.numel() for p in model.parameters())
    emb = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    assert model.num_parameters() == total
    assert model.num_parameters(exclude_embeddings=True) == total - emb
    model.lm_head.weight.requires_grad_(False)
    assert model.num_parameters(only_trainable=True) == total - model.lm_head.weight.numel()


def test_output_tuple_indexing():
    model = ImageGPTForCausalImageModeling(tiny_config()).eval()
    ids = torch.randint(0, 16, (1, 5))
    out = model(ids, labels=ids, use_cache=False)
    loss, logits = out[:2]
    assert loss is out.loss and logits is out["logits"]
    assert list(out.keys()) == ["loss", "logits"]


def test_past_key_values_are_used_even_with_use_cache_false():
    model = randomize_(ImageGPTForCausalImageModeling(tiny_config())).eval()
    ids = torch.randint(0, 16, (1, 8))
    with torch.no_grad():
        cache = model(ids[:, :5]).past_key_values
        out = model(ids[:, 5:], past_key_values=cache, use_cache=False)
        full = model(ids, use_cache=False).logits
    assert out.past_key_values is None
    torch.testing.assert_close(out.logits, full[:, 5:], atol=1e-5, rtol=0)


def test_inference_mlp_matches_autograd_mlp():
    # without autograd the MLP applies quick_gelu in place; the numbers must not change
    model = randomize_(ImageGPTForCausalImageModeling(tiny_config())).eval()
    ids = torch.randint(0, 16, (2, 12))
    with_grad = model(ids).logits
    with torch.inference_mode():
        without = model(ids).logits
    torch.testing.assert_close(without, with_grad.detach(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bidirectional_config_attends_both_ways_and_round_trips(tmp_path, attn):
    """The BERT objective's model: config "bidirectional": true; the first position sees the last."""
    from imagegpt import ImageGPTModel

    model = ImageGPTModel(tiny_config(bidirectional=True)).eval()
    model.attn_implementation = attn
    ids = torch.randint(0, 16, (2, 10))
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % 16
    with torch.no_grad():
        a, b = model(ids).last_hidden_state, model(changed).last_hidden_state
        assert (a[:, 0] - b[:, 0]).abs().max() > 1e-4  # a causal model would not see the change at position 0
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0
        padded = model(ids, attention_mask=mask).last_hidden_state
        alone = model(ids[1:, :7]).last_hidden_state
        torch.testing.assert_close(padded[1, :7], alone[0], atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = ImageGPTModel.from_pretrained(tmp_path).eval()
    assert not loaded.causal
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).last_hidden_state, a)
