"""Full-sequence forward: imagegpt vs transformers' ImageGPTForCausalImageModeling on the same weights.

What is measured, per (implementation, batch), each in a fresh child process so peak RSS is its own:
  seconds per forward `model(input_ids)` (the default call of both: use_cache=True, so both also build a KV
  cache) under model.eval() + torch.inference_mode(), after --warmup runs; min / median / max over --reps runs;
  tokens/s; peak RSS (VmHWM, reset after build + warm-up so it covers the timed runs; CPU only);
  the fraction of the FLOP bound = (FLOPs / matmul peak) / measured time, where the matmul peak is the best
  GFLOP/s of a 2048^3 matmul in --dtype, taken before and after the runs, and
  FLOPs = 2 * non-embedding params * tokens + 2 * 2 * n_layer * seq^2 * n_embd * batch (full, not causal-halved)
  (non-embedding params: everything but wte and wpe; the LM head counts).
Before timing, the max |logit diff| between the two on the shared random weights must be <= 1e-4.
The two implementations run interleaved, one rep at a time in alternating order (ours, theirs, theirs,
ours, ...), because this machine's speed drifts by up to 2x over minutes; the ratio is ours/theirs of the
medians (and, less sensitive to slow phases, of the minimums).

  python benchmarks/bench_forward.py                       # imagegpt-small shape, batch 1 and 4, CPU
  python benchmarks/bench_forward.py --tiny --reps 5       # a 2-layer smoke run
  python benchmarks/bench_forward.py --device cuda --dtype bfloat16 --batches 1 8 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # keep the table readable

import torch  # noqa: E402

SHAPES = {
    "small": dict(n_embd=512, n_head=8, n_layer=24, n_positions=1024, vocab_size=513),
    "mini": dict(n_embd=256, n_head=8, n_layer=8, n_positions=1024, vocab_size=513),
    "tiny": dict(n_embd=64, n_head=4, n_layer=2, n_positions=256, vocab_size=65),
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else f"{cpu_name()}, {torch.get_num_threads()} threads"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def make_weights(shape: str, directory: Path) -> tuple[float, int]:
    """A transformers model with random weights (norms and biases perturbed), saved; returns the max |logit diff|
    between transformers and ours on it (fp32, CPU) and the non-embedding parameter count."""
    import transformers

    from imagegpt import ImageGPTForCausalImageModeling

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.manual_seed(0)
    config = transformers.ImageGPTConfig(**SHAPES[shape], resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    theirs = transformers.ImageGPTForCausalImageModeling(config).eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0, 0.02)
    theirs.save_pretrained(directory)
    ours = ImageGPTForCausalImageModeling.from_pretrained(directory)
    ids = torch.randint(0, config.vocab_size, (2, min(256, config.n_positions)))
    with torch.inference_mode():
        diff = (theirs(ids).logits - ours(ids).logits).abs().max().item()
    params = sum(p.numel() for n, p in theirs.named_parameters() if not n.endswith(("wte.weight", "wpe.weight")))
    return diff, params


def load(impl: str, directory: str, device: str, dtype: torch.dtype):
    if impl == "ours":
        from imagegpt import ImageGPTForCausalImageModeling

        return ImageGPTForCausalImageModeling.from_pretrained(directory, torch_dtype=dtype, device=device)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers.ImageGPTForCausalImageModeling.from_pretrained(directory, dtype=dtype).to(device).eval()


def child(args) -> None:
    """Build one model, warm up, then time forwards whenever the parent writes a line; report JSON lines."""
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model = load(args.child, args.weights, args.device, dtype)
    seq = model.config.n_positions
    torch.manual_seed(args.batch)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, seq), device=args.device)
    with torch.inference_mode():
        for _ in range(args.warmup):
            model(ids)
        sync(args.device)
        reset_peak_memory(args.device)
        print("ready", flush=True)
        for _ in sys.stdin:
            sync(args.device)
            t = time.perf_counter()
            model(ids)
            sync(args.device)
            print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)
    print(json.dumps({"peak_mib": peak_memory(args.device)}), flush=True)


def reset_peak_memory(device: str) -> None:
    """Start counting peak memory here: VmHWM (peak RSS) on CPU, the allocator's peak on CUDA."""
    if device == "cpu":
        Path("/proc/self/clear_refs").write_text("5")
    else:
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> float:
    """MiB: peak RSS since :func:`reset_peak_memory` on CPU, peak allocated GPU memory on CUDA."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024


def spawn(impl: str, batch: int, args, weights: str) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", impl, "--weights", weights, "--batch", str(batch),
           "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads),
           "--warmup", str(args.warmup)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"{impl} child failed to start: {line!r}")
    return proc


def run_pair(batch: int, args, weights: str) -> dict[str, dict]:
    procs = {impl: spawn(impl, batch, args, weights) for impl in ("ours", "transformers")}
    times: dict[str, list[float]] = {impl: [] for impl in procs}
    for rep in range(args.reps):
        for impl in (("ours", "transformers") if rep % 2 == 0 else ("transformers", "ours")):
            procs[impl].stdin.write("go\n")
            procs[impl].stdin.flush()
            times[impl].append(json.loads(procs[impl].stdout.readline())["seconds"])
    out = {}
    for impl, proc in procs.items():
        proc.stdin.close()
        peak = json.loads(proc.stdout.readline())["peak_mib"]
        proc.wait()
        out[impl] = {"times": times[impl], "peak_mib": peak}
    return out


def add_run_args(p: argparse.ArgumentParser, results_name: str) -> None:
    """The arguments every ours-vs-transformers script shares: device, dtype, threads, the JSON path, and the
    hidden ones a script passes to its child processes."""
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / results_name)
    p.add_argument("--child", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)


def parse_run_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse; in the parent, refuse half precision on a CPU and set the thread count (children set their own)."""
    args = p.parse_args()
    if not args.child:
        if args.dtype != "float32" and args.device == "cpu":
            p.error("bfloat16/float16 are for CUDA; this CPU has no fast path for them")
        torch.set_num_threads(args.threads)
    return args


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=SHAPES, default="small")
    p.add_argument("--tiny", action="store_const", const="tiny", dest="shape", help="same as --shape tiny")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="one child pair per batch size")
    p.add_argument("--reps", type=int, default=5, help="timed forwards per implementation and batch")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards before the timed ones")
    add_run_args(p, "forward.json")
    args = parse_run_args(p)
    if args.child:
        return child(args)
    import transformers

    dtype = getattr(torch, args.dtype)
    cfg = SHAPES[args.shape]
    e, L, seq = cfg["n_embd"], cfg["n_layer"], cfg["n_positions"]
    peak_before = matmul_peak(args.device, dtype)
    print(f"device: {device_name(args.device)} | torch {torch.__version__} | transformers {transformers.__version__}")
    print(f"shape: {args.shape} ({L} layers x {e}, {cfg['n_head']} heads, seq {seq}) | dtype {args.dtype} | "
          f"reps {args.reps} (after {args.warmup} warm-up) | model.eval() + torch.inference_mode() | "
          "call model(input_ids) (default use_cache=True)")  # fmt: skip
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as weights:
        diff, params = make_weights(args.shape, Path(weights))
        print(f"weights: random (seed 0), shared; max |logit diff| ours vs transformers = {diff:.2e} "
              "(fp32 CPU, <= 1e-4)")
        if not diff <= 1e-4:
            sys.exit(f"logits differ by {diff:.2e} > 1e-4: not benchmarking different models")
        for batch in args.batches:
            results[batch] = run_pair(batch, args, weights)
    peak = max(peak_before, matmul_peak(args.device, dtype))
    print(f"matmul peak ({args.dtype} 2048^3): {peak_before:.0f} GFLOP/s before, {peak:.0f} best of before/after")
    print(f"FLOPs = 2 * non-embedding params ({params:,}) * tokens + 2 * 2 * n_layer * seq^2 * n_embd * batch\n")
    for batch, result in results.items():
        flops = 2 * params * seq * batch + 4 * L * seq * seq * e * batch
        for impl in ("transformers", "ours"):
            t = result[impl]["times"]
            med = statistics.median(t)
            rows.append(dict(impl=impl, shape=args.shape, batch=batch, seq=seq, dtype=args.dtype,
                             device=args.device, min_s=min(t), median_s=med, max_s=max(t),
                             tokens_per_s=batch * seq / med, peak_mib=result[impl]["peak_mib"],
                             bound_fraction=flops / (peak * 1e9) / med))  # fmt: skip
        rows[-1]["ours_over_transformers"] = rows[-1]["median_s"] / rows[-2]["median_s"]
        rows[-1]["ours_over_transformers_min"] = rows[-1]["min_s"] / rows[-2]["min_s"]
    mem = "peak RSS MiB" if args.device == "cpu" else "peak GPU MiB"
    print(f"| impl | batch x seq | s / forward (min / median / max) | tokens/s | {mem} | of FLOP bound "
          "| ours/theirs (median; min) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = (f"**{r['ours_over_transformers']:.2f}x**; {r['ours_over_transformers_min']:.2f}x"
                 if "ours_over_transformers" in r else "")  # fmt: skip
        print(f"| {r['impl']} | {r['batch']}x{r['seq']} | {r['min_s']:.3f} / **{r['median_s']:.3f}** / "
              f"{r['max_s']:.3f} | {r['tokens_per_s']:,.0f} | {r['peak_mib']:,.0f} | "
              f"{100 * r['bound_fraction']:.0f}% | {ratio} |")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(device=device_name(args.device), torch=torch.__version__, transformers=transformers.__version__,
                matmul_peak_gflops=peak, non_embedding_params=params, logit_diff=diff,
                threads=args.threads, reps=args.reps, warmup=args.warmup, call="model(input_ids)")  # fmt: skip
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
