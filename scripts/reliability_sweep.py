"""Reliability sweep of the training CLI (issue 13), every case a real ``python -m imagegpt`` process:

1. bad inputs (the catalogue of tests/test_bad_inputs.py, real decompression bombs, signals, a locked run dir):
   how many end in one clear error line, a traceback, or silence (exit 0);
2. ``kill -9`` at random moments of a tiny training run, each followed by a resume: is the latest checkpoint
   readable after every kill, and is the finished run bit-identical to an uninterrupted one;
3. two runs started at once into one directory (fresh, and one resuming): one must refuse with the other's PID;
4. a real full disk (a small tmpfs; needs root, skipped otherwise): one line, the previous checkpoint intact, and
   after more space a resume bit-identical to an uninterrupted run;
5. divergence (lr = 30): no checkpoint holds a non-finite tensor.

    .venv/bin/python scripts/reliability_sweep.py --kills 5 --concurrent 3
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONWARNINGS": "ignore"}
TINY = ["--quiet", "--set", "batch_size=8", "--set", "model.n_embd=32", "--set", "model.n_head=2", "--set",
        "model.n_layer=2", "--set", "device=cpu", "--set", "log_interval=1", "--set", "eval_interval=1000000"]  # fmt: skip


def cli(*argv: str, wait: bool = True, **kw):
    cmd = [sys.executable, "-m", "imagegpt", *argv]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, **kw)
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, **kw)


def verdict(rc: int, err: str, pattern: str) -> str:
    if "Traceback" in err:
        return "traceback"
    if rc == 0:
        return "silent"
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING:")]
    ok = len(lines) == 1 and " error: " in lines[0] and re.search(pattern, lines[0])
    return "clear" if ok else "unclear"


def bad_inputs(base: Path, tmp: Path) -> dict[str, int]:
    from test_bad_inputs import CASES

    counts = {"clear": 0, "traceback": 0, "silent": 0, "unclear": 0}

    def record(name: str, rc: int, err: str, pattern: str) -> None:
        v = verdict(rc, err, pattern)
        counts[v] += 1
        if v != "clear":
            print(f"  {v}: {name}: rc {rc}: {err.strip()[-300:]}")

    for i, (name, (make, pattern)) in enumerate(CASES.items()):
        work = tmp / f"case{i}"
        work.mkdir()
        argv = make(base, work)
        r = cli(*argv)
        record(name, r.returncode, r.stderr, pattern)
    for side, pattern in ((10_000, "too large to read safely"), (14_000, "too large to read safely")):
        bomb = tmp / f"bomb{side}.png"  # 100 M pixels (Pillow warns) and 196 M pixels (Pillow refuses)
        Image.new("1", (side, side)).save(bomb)
        for command in ("score", "complete"):
            extra = ["--quiet", "--samples", "1", "--out", str(tmp / "c.png")] if command == "complete" else []
            r = cli(command, str(bomb), "--model", str(base / "model"), *extra)
            record(f"{command} bomb {side}", r.returncode, r.stderr, pattern)
    for signum in (signal.SIGINT, signal.SIGTERM):  # an interrupted run: 128 + signal, after a checkpoint
        out = tmp / f"sig{signum}"
        p = cli("train", "--data", str(base / "tokens"), "--out", str(out), *TINY, "--set", "max_steps=1000000",
                wait=False)  # fmt: skip
        while not (out / "log.jsonl").is_file() or not (out / "log.jsonl").read_text().strip():
            time.sleep(0.05)
        p.send_signal(signum)
        _, err = p.communicate()
        good = p.returncode == 128 + signum and "Traceback" not in err and (out / "checkpoints" / "latest").is_file()
        counts["clear" if good else "unclear"] += 1
        print(f"  signal {signal.Signals(signum).name}: exit {p.returncode}, checkpoint saved: "
              f"{(out / 'checkpoints' / 'latest').is_file()}")  # fmt: skip
    return counts


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


def losses(run: Path) -> list[tuple[int, float]]:
    from imagegpt.run_dir import read_log

    return [(r["step"], r["loss"]) for r in read_log(run / "log.jsonl") if "loss" in r]


def identical(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa) and losses(a) == losses(b)


def checkpoint_ok(run: Path) -> bool:
    from imagegpt import ImageGPTForCausalImageModeling
    from imagegpt.train_checkpoint import latest_checkpoint, read_state

    try:
        path = latest_checkpoint(run)
        if path is None:
            return True  # killed before the first save: nothing to corrupt
        ImageGPTForCausalImageModeling.from_pretrained(path)
        read_state(path)
        return True
    except Exception as e:  # noqa: BLE001 - any failure to load is a corrupted checkpoint
        print(f"  corrupted: {e}")
        return False


def kills(base: Path, tmp: Path, n: int, steps: int, seed: int) -> dict[str, int]:
    settings = [*TINY, "--set", f"max_steps={steps}", "--set", "save_interval=7", "--set", "keep_last=2"]
    straight = tmp / "straight"
    assert cli("train", "--data", str(base / "tokens"), "--out", str(straight), *settings).returncode == 0
    run, rng, corrupted, done = tmp / "killed", random.Random(seed), 0, 0
    for i in range(n):
        resume = ["--resume"] if (run / "train_config.json").is_file() else [*settings]
        p = cli("train", "--data", str(base / "tokens"), "--out", str(run), *resume, wait=False)
        while p.poll() is None and not ((run / "log.jsonl").is_file() and (run / "log.jsonl").stat().st_size):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.05, 1.0))
        p.kill()  # SIGKILL
        p.communicate()
        done += p.returncode == 0
        corrupted += not checkpoint_ok(run)
    r = cli("train", "--data", str(base / "tokens"), "--out", str(run), "--resume")
    assert r.returncode == 0, r.stderr
    exact = identical(straight, run)
    print(f"  {n} kills ({done} runs had finished before their kill), corrupted checkpoints {corrupted}, final "
          f"weights and every step's loss identical to the uninterrupted run: {exact}")  # fmt: skip
    return {"kills": n, "corrupted": corrupted, "exact": int(exact)}


def concurrent(base: Path, tmp: Path, n: int) -> dict[str, int]:
    refused_with_pid = 0
    for i in range(n):
        out = tmp / f"both{i}"
        if i % 2:  # the second kind: a run resuming while another resumes the same directory
            assert cli("train", "--data", str(base / "tokens"), "--out", str(out), *TINY, "--set",
                       "max_steps=2").returncode == 0  # fmt: skip
            argv = ["train", "--out", str(out), "--resume", "--set", "max_steps=400"]
        else:
            argv = ["train", "--data", str(base / "tokens"), "--out", str(out), *TINY, "--set", "max_steps=400"]
        a, b = cli(*argv[:-1], "max_steps=1000000", wait=False), cli(*argv[:-1], "max_steps=1000000", wait=False)
        while a.poll() is None and b.poll() is None:
            time.sleep(0.05)
        loser, winner = (a, b) if a.poll() is not None else (b, a)
        _, lost = loser.communicate()
        winner.send_signal(signal.SIGINT)  # the other one trains on: stop it (it saves and exits 130)
        _, won = winner.communicate()
        ok = (loser.returncode, winner.returncode) == (2, 130) and f"PID {winner.pid}" in lost and (
            "Traceback" not in lost + won)
        refused_with_pid += ok
        print(f"  concurrent pair {i}: first exit {loser.returncode} ({lost.strip()[-160:]}), the other "
              f"{winner.returncode}; refusal names the holder's PID: {ok}")
    return {"pairs": n, "refused_with_pid": refused_with_pid}


def disk_full(base: Path, tmp: Path) -> dict[str, int] | None:
    mount = tmp / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=900k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:  # fmt: skip
        print("  skipped (needs root to mount a small tmpfs)")
        return None
    try:
        settings = [*TINY, "--set", "max_steps=60", "--set", "save_interval=5", "--set", "keep_last=0"]
        straight = tmp / "full_straight"
        assert cli("train", "--data", str(base / "tokens"), "--out", str(straight), *settings).returncode == 0
        run = mount / "run"
        r = cli("train", "--data", str(base / "tokens"), "--out", str(run), *settings)
        line = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        clear = r.returncode == 2 and "disk is full" in line and "Traceback" not in r.stderr
        intact = checkpoint_ok(run)
        print(f"  full disk: exit {r.returncode}: {line[:220]}")
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        r = cli("train", "--out", str(run), "--resume")
        exact = r.returncode == 0 and identical(straight, run)
        print(f"  after freeing space: resume exit {r.returncode}, identical to the uninterrupted run: {exact}")
        return {"clear": int(clear), "previous_intact": int(intact), "exact_resume": int(exact)}
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def divergence(base: Path, tmp: Path) -> dict[str, int]:
    out = tmp / "diverge"
    r = cli("train", "--data", str(base / "tokens"), "--out", str(out), *TINY, "--set", "lr=30", "--set",
            "warmup_steps=0", "--set", "min_lr=0", "--set", "save_interval=1", "--set", "keep_last=0", "--set",
            "max_steps=60")  # fmt: skip
    saved = sorted((out / "checkpoints").glob("step-*"))
    bad = 0
    for path in saved:
        tensors = list(load_file(path / "model.safetensors").values())
        state = torch.load(path / "trainer_state.pt", weights_only=True)["optimizer"]["state"]
        tensors += [v for s in state.values() for v in s.values() if torch.is_tensor(v)]
        bad += not all(bool(torch.isfinite(t).all()) for t in tensors)
    print(f"  lr=30: exit {r.returncode}, {len(saved)} checkpoints, {bad} with a non-finite tensor; "
          f"{r.stderr.strip().splitlines()[-1][:200] if r.stderr.strip() else ''}")  # fmt: skip
    return {"exit": r.returncode, "checkpoints": len(saved), "non_finite_checkpoints": bad}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--steps", type=int, default=200, help="steps of the killed run")
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from test_bad_inputs import make_base

    tmp = Path(tempfile.mkdtemp(prefix="imagegpt-sweep-"))
    try:
        start = time.time()
        base = make_base(tmp / "base")
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, workdir {tmp}")
        print("bad inputs:")
        print(" ", inputs := bad_inputs(base, tmp))
        print("kill -9 during training:")
        print(" ", k := kills(base, tmp, args.kills, args.steps, args.seed))
        print("concurrent runs:")
        print(" ", c := concurrent(base, tmp, args.concurrent))
        print("disk full:")
        print(" ", d := disk_full(base, tmp))
        print("divergence:")
        print(" ", n := divergence(base, tmp))
        total = sum(inputs.values())
        print(f"SUMMARY bad inputs {total}: clear {inputs['clear']}, tracebacks {inputs['traceback']}, silent "
              f"{inputs['silent']}, unclear {inputs['unclear']} | kills {k['kills']}: corrupted {k['corrupted']}, "
              f"exact resume {bool(k['exact'])} | concurrent pairs {c['pairs']}: refused with PID "
              f"{c['refused_with_pid']} | disk full {d} | NaN: {n['non_finite_checkpoints']} non-finite of "
              f"{n['checkpoints']} checkpoints | {time.time() - start:.0f} s")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
