"""Weight layout: our Conv1D projections (weight (in, out), transformers' layout) against the same model with
``nn.Linear`` (weight (out, in), our layout until issue 14) swapped in, in one process, interleaved call by call
(this VM's speed drifts; separate processes minutes apart do not compare).

Cases (``--cases``): ``fwd:B`` a whole forward of B rows of n_positions tokens; ``packed:B``, ``unpacked:B`` and
``auto:B`` the decode steps of ``imagegpt.sampling.iter_tokens`` at batch B from the start token with
``cpu_packed=True``, ``False`` (the model's own forward) and ``None`` with packing off by size (the default path
of a model under 64 MiB: ``decode_weights`` runs the Conv1D layers on (out, in) copies when B > 1); ``job:S`` the
packaged model's main job (its examples' top halves, S samples each; default packing), 48 steps. Reported: the
median and the minimum over every timed call (forwards) or step (decoding), and Conv1D / nn.Linear.

  python benchmarks/bench_layout.py --model emoji --cases job:4 auto:8 unpacked:1 fwd:1
  python benchmarks/bench_layout.py --shape small --cases packed:1 packed:8 unpacked:8 auto:8 fwd:1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_forward import SHAPES, make_weights  # noqa: E402

from imagegpt import ImageGPTForCausalImageModeling, cpu_decode, sampling  # noqa: E402
from imagegpt.layers import Conv1D  # noqa: E402
from imagegpt.pretrained import packaged_model_dir  # noqa: E402


def with_linears(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Conv1D layers are nn.Linear holding the transposed weights."""
    other = copy.deepcopy(model)
    for parent in list(other.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                linear = nn.Linear(child.in_features, child.out_features)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
    return other.eval()


def interleaved(fn, models: dict, reps: int) -> dict[str, list[float]]:
    times = {name: [] for name in models}
    for rep in range(reps):
        for name in list(models)[:: 1 if rep % 2 == 0 else -1]:
            times[name] += fn(models[name])
    return times


def forward(ids: torch.Tensor):
    def fn(model) -> list[float]:
        with torch.inference_mode():
            start = time.perf_counter()
            model(ids)
            return [time.perf_counter() - start]

    return fn


def steps(ids: torch.Tensor, new: int, cpu_packed: bool | None, threads: int):
    def fn(model) -> list[float]:
        out, last = [], None
        for _ in sampling.iter_tokens(model, ids, new, generator=sampling.make_generator(0, "cpu"),
                                      cpu_packed=cpu_packed, num_threads=threads):  # fmt: skip
            now = time.perf_counter()
            if last is not None:  # the first token's time holds the prefill
                out.append(now - last)
            last = now
        return out

    return fn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a packaged model name or directory (default: random weights of --shape)")
    p.add_argument("--shape", choices=SHAPES, default="small")
    p.add_argument("--cases", nargs="+", default=["packed:1", "packed:8", "unpacked:8", "auto:8", "fwd:1"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--new", type=int, default=24, help="decode steps per timed call")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            directory, name = packaged_model_dir(args.model) or Path(args.model), args.model
        else:
            make_weights(args.shape, Path(tmp))
            directory, name = tmp, args.shape
        conv = ImageGPTForCausalImageModeling.from_pretrained(directory)
    models = {"nn.Linear": with_linears(conv), "Conv1D": conv}
    cfg = conv.config
    torch.manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size - 1, (1, cfg.n_positions))
    ids[:, 0] = cfg.vocab_size - 1
    print(f"{name}: torch {torch.__version__}, {args.threads} thread(s), {args.reps} interleaved reps")
    for case in args.cases:
        kind, value = case.split(":")
        n = int(value)
        if kind == "fwd":
            fn, label = forward(ids.repeat(n, 1)), f"forward b{n} x {cfg.n_positions}"
        elif kind == "job":
            from bench_main_job import main_job

            prompts = torch.tensor(main_job(args.model, None, n)["prompts"])
            fn, label = steps(prompts, 48, None, args.threads), f"main job {tuple(prompts.shape)} decode step"
        else:
            packed = {"packed": True, "unpacked": False, "auto": None}[kind]
            cpu_decode.PACKED_MIN_BYTES = float("inf") if kind == "auto" else 64 * 2**20
            fn, label = steps(ids[:, :1].repeat(n, 1), args.new, packed, args.threads), f"{kind} decode step b{n}"
        t = interleaved(fn, models, args.reps)
        (a, b), (a_min, b_min) = ([f(t[k]) * 1e3 for k in models] for f in (statistics.median, min))
        print(f"  {label}: ms median nn.Linear {a:.2f}, Conv1D {b:.2f} ({b / a:.3f}x) | min {a_min:.2f}, "
              f"{b_min:.2f} ({b_min / a_min:.3f}x)", flush=True)


if __name__ == "__main__":
    main()
