"""CUDA checks: run where a GPU is present (skipped on CPU-only machines such as CI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import imagegpt
from conftest import TINY, randomize_, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_parity_with_transformers_fp32(transformers, tmp_path):
    hf = transformers.ImageGPTForCausalImageModeling(transformers.ImageGPTConfig(
        **TINY, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()  # fmt: skip
    randomize_(hf).save_pretrained(tmp_path)
    ours = imagegpt.ImageGPTForCausalImageModeling.from_pretrained(tmp_path, device="cuda")
    hf = hf.cuda()
    ids = torch.randint(0, 16, (3, 40), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    with torch.no_grad():
        a = hf(ids, attention_mask=mask, labels=ids, output_hidden_states=True)
        b = ours(ids, attention_mask=mask, labels=ids, output_hidden_states=True)
    for x, y in zip(a.hidden_states + (a.logits,), b.hidden_states + (b.logits,)):
        assert (x - y)[mask.bool()].abs().max().item() <= 1e-5
    assert abs(a.loss.item() - b.loss.item()) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32_and_paths_agree(tmp_path, dtype):
    model = randomize_(imagegpt.ImageGPTForCausalImageModeling(tiny_config(n_embd=64, n_head=4)))
    model.save_pretrained(tmp_path)
    ref = imagegpt.ImageGPTForCausalImageModeling.from_pretrained(tmp_path, device="cuda")
    half = imagegpt.ImageGPTForCausalImageModeling.from_pretrained(tmp_path, device="cuda", torch_dtype=dtype)
    assert half.dtype == dtype
    ids = torch.randint(0, 16, (2, 48), device="cuda")
    with torch.no_grad():
        full = ref(ids).logits
        fast = half(ids).logits.float()
        half.set_attn_implementation("eager")
        slow = half(ids).logits.float()
    scale = full.abs().max().item()
    assert (fast - full).abs().max().item() <= 0.05 * scale
    assert (fast - slow).abs().max().item() <= 0.05 * scale


def test_cuda_cached_decoding_matches_full_forward():
    model = randomize_(imagegpt.ImageGPTForCausalImageModeling(tiny_config())).cuda().eval()
    ids = torch.randint(0, 16, (2, 20), device="cuda")
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :4])
        steps = [out.logits]
        for t in range(4, 20):
            out = model(ids[:, t : t + 1], past_key_values=out.past_key_values)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


def test_cuda_training_step_runs_with_autocast():
    model = imagegpt.ImageGPTForCausalImageModeling(tiny_config()).cuda().train()
    ids = torch.randint(0, 16, (4, 32), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


def test_cuda_sampler_greedy_matches_cpu_and_seeds_reproduce():
    from imagegpt.sampling import generate

    model = randomize_(imagegpt.ImageGPTForCausalImageModeling(tiny_config())).eval()
    ids = torch.full((3, 1), 16)
    cpu = generate(model, ids, max_length=65)
    model.cuda()
    gpu = generate(model, ids.cuda(), max_length=65)
    assert torch.equal(gpu.cpu(), cpu)
    assert torch.equal(generate(model, ids.cuda(), max_length=65, cuda_graph=False).cpu(), cpu)
    a = generate(model, ids.cuda(), max_length=65, do_sample=True, top_k=5, seed=3)
    b = generate(model, ids.cuda(), max_length=65, do_sample=True, top_k=5, seed=3)
    c = generate(model, ids.cuda(), max_length=65, do_sample=True, top_k=5, seed=3, cuda_graph=False)
    assert a.device.type == "cuda" and torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_half_precision_sampling(dtype):
    from imagegpt.completion import complete
    from imagegpt.palette import grayscale_palette
    from imagegpt.processor import ImageGPTImageProcessor

    model = randomize_(imagegpt.ImageGPTForCausalImageModeling(tiny_config())).to("cuda", dtype).eval()
    proc = ImageGPTImageProcessor(clusters=grayscale_palette(16), size={"height": 8, "width": 8})
    image = (torch.arange(64).reshape(8, 8) * 4).to(torch.uint8).numpy()
    result = complete(model, proc, [image, image], rows=3, samples=2, seed=0, top_p=0.9)
    kept = proc(image, return_tensors="np")["input_ids"][0, :24]
    assert result.ids.shape == (2, 2, 64) and (result.ids[:, :, :24] == kept).all() and (result.ids < 16).all()


def test_cuda_finetune_steps_in_bfloat16_autocast(tmp_path):
    from imagegpt.finetune import FinetuneConfig, finetune
    from imagegpt.palette import grayscale_palette
    from imagegpt.processor import ImageGPTImageProcessor

    path = tmp_path / "pretrained"
    imagegpt.ImageGPTForCausalImageModeling(tiny_config()).save_pretrained(path)
    ImageGPTImageProcessor(clusters=grayscale_palette(16), size={"height": 8, "width": 8}).save_pretrained(path)
    ids = np.concatenate([np.full((32, 1), 16), np.random.default_rng(0).integers(0, 16, (32, 64))], axis=1)
    labels = np.arange(32) % 2
    cfg = FinetuneConfig(max_steps=4, eval_interval=2, augment=False, gen_weight=0.5, dtype="bfloat16",
                         device="cuda", progress=False)  # fmt: skip
    result = finetune(path, (ids, labels, None), (ids, labels), tmp_path / "ft", cfg)
    assert result["steps"] == 4 and np.isfinite([h["loss"] for h in result["history"]]).all()
    assert (tmp_path / "ft" / "best" / "config.json").exists()
