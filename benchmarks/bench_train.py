"""Training step: imagegpt vs transformers' ImageGPTForCausalImageModeling, same weights, batch and optimizer.

One step = zero_grad, forward on ``ids[:, :-1]``, cross-entropy against ``ids[:, 1:]`` (the loss of
imagegpt.training.compute_loss, applied to both models' logits), backward, global grad-norm clip at 1.0 and an
AdamW update (lr 3e-4, betas (0.9, 0.95), weight decay 0.1 on >= 2-D params, as imagegpt.training; fused on CUDA).
Dropout is 0 in both; both are in train mode. Before timing, one step of each on the shared random weights must
give the same loss (|diff| <= 1e-4).

Reported per shape: median seconds per step over --reps (after --warmup untimed steps), tokens/s (tokens = batch
x H*W predicted pixels) and MFU = 6 * non-embedding params * tokens / seconds / peak, where peak is the best
GFLOP/s of a 2048^3 matmul in the step's dtype (before and after the runs). The two implementations alternate one
step at a time (ours, theirs, theirs, ours, ...) because this machine's speed drifts over minutes.

  python benchmarks/bench_train.py                          # tiny (2x64, 16x16) and small (24x512, 32x32), CPU
  python benchmarks/bench_train.py --shapes tiny --reps 5
  python benchmarks/bench_train.py --device cuda --dtype bfloat16 --batch 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_forward import device_name, matmul_peak, sync  # noqa: E402

SHAPES = {  # model, image side, default batch on CPU
    "tiny": (dict(n_embd=64, n_head=4, n_layer=2), 16, 8),
    "small": (dict(n_embd=512, n_head=8, n_layer=24), 32, 4),
}


def optimizer(model: torch.nn.Module, device: str) -> torch.optim.AdamW:
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # fmt: skip
    return torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), **({"fused": True} if device == "cuda" else {}))


def train_step(model, opt, ids, autocast) -> float:
    opt.zero_grad(set_to_none=True)
    with autocast():
        logits = model(ids[:, :-1], use_cache=False, return_dict=True).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.detach()


def build_pair(shape: str, device: str, directory: Path):
    """Ours with random weights (seed 0), saved, and loaded into transformers: the same weights in both."""
    import transformers

    from imagegpt import ImageGPTConfig, ImageGPTForCausalImageModeling

    transformers.logging.set_verbosity_error()
    spec, side, _ = SHAPES[shape]
    config = ImageGPTConfig(**spec, vocab_size=513, n_positions=side * side, resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0)  # fmt: skip
    torch.manual_seed(0)
    ours = ImageGPTForCausalImageModeling(config)
    ours.save_pretrained(directory)
    theirs = transformers.ImageGPTForCausalImageModeling.from_pretrained(directory)
    params = sum(p.numel() for n, p in ours.named_parameters() if not n.endswith(("wte.weight", "wpe.weight")))
    return {"ours": ours.to(device).train(), "transformers": theirs.to(device).train()}, params


def run_shape(shape: str, args, autocast) -> list[dict]:
    _, side, default_batch = SHAPES[shape]
    batch, seq = args.batch or default_batch, side * side
    with tempfile.TemporaryDirectory() as directory:
        models, params = build_pair(shape, args.device, Path(directory))
    opts = {impl: optimizer(m, args.device) for impl, m in models.items()}
    g = torch.Generator().manual_seed(1)
    ids = torch.cat([torch.full((batch, 1), 512), torch.randint(0, 512, (batch, seq), generator=g)], 1)
    ids = ids.to(args.device)
    losses = {impl: train_step(models[impl], opts[impl], ids, autocast).item() for impl in models}
    diff = abs(losses["ours"] - losses["transformers"])
    print(f"{shape}: first-step loss ours {losses['ours']:.6f}, transformers {losses['transformers']:.6f} "
          f"(|diff| {diff:.1e})")  # fmt: skip
    if args.dtype == "float32" and diff > 1e-4:
        sys.exit("the two models disagree: not benchmarking different computations")
    for _ in range(args.warmup - 1):  # the checked step was the first warm-up step
        for impl in models:
            train_step(models[impl], opts[impl], ids, autocast)
    times: dict[str, list[float]] = {impl: [] for impl in models}
    for rep in range(args.reps):
        for impl in (("ours", "transformers") if rep % 2 == 0 else ("transformers", "ours")):
            sync(args.device)
            t = time.perf_counter()
            train_step(models[impl], opts[impl], ids, autocast)
            sync(args.device)
            times[impl].append(time.perf_counter() - t)
    rows = []
    for impl in ("transformers", "ours"):
        med = statistics.median(times[impl])
        rows.append(dict(impl=impl, shape=shape, batch=batch, seq=seq, dtype=args.dtype, device=args.device,
                         params_non_embedding=params, times=times[impl], min_s=min(times[impl]), median_s=med,
                         tokens_per_s=batch * seq / med, flops_per_step=6 * params * batch * seq,
                         first_step_loss=losses[impl]))  # fmt: skip
    rows[-1]["ours_over_transformers"] = rows[-1]["median_s"] / rows[-2]["median_s"]
    del models, opts
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    p.add_argument("--batch", type=int, help="batch for every shape (default: tiny 8, small 4)")
    p.add_argument("--reps", type=int, default=3, help="timed steps per implementation and shape (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (>= 1: the checked step)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="bfloat16: autocast, CUDA")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", type=Path, help="default benchmarks/results/train_<device>.json")
    args = p.parse_args()
    if args.dtype == "bfloat16" and args.device != "cuda":
        p.error("bfloat16 autocast is for CUDA")
    args.warmup = max(1, args.warmup)
    torch.set_num_threads(args.threads)
    import transformers

    dtype = getattr(torch, args.dtype)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if args.dtype == "bfloat16" else (
        contextlib.nullcontext)  # fmt: skip
    peak_before = matmul_peak(args.device, dtype)
    print(f"device: {device_name(args.device)} | torch {torch.__version__} | transformers {transformers.__version__}"
          f" | dtype {args.dtype} | reps {args.reps} after {args.warmup} warm-up")  # fmt: skip
    rows = [row for shape in args.shapes for row in run_shape(shape, args, autocast)]
    peak = max(peak_before, matmul_peak(args.device, dtype))
    print(f"matmul peak ({args.dtype}, 2048^3): {peak:.0f} GFLOP/s (best of before/after); "
          "MFU = 6 * non-embedding params * tokens / time / peak\n")
    print("| shape | impl | batch x seq | dtype | device | s / step (min / median) | tokens/s | MFU | ours/theirs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["mfu"] = r["flops_per_step"] / r["median_s"] / (peak * 1e9)
        ratio = f"**{r['ours_over_transformers']:.2f}x**" if "ours_over_transformers" in r else ""
        print(f"| {r['shape']} | {r['impl']} | {r['batch']}x{r['seq']} | {r['dtype']} | {r['device']} | "
              f"{r['min_s']:.3f} / **{r['median_s']:.3f}** | {r['tokens_per_s']:,.0f} | {100 * r['mfu']:.1f}% | "
              f"{ratio} |")  # fmt: skip
    path = args.json or Path(__file__).parent / "results" / f"train_{args.device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(device=device_name(args.device), torch=torch.__version__, transformers=transformers.__version__,
                matmul_peak_gflops=peak, threads=args.threads, reps=args.reps, warmup=args.warmup,
                step="zero_grad + forward + cross-entropy + backward + clip 1.0 + AdamW")  # fmt: skip
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
