"""The README's main job (`imagegpt complete`) timed against transformers' generate on the same weights.

Workload (default): the packaged model (imagegpt.pretrained.DEFAULT_MODEL or --model), its example images, the top
half of each image kept, 4 samples each: the prompts of `imagegpt complete` exactly (batch = images x samples,
new tokens = the rest of the image). Both implementations sample (temperature 1, no top-k/top-p, as the CLI's
defaults); transformers gets `attention_mask=ones` and nothing else (no pad_token_id).

Every measurement is a fresh child process (import, load, one warm-up call, then the timed calls), ours and
transformers interleaved, in two conditions: quiet (whatever else runs on the machine: say so when you report)
and contended (this script starts one busy-loop process per core and stops it afterwards). Reported per run:
prefill seconds (max_new_tokens=1), generation seconds, ms per decode step ((generation - prefill) / (new - 1)),
the fractions of the compute floor (FLOPs per step / best 2048^3 matmul rate measured here, quiet) and of the
memory floor (bytes a step must read: weights and KV cache / one thread's streaming read rate), and the whole
`imagegpt complete` command's wall time (ours; start-up included).

  python benchmarks/bench_main_job.py                        # main job, quiet + contended, 2 reps (~3 minutes)
  python benchmarks/bench_main_job.py --model emoji --reps 3
  python benchmarks/bench_main_job.py --extra                # + mini (8x256) batch 16 whole 32x32 images and
                                                             #   imagegpt-small (random weights) batch 1 and 8
  python benchmarks/bench_main_job.py --variants ours ours-2threads ours-unshared transformers   # what each idea buys
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
HERE = Path(__file__).parent
VARIANTS = {  # name -> generate() keyword arguments of ours (None: transformers)
    "ours": {},
    "ours-2threads": {"num_threads": 2},  # the thread choice off: torch's default of one thread per core
    "ours-unshared": {"share_prompts": False},  # every row keeps its own copy of the prompt's cache
    "transformers": None,
}


# ---------------------------------------------------------------- child: one process, one implementation
def child(spec: dict) -> None:
    import torch

    t0 = time.perf_counter()
    impl = spec["impl"]
    if VARIANTS[impl] is None:
        import transformers

        transformers.logging.set_verbosity_error()
        model = transformers.ImageGPTForCausalImageModeling.from_pretrained(spec["weights"]).eval()
    else:
        from imagegpt import ImageGPTForCausalImageModeling

        model = ImageGPTForCausalImageModeling.from_pretrained(spec["weights"]).eval()
    ids = torch.tensor(spec["prompts"], dtype=torch.long)
    load_s = time.perf_counter() - t0

    def run(new: int, seed: int = 0) -> float:
        kwargs = dict(do_sample=True, max_new_tokens=new, top_k=0)
        if VARIANTS[impl] is None:
            kwargs["attention_mask"] = torch.ones_like(ids)
            torch.manual_seed(seed)
        else:
            kwargs.update(VARIANTS[impl], seed=seed)
        t = time.perf_counter()
        out = model.generate(ids, **kwargs)
        seconds = time.perf_counter() - t
        assert out.shape == (ids.shape[0], ids.shape[1] + new), out.shape
        return seconds

    with torch.inference_mode():
        run(2)  # warm-up: lazy initialisations
        prefill = min(run(1) for _ in range(2))
        total = run(spec["new"])
    print(json.dumps(dict(load_s=load_s, prefill_s=prefill, generate_s=total, threads=torch.get_num_threads())))


# ---------------------------------------------------------------- parent
def busy_loop() -> None:  # pragma: no cover - runs in a helper process
    while True:
        pass


class Contention:
    """One busy-loop process per core while active (other programs on a laptop, at their worst)."""

    def __enter__(self):
        ctx = multiprocessing.get_context("spawn")
        self.procs = [ctx.Process(target=busy_loop, daemon=True) for _ in range(os.cpu_count() or 1)]
        for p in self.procs:
            p.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join()


def run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child"], input=json.dumps(spec), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{spec['impl']} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_cli(model: str, rows: int, samples: int) -> float:
    """Wall seconds of the whole `imagegpt complete` command (a fresh process: imports, loading, PNG)."""
    exe = Path(sys.executable).with_name("imagegpt")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        subprocess.run([str(exe), "complete", "--model", model, "--rows", str(rows), "--samples", str(samples),
                        "--quiet", "--out", f"{tmp}/c.png"], check=True, capture_output=True)  # fmt: skip
        return time.perf_counter() - t


def main_job(model: str, rows: int | None, samples: int) -> dict:
    """The prompts of `imagegpt complete --model MODEL` (its examples, top `rows` rows, `samples` each)."""
    from imagegpt.pretrained import packaged_examples, packaged_model_dir
    from imagegpt.processor import ImageGPTImageProcessor

    directory = packaged_model_dir(model) or Path(model)
    proc = ImageGPTImageProcessor.from_pretrained(str(directory))
    h, w = proc.size["height"], proc.size["width"]
    rows = h // 2 if rows is None else rows
    ids = proc([str(p) for p in packaged_examples(model)], return_tensors="pt", add_start_token=True)["input_ids"]
    prompts = ids[:, : 1 + rows * w].repeat_interleave(samples, dim=0)
    return dict(name=f"{model} main job", weights=str(directory), prompts=prompts.tolist(), new=(h - rows) * w,
                rows=rows, height=h, width=w)  # fmt: skip


def random_case(shape: str, batch: int, directory: Path, prompt: int, new: int) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from bench_forward import SHAPES, make_weights

    if not (directory / "config.json").exists():
        diff, _ = make_weights(shape, directory)
        if not diff <= 1e-4:
            sys.exit(f"logits differ by {diff:.2e}: not benchmarking different models")
    c = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, c["vocab_size"] - 1, (batch, prompt), generator=g)
    ids[:, 0] = c["vocab_size"] - 1
    return dict(name=f"{shape} ({c['n_layer']}x{c['n_embd']}) random weights, batch {batch}", weights=str(directory),
                prompts=ids.tolist(), new=new)  # fmt: skip


def linear_params(config: dict) -> int:
    """Weights of the linear layers: per block 12 e^2 (qkv 3, out 1, MLP 8), plus the LM head's e (vocab - 1)."""
    e = config["n_embd"]
    return config["n_layer"] * 12 * e * e + e * (config["vocab_size"] - 1)


def step_flops(config: dict, batch: int, position: float) -> float:
    """FLOPs of one decode step at ``position``: every linear weight once per row, plus QK and AV over the cache."""
    return 2 * batch * linear_params(config) + 4 * config["n_layer"] * batch * position * config["n_embd"]


def step_bytes(config: dict, batch: int, groups: int, prompt: int, new: int) -> float:
    """Bytes one average decode step must read (float32): every linear weight once, plus the keys and values of
    the cache: the prompt's once per group of rows sharing it (ours), the generated part once per row."""
    return 4 * (linear_params(config) + 2 * config["n_layer"] * config["n_embd"] * (groups * prompt + batch * new / 2))


def stream_rate() -> float:
    """Bytes per second one thread reads (the sum of a 256 MB float32 tensor, best of 5): the memory floor's rate."""
    import torch

    x, threads, best = torch.ones(64 * 2**20), torch.get_num_threads(), float("inf")
    torch.set_num_threads(1)
    try:
        for _ in range(5):
            t = time.perf_counter()
            x.sum()
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return x.numel() * 4 / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="packaged name or directory (default: the package's DEFAULT_MODEL)")
    p.add_argument("--rows", type=int, help="rows kept (default: half the image height)")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--reps", type=int, default=2, help="fresh child processes per implementation and condition")
    p.add_argument("--conditions", nargs="+", default=["quiet", "contended"], choices=["quiet", "contended"])
    p.add_argument("--variants", nargs="+", default=["ours", "transformers"], choices=list(VARIANTS))
    p.add_argument("--extra", action="store_true", help="also mini batch 16 (whole images) and small batch 1, 8")
    p.add_argument("--no-main", action="store_true", help="skip the main job (with --extra)")
    p.add_argument("--json", type=Path, default=HERE / "results" / "main_job.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # the spec comes on stdin
    args = p.parse_args()
    if args.child:
        return child(json.loads(sys.stdin.read()))

    import torch
    import transformers

    sys.path.insert(0, str(HERE))
    from bench_forward import cpu_name, matmul_peak

    from imagegpt.pretrained import DEFAULT_MODEL

    model = args.model or DEFAULT_MODEL
    peak = matmul_peak("cpu", torch.float32) * 1e9
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} (default threads "
          f"{torch.get_num_threads()}), transformers {transformers.__version__}, float32")  # fmt: skip
    rate = stream_rate()
    print(f"matmul peak (2048^3, quiet condition): {peak / 1e9:.0f} GFLOP/s; one-thread read rate "
          f"(sum of 256 MB): {rate / 1e9:.1f} GB/s")  # fmt: skip
    cases = [] if args.no_main else [main_job(model, args.rows, args.samples)]
    tmp = Path(tempfile.mkdtemp(prefix="bench_main_job_"))
    if args.extra:
        cases.append(random_case("mini", 16, tmp / "mini", 1, 1024))
        for batch in (1, 8):  # a window of 64 steps from the middle of the image
            cases.append(random_case("small", batch, tmp / "small", 449, 64))
    rows = []
    for case in cases:
        config = json.loads((Path(case["weights"]) / "config.json").read_text())
        batch, t0 = len(case["prompts"]), len(case["prompts"][0])
        flops = step_flops(config, batch, t0 + case["new"] / 2)
        groups = len({tuple(p) for p in case["prompts"]})
        nbytes = step_bytes(config, batch, groups, t0, case["new"])
        print(f"\n{case['name']}: batch {batch}, prompt {t0} tokens, {case['new']} new tokens, "
              f"{config['n_layer']}x{config['n_embd']}, vocab {config['vocab_size']}, float32, cpu; an average step: "
              f"{flops / 1e6:.0f} MFLOP (compute floor {1e3 * flops / peak:.2f} ms), reads {nbytes / 1e6:.0f} MB "
              f"(memory floor {1e3 * nbytes / rate:.2f} ms)", flush=True)
        for condition in args.conditions:
            results: dict[str, list[dict]] = {v: [] for v in args.variants}
            cli: list[float] = []
            with Contention() if condition == "contended" else _null():
                for rep in range(args.reps):
                    for impl in args.variants if rep % 2 == 0 else args.variants[::-1]:
                        spec = dict(impl=impl, weights=case["weights"], prompts=case["prompts"], new=case["new"])
                        r = run_child(spec)
                        results[impl].append(r)
                        print(f"  {condition} rep {rep} {impl}: prefill {r['prefill_s']:.2f} s, generate "
                              f"{r['generate_s']:.2f} s", flush=True)  # fmt: skip
                    if case is cases[0] and not args.no_main:
                        cli.append(time_cli(model, case["rows"], args.samples))
                        print(f"  {condition} rep {rep} imagegpt complete: {cli[-1]:.2f} s wall", flush=True)
            for impl, rs in results.items():
                gen = min(r["generate_s"] for r in rs)
                prefill = min(r["prefill_s"] for r in rs)
                step = (gen - prefill) / max(case["new"] - 1, 1)
                rows.append(dict(case=case["name"], condition=condition, impl=impl, batch=batch, new=case["new"],
                                 generate_s=gen, generate_median_s=statistics.median(r["generate_s"] for r in rs),
                                 prefill_s=prefill, ms_per_step=1e3 * step,
                                 floor_fraction=flops / peak / step if step > 0 else float("nan"),
                                 memory_fraction=nbytes / rate / step if step > 0 else float("nan"),
                                 load_s=min(r["load_s"] for r in rs),
                                 cli_wall_s=min(cli) if cli and impl == "ours" else None))  # fmt: skip
    print("\n| case | condition | impl | batch | new tokens | generate s (best / median) | prefill s | ms/step "
          "| of compute floor | of memory floor | vs transformers | `imagegpt complete` wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = next((x for x in rows if x["case"] == r["case"] and x["condition"] == r["condition"]
                    and x["impl"] == "transformers"), None)  # fmt: skip
        ratio = f"**{r['generate_s'] / ref['generate_s']:.2f}x** time" if ref and r is not ref else ""
        quiet = next((x for x in rows if x["case"] == r["case"] and x["impl"] == r["impl"]
                      and x["condition"] == "quiet"), None)  # fmt: skip
        if r["condition"] == "contended" and quiet:
            ratio += f" ({r['generate_s'] / quiet['generate_s']:.1f}x its quiet time)"
        cli = f"{r['cli_wall_s']:.2f}" if r["cli_wall_s"] else ""
        print(f"| {r['case']} | {r['condition']} | {r['impl']} | {r['batch']} | {r['new']} | {r['generate_s']:.2f} / "
              f"{r['generate_median_s']:.2f} | {r['prefill_s']:.2f} | {r['ms_per_step']:.1f} | "
              f"{100 * r['floor_fraction']:.0f}% | {100 * r['memory_fraction']:.0f}% | {ratio} | {cli} |")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(cpu=cpu_name(), cores=os.cpu_count(), torch=torch.__version__, transformers=transformers.__version__,
                matmul_gflops=peak / 1e9, read_gbytes_per_s=rate / 1e9, reps=args.reps, model=model)  # fmt: skip
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.json}")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


if __name__ == "__main__":
    main()
