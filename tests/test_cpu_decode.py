"""CPU decode weights: oneDNN-packed and (out, in) copies give the same logits and tokens, and vanish after."""

from __future__ import annotations

import pytest
import torch

from conftest import prompt, randomize_, tiny_config
from imagegpt import ImageGPTForCausalImageModeling, cpu_decode
from imagegpt.cpu_decode import PACKED_MAX_ROWS, decode_weights, onednn_available, packed_linears, use_packed
from imagegpt.layers import Conv1D
from imagegpt.sampling import generate

PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _model() -> ImageGPTForCausalImageModeling:
    return randomize_(ImageGPTForCausalImageModeling(tiny_config()).eval())


@pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN")
def test_packed_cpu_linears_give_the_same_logits_and_are_removed_after():
    model = _model()
    seq = prompt(model, 3, 20)  # 60 rows: under PACKED_MAX_ROWS, so the packed weights are used
    assert 3 * 20 <= PACKED_MAX_ROWS < 3 * 30
    with torch.inference_mode():
        expected = model(seq).logits
        long = prompt(model, 3, 30)  # 90 rows: a prefill, on the layers' own forward
        expected_long = model(long).logits
        with packed_linears(model, 3):
            patched = [name for name, m in model.named_modules() if "forward" in vars(m)]
            got, got_long = model(seq).logits, model(long).logits
        assert not any("forward" in vars(m) for m in model.modules())
    # every projection (Conv1D, weight (in, out), packed from its transpose) and the LM head (nn.Linear)
    assert sorted(patched) == sorted([f"transformer.h.{i}.{p}" for i in range(2) for p in PROJECTIONS] + ["lm_head"])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got_long, expected_long, atol=0, rtol=0)
    ids = prompt(model, 2, 3)
    packed = generate(model, ids, max_length=65, cpu_packed=True)
    assert torch.equal(packed, generate(model, ids, max_length=65, cpu_packed=False))


def test_decode_weights_transposed_projections_for_several_rows():
    """Unpacked CPU decoding of several rows runs the Conv1D projections on (out, in) copies (faster in MKL's sgemm
    for a few rows); one row, cpu_packed=False (a model shared between threads) and packing leave them alone."""
    model = _model()
    seq = prompt(model, 3, 20)

    def patched():
        return sorted(name for name, m in model.named_modules() if "forward" in vars(m))

    with torch.inference_mode():
        expected = model(seq).logits
        with decode_weights(model, 3, None):
            assert patched() == sorted(f"transformer.h.{i}.{p}" for i in range(2) for p in PROJECTIONS)
            assert all(isinstance(model.get_submodule(name), Conv1D) for name in patched())
            got = model(seq).logits
        assert patched() == []
        for batch, cpu_packed in ((1, None), (3, False)):
            with decode_weights(model, batch, cpu_packed):
                assert patched() == []
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    ids = prompt(model, 2, 3)
    assert torch.equal(generate(model, ids, max_length=40), generate(model, ids, max_length=40, cpu_packed=False))


def test_packing_is_chosen_by_size_and_dtype_unless_asked(monkeypatch):
    """Weights that fit in the CPU's caches are not packed; larger float32 ones are (where oneDNN is present);
    ``cpu_packed`` overrides either way."""
    model = _model()
    assert not use_packed(model)
    assert use_packed(model, True) and not use_packed(model, False)
    monkeypatch.setattr(cpu_decode, "PACKED_MIN_BYTES", 0)  # as if the tiny model were imagegpt-small
    assert use_packed(model) == onednn_available()
    assert not use_packed(model.to(torch.bfloat16))  # oneDNN's packed linear here is float32 only
