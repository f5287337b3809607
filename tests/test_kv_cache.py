"""KVCache: static pre-allocation, growth, legacy format, reuse."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY, randomize_, tiny_config
from imagegpt import ImageGPTForCausalImageModeling, KVCache


def _decode(model, ids, cache, prefill):
    out = model(ids[:, :prefill], past_key_values=cache, use_cache=True)
    logits = [out.logits]
    for t in range(prefill, ids.shape[1]):
        out = model(ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits)
    return torch.cat(logits, 1), out.past_key_values


@pytest.mark.parametrize("prefill", [1, 7])
def test_static_cache_decoding_equals_full_forward_without_reallocation(prefill):
    model = randomize_(ImageGPTForCausalImageModeling(tiny_config())).eval()
    ids = torch.randint(0, 16, (3, 30))
    cache = KVCache.static(TINY["n_layer"], 3, TINY["n_head"], TINY["n_embd"] // TINY["n_head"], 64)
    buffers = [k.data_ptr() for k in cache._keys]
    with torch.no_grad():
        got, cache = _decode(model, ids, cache, prefill)
        full = model(ids, use_cache=False).logits
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    assert [k.data_ptr() for k in cache._keys] == buffers  # written in place
    assert cache.get_seq_length() == 30 and cache.capacity == 64


def test_implicit_cache_grows_geometrically_and_keeps_first_chunk_uncopied():
    model = randomize_(ImageGPTForCausalImageModeling(tiny_config())).eval()
    ids = torch.randint(0, 16, (1, 40))
    with torch.no_grad():
        got, cache = _decode(model, ids, None, 3)
        torch.testing.assert_close(got, model(ids, use_cache=False).logits, atol=1e-5, rtol=0)
    assert cache.get_seq_length() == 40
    assert 40 <= cache.capacity <= 64  # grew 3 -> 6 -> 12 -> 24 -> 48


def test_reset_reuse_crop_and_legacy_round_trip():
    model = randomize_(ImageGPTForCausalImageModeling(tiny_config())).eval()
    ids = torch.randint(0, 16, (2, 12))
    with torch.no_grad():
        first, cache = _decode(model, ids, None, 4)
        cache.reset()
        again, _ = _decode(model, ids, cache, 4)
        torch.testing.assert_close(first, again)
        cache.crop(6)  # rewind and continue from position 6
        out = model(ids[:, 6:], past_key_values=cache)
        torch.testing.assert_close(out.logits, first[:, 6:], atol=1e-5, rtol=0)
    legacy = cache.to_legacy_cache()
    assert len(legacy) == TINY["n_layer"] and legacy[0][0].shape == (2, TINY["n_head"], 12, 8)
    rebuilt = KVCache.from_legacy_cache(legacy)
    assert rebuilt.get_seq_length() == 12


def test_reorder_cache_selects_rows():
    model = randomize_(ImageGPTForCausalImageModeling(tiny_config())).eval()
    ids = torch.randint(0, 16, (2, 6))
    with torch.no_grad():
        cache = model(ids).past_key_values
        cache.reorder_cache(torch.tensor([1, 1]))
        nxt = torch.tensor([[3], [3]])
        out = model(nxt, past_key_values=cache).logits
        ref = model(torch.cat([ids[1:], nxt[:1]], 1), use_cache=False).logits[:, -1:]
    torch.testing.assert_close(out[0:1], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1:2], ref, atol=1e-5, rtol=0)


def test_batch_mismatch_and_bad_legacy_shapes():
    model = ImageGPTForCausalImageModeling(tiny_config()).eval()
    with torch.no_grad():
        cache = model(torch.zeros(2, 3, dtype=torch.long)).past_key_values
        with pytest.raises(ValueError, match="batch size 2 but the input has batch size 1"):
            model(torch.zeros(1, 1, dtype=torch.long), past_key_values=cache)
    with pytest.raises(ValueError, match=r"\(batch, n_head, seq, head_dim\)"):
        KVCache.from_legacy_cache([(torch.zeros(2, 3), torch.zeros(2, 3))])
