"""Tables and a plot of docs/results.md's MNIST section, from the runs of scripts/mnist_experiment.sh: reads
OUT/train/log.jsonl, OUT/probe*/probe.json and OUT/finetune*/{finetune,history}.json, prints markdown tables
and draws every fine-tune's validation accuracy against epochs (Pillow only) into --images.

    .venv/bin/python scripts/mnist_report.py --out runs/mnist --images docs/images
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imagegpt.run_dir import read_log
from imagegpt.viz import plot_loss_curve


def pretraining(out: Path) -> dict[int, float]:
    """Print the validation loss every eval and the wall time; return {step: val_loss}."""
    log = read_log(out / "train" / "log.jsonl")
    val = {r["step"]: r["val_loss"] for r in log if "val_loss" in r}
    seconds = max(r.get("elapsed_s", 0.0) for r in log)
    print(f"pretraining: {max(val)} steps in {seconds:.1f} s ({seconds / 60:.1f} min); validation loss: "
          + ", ".join(f"{v:.4f} ({s})" for s, v in sorted(val.items())))  # fmt: skip
    return val


def probes(out: Path, val: dict[int, float]) -> None:
    """One row per probed checkpoint: test accuracy of every layer and of the concatenation."""
    print("\n| checkpoint | val loss | test acc per layer, 0 to the last | concatenated | raw pixels |")
    print("|---|---:|---|---:|---:|")

    def fmt(r: dict | None) -> str:
        return f"{r['test_acc']:.4f} (C={r['C']:g})" if r else "-"

    # probe/ is the final model (the log's last step); probe-stepS/ the checkpoint of step S
    steps = {p: int(p.parent.name[10:]) if p.parent.name.startswith("probe-step") else max(val)
             for p in out.glob("probe*/probe.json")}  # fmt: skip
    for path, step in sorted(steps.items(), key=lambda item: item[1]):
        rows = json.loads(path.read_text())["rows"]
        layered = sorted((r for r in rows if isinstance(r["layer"], int)), key=lambda r: r["layer"])
        other = {str(r["layer"]): r for r in rows if not isinstance(r["layer"], int)}
        concat = next((r for k, r in other.items() if "+" in k), None)
        accs = ", ".join(f"{r['test_acc']:.4f}" for r in layered)
        print(f"| step {step} | {val.get(step, float('nan')):.4f} | {accs} | {fmt(concat)} | "
              f"{fmt(other.get('pixels'))} |")


def epochs_per_step(res: dict) -> float:
    """A fine-tune's epochs per step, from its finetune.json: its own batch size over its training images."""
    return res["config"]["batch_size"] / res["n_train"]


def plot_finetune_epochs(runs: list[tuple[str, dict, list[dict]]], path: Path, xlabel: str) -> None:
    """Validation accuracy against epochs, one line per (name, finetune.json, history.json) run, each labeled
    with its length; the name tells variants of the same length apart (finetune-3600/, finetune-3600-crop/)."""
    records: list[dict] = []
    curves = []
    for name, res, hist in runs:
        per_epoch = epochs_per_step(res)
        records += [{"step": h["step"] * per_epoch, name: h["val_acc"]} for h in hist]
        curves.append((name, f"{name}: {res['steps'] * per_epoch:.2f} epochs"))
    plot_loss_curve(sorted(records, key=lambda r: r["step"]), path, curves=curves,
                    ylabel="validation accuracy (1,000 images)", xlabel=xlabel)


def finetunes(out: Path, images: Path, image_name: str = "mnist-finetune-epochs.png") -> None:
    """A table of the fine-tunes (finetune/, finetune-STEPS/) and their validation accuracy against epochs."""
    runs = sorted(((p, json.loads(p.read_text())) for p in out.glob("finetune*/finetune.json")),
                  key=lambda run: run[1]["steps"])  # fmt: skip
    if not runs:
        return
    print("\n| fine-tune | steps (epochs) | minutes | best step: val acc | test acc |")
    print("|---|---:|---:|---:|---:|")
    for path, res in runs:
        print(f"| {path.parent.name} | {res['steps']} ({res['steps'] * epochs_per_step(res):.2f}) | "
              f"{res['seconds'] / 60:.1f} | {res['best_step']}: {res['best_val_acc']:.3f} | {res['test_acc']:.4f} |")
    named = [(p.parent.name, res, json.loads((p.parent / "history.json").read_text())) for p, res in runs]
    plot_finetune_epochs(named, images / image_name, "epochs of fine-tuning (59,000 images)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/mnist"))
    p.add_argument("--images", type=Path, default=Path("docs/images"))
    p.add_argument("--finetune-image", default="mnist-finetune-epochs.png",
                   help="file name (in --images) of the fine-tunes' plot")
    args = p.parse_args()
    val = pretraining(args.out)
    probes(args.out, val)
    finetunes(args.out, args.images, args.finetune_image)


if __name__ == "__main__":
    main()
