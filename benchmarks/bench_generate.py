"""Sampling: imagegpt's sampler vs transformers' generate(do_sample=True, top_k=40) on the same weights.

Per (shape, batch), ours and transformers each run in a fresh child process (peak RSS is its own), interleaved
one measurement at a time because this machine's speed drifts. Both are called the same way:
``model.generate(ids, do_sample=True, top_k=40, max_new_tokens=N)`` (transformers also gets an all-ones
attention_mask), under torch.inference_mode().

  ms/step at a position window: (t(prompt P, N+2 new) - t(prompt P, 2 new)) / N, which removes the prefill and
  per-call setup; early = prompt 1 (positions 2..N+1), late = prompt n_positions - N - 1 (the last N positions).
  images/s: whole images from the start token (1 + n_positions tokens) when --full applies to the shape;
  otherwise estimated as in shared/reference/cpu-baseline.md: prefill + the step cost interpolated linearly
  between the two windows and summed over all positions (marked "est").
  of bound: the memory-bandwidth bound over the measured time; the bound streams, per step, every weight of the
  matmuls (blocks + LM head, not the gathered embeddings) plus the K/V cache read at that position, at the read
  bandwidth measured here (best 1 GiB sum), summed over the positions of a whole image.

  python benchmarks/bench_generate.py                          # all three shapes, CPU (about 15 minutes)
  python benchmarks/bench_generate.py --shapes tiny --batches 1 16
  python benchmarks/bench_generate.py --device cuda --dtype bfloat16 --shapes small --batches 1 16 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_forward import (  # noqa: E402
    SHAPES,
    add_run_args,
    device_name,
    load,
    make_weights,
    parse_run_args,
    peak_memory,
    reset_peak_memory,
    sync,
)

IMPLS = ("ours", "transformers")
TOP_K = 40


def read_bandwidth(device: str, gib: float = 1.0, reps: int = 5) -> float:
    """Best GB/s of summing a ``gib`` GiB float32 tensor."""
    x = torch.ones(int(gib * 2**30) // 4, device=device)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        x.sum()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def child(args) -> None:
    """Load one model; for each request line {"prompt": P, "new": N} generate and report the seconds."""
    torch.set_num_threads(args.threads)
    model = load(args.child, args.weights, args.device, getattr(torch, args.dtype))
    cfg = model.config
    torch.manual_seed(args.batch)

    def run(prompt_len: int, new: int) -> float:
        ids = torch.randint(0, cfg.vocab_size - 1, (args.batch, prompt_len), device=args.device)
        ids[:, 0] = cfg.vocab_size - 1
        kwargs = dict(do_sample=True, top_k=TOP_K, max_new_tokens=new)
        if args.child == "transformers":
            kwargs.update(attention_mask=torch.ones_like(ids))  # no pad_token_id: the start token is no padding
        sync(args.device)
        t = time.perf_counter()
        out = model.generate(ids, **kwargs)
        sync(args.device)
        assert out.shape == (args.batch, prompt_len + new), out.shape
        return time.perf_counter() - t

    with torch.inference_mode():
        run(1, 8)  # warm-up
        run(cfg.n_positions - 8, 2)
        reset_peak_memory(args.device)
        print("ready", flush=True)
        for line in sys.stdin:
            req = json.loads(line)
            print(json.dumps({"seconds": run(req["prompt"], req["new"])}), flush=True)
    print(json.dumps({"peak_mib": peak_memory(args.device)}), flush=True)


def spawn(impl: str, batch: int, args, weights: str) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", impl, "--weights", weights, "--batch", str(batch),
           "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"{impl} child failed to start: {line!r}")
    return proc


def measure(procs: dict, prompt: int, new: int, reps: int) -> dict[str, float]:
    """Median seconds of generate(prompt, new) per implementation, interleaved."""
    times: dict[str, list[float]] = {impl: [] for impl in procs}
    for rep in range(reps):
        for impl in (IMPLS if rep % 2 == 0 else IMPLS[::-1]):
            procs[impl].stdin.write(json.dumps({"prompt": prompt, "new": new}) + "\n")
            procs[impl].stdin.flush()
            times[impl].append(json.loads(procs[impl].stdout.readline())["seconds"])
    return {impl: statistics.median(t) for impl, t in times.items()}


def run_pair(shape: str, batch: int, args, weights: str, full: bool) -> dict[str, dict]:
    n, w = SHAPES[shape]["n_positions"], args.window
    procs = {impl: spawn(impl, batch, args, weights) for impl in IMPLS}
    prefill1 = measure(procs, 1, 1, args.reps)
    base_early = measure(procs, 1, 2, args.reps)  # prefill + 1 step (and any per-call setup such as a CUDA graph)
    early = measure(procs, 1, w + 2, args.reps)
    base_late = measure(procs, n - w - 1, 2, args.reps)
    late = measure(procs, n - w - 1, w + 2, args.reps)
    whole = measure(procs, 1, n, args.reps) if full else None
    out = {}
    for impl, proc in procs.items():
        proc.stdin.close()
        peak = json.loads(proc.stdout.readline())["peak_mib"]
        proc.wait()
        step_early = (early[impl] - base_early[impl]) / w
        step_late = (late[impl] - base_late[impl]) / w
        if whole is not None:
            seconds, estimated = whole[impl], False
        else:  # linear in position between the window midpoints, summed over the n - 1 fed-back positions
            mid_e, mid_l = w / 2, n - w / 2
            slope = (step_late - step_early) / (mid_l - mid_e)
            seconds = prefill1[impl] + sum(step_early + slope * (p - mid_e) for p in range(1, n))
            estimated = True
        out[impl] = dict(step_early_ms=1e3 * step_early, step_late_ms=1e3 * step_late, image_s=seconds,
                         images_per_s=batch / seconds, estimated=estimated, peak_mib=peak)  # fmt: skip
    return out


def bound_seconds(shape: str, batch: int, bytes_per_el: int, bandwidth: float) -> tuple[float, int]:
    """Bandwidth-bound seconds for one batch of whole images, and the matmul weight bytes per step."""
    c = SHAPES[shape]
    e, L, n, v = c["n_embd"], c["n_layer"], c["n_positions"], c["vocab_size"]
    weights = (L * (12 * e * e + 9 * e) + e * (v - 1)) * bytes_per_el  # c_attn, c_proj, c_fc, mlp c_proj + LM head
    cache = sum(2 * L * batch * p * e * bytes_per_el for p in range(1, n + 1))
    return (n * weights + cache) / (bandwidth * 1e9), weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", choices=SHAPES, default=["small", "mini", "tiny"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--small-batches", type=int, nargs="+", default=[1, 8], help="batches for the small shape")
    p.add_argument("--full", nargs="*", default=["mini", "tiny"], help="shapes timed on whole images (others are "
                   "estimated from the windows)")  # fmt: skip
    p.add_argument("--window", type=int, default=32, help="decode steps per position window")
    p.add_argument("--reps", type=int, default=1)
    add_run_args(p, "generate.json")
    args = parse_run_args(p)
    if args.child:
        return child(args)
    import transformers

    bandwidth = read_bandwidth(args.device)
    el = torch.tensor([], dtype=getattr(torch, args.dtype)).element_size()
    print(f"device: {device_name(args.device)} | torch {torch.__version__} | transformers {transformers.__version__}")
    print(f"dtype {args.dtype} | generate(do_sample=True, top_k={TOP_K}) | window {args.window} steps | "
          f"reps {args.reps} | read bandwidth {bandwidth:.1f} GB/s")  # fmt: skip
    rows = []
    for shape in args.shapes:
        c = SHAPES[shape]
        with tempfile.TemporaryDirectory() as weights:
            diff, _ = make_weights(shape, Path(weights))
            if not diff <= 1e-4:
                sys.exit(f"logits differ by {diff:.2e} > 1e-4: not benchmarking different models")
            for batch in args.small_batches if shape == "small" else args.batches:
                result = run_pair(shape, batch, args, weights, shape in args.full)
                bound, wbytes = bound_seconds(shape, batch, el, bandwidth)
                for impl in IMPLS:
                    r = result[impl]
                    rows.append(dict(shape=shape, layers=c["n_layer"], width=c["n_embd"], pixels=c["n_positions"],
                                     batch=batch, impl=impl, dtype=args.dtype, device=args.device,
                                     bound_fraction=bound / r["image_s"], weight_mb=wbytes / 1e6, **r))  # fmt: skip
                rows[-2]["speedup"] = rows[-2]["images_per_s"] / rows[-1]["images_per_s"]
                print(f"  {shape} batch {batch}: ours {result['ours']['images_per_s']:.3f} images/s, "
                      f"transformers {result['transformers']['images_per_s']:.3f}", flush=True)  # fmt: skip
    mem = "peak RSS MiB" if args.device == "cpu" else "peak GPU MiB"
    print(f"\n| shape | batch | impl | images/s | ms/step early | ms/step late | {mem} | of bandwidth bound | "
          "ours / transformers |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        est = " (est)" if r["estimated"] else ""
        speed = f"**{r['speedup']:.2f}x**" if "speedup" in r else ""
        print(f"| {r['shape']} ({r['layers']}x{r['width']}, {r['pixels']} px) | {r['batch']} | {r['impl']} | "
              f"{r['images_per_s']:.3f}{est} | {r['step_early_ms']:.1f} | {r['step_late_ms']:.1f} | "
              f"{r['peak_mib']:,.0f} | {100 * r['bound_fraction']:.0f}% | {speed} |")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(device=device_name(args.device), torch=torch.__version__, transformers=transformers.__version__,
                bandwidth_gbs=bandwidth, threads=args.threads, reps=args.reps, window=args.window, top_k=TOP_K)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
