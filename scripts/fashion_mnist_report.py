"""Tables and plots of docs/results.md's Fashion-MNIST study, from the runs of scripts/fashion_mnist_study.sh and
scripts/fashion_mnist_long.sh: reads OUT/<variant>/train/{train_config.json,log.jsonl} (OUT/<variant>-<steps>/ for
a variant pretrained for another length, OUT/<variant>-<steps>-seed<N> for its repeats with other seeds) and the
probe.json files, prints markdown tables and writes the plots (Pillow only) into --images.

    .venv/bin/python scripts/fashion_mnist_report.py --out runs/fm --images docs/images
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imagegpt.run_dir import read_log
from imagegpt.viz import plot_loss_curve
from mnist_report import epochs_per_step, plot_finetune_epochs  # the sibling script: scripts/ is on sys.path

VARIANTS = ("base", "deep", "shallow", "lr4e-3", "lr1e-3", "bert", "grays4")


def _probe(path: Path) -> dict[str, dict]:
    return {str(r["layer"]): r for r in json.loads(path.read_text())["rows"]}


def _layered(rows: dict[str, dict]) -> list[dict]:
    return sorted((r for r in rows.values() if isinstance(r["layer"], int)), key=lambda r: r["layer"])


def _profile_cells(probe: Path, depth: dict[int, dict], key: str, pixels: float | None) -> str:
    """A probe's table cells "per-layer accuracies | best (layer) | last", layers 1 to the last; records each
    layer's accuracy under ``key`` in ``depth`` (x axis: the layer), for a plot with one line per key."""
    layered = _layered(_probe(probe))[1:]
    best = max(layered, key=lambda r: r["test_acc"])
    for r in layered:
        depth.setdefault(r["layer"], {"step": r["layer"], "pixels": pixels})[key] = r["test_acc"]
    accs = ", ".join(f"{r['test_acc']:.3f}" for r in layered)
    return f"{accs} | {best['test_acc']:.4f} ({best['layer']}) | {layered[-1]['test_acc']:.4f}"


def study(out: Path, images: Path, pixels: float | None) -> None:
    print("| variant | model | objective, lr | pretraining min | val loss | test acc per layer, 1 to the last | "
          "best layer | last |")  # fmt: skip
    print("|---|---|---|---:|---:|---|---:|---:|")
    depth_records: dict[int, dict] = {}
    curves = []
    for v in VARIANTS:
        run, probe = out / v / "train", out / v / "probe" / "probe.json"
        if not probe.is_file():
            continue
        cfg = json.loads((run / "train_config.json").read_text())
        log = read_log(run / "log.jsonl")
        val = [r for r in log if "val_loss" in r]
        minutes = max(r.get("elapsed_s", 0) for r in log) / 60
        rows = _layered(_probe(probe))
        accs = [r["test_acc"] for r in rows if r["layer"] > 0]
        best = max(rows[1:], key=lambda r: r["test_acc"])
        m = cfg["model"]
        print(f"| {v} | {m['n_layer']} x {m['n_embd']} | {cfg['objective']}, {cfg['lr']:g} | {minutes:.1f} | "
              f"{val[-1]['val_loss']:.4f} | {', '.join(f'{a:.3f}' for a in accs)} | "
              f"{best['test_acc']:.4f} ({best['layer']}) | {accs[-1]:.4f} |")  # fmt: skip
        for r in rows[1:]:
            depth_records.setdefault(r["layer"], {"step": r["layer"]})[v] = r["test_acc"]
        curves.append((v, f"{v} ({m['n_layer']} x {m['n_embd']})"))
    if curves and pixels is not None:
        for rec in depth_records.values():
            rec["pixels"] = pixels
        curves.append(("pixels", "raw pixels"))
    if curves:
        plot_loss_curve(sorted(depth_records.values(), key=lambda r: r["step"]), images / "fmnist-study-depth.png",
                        curves=curves, ylabel="linear probe test accuracy", xlabel="layer (last: ln_f)")  # fmt: skip


def long_run(out: Path, images: Path, pixels: float | None) -> None:
    run = out / "long" / "train"
    if not (run / "log.jsonl").is_file():
        return
    log = read_log(run / "log.jsonl")
    cfg = json.loads((run / "train_config.json").read_text())
    val = {r["step"]: r["val_loss"] for r in log if "val_loss" in r}
    plot_loss_curve([r for r in log if "loss" in r], images / "fmnist-long-loss.png")
    print("\n| checkpoint | images seen (epochs) | val loss | test acc per layer, 1 to the last | best layer | "
          "mean of layers |")  # fmt: skip
    print("|---|---:|---:|---|---:|---:|")
    records = []
    for probe in sorted((out / "long").glob("probe-step*/probe.json"), key=lambda p: int(p.parent.name[10:])):
        step = int(probe.parent.name[10:])
        rows = _probe(probe)
        layered = _layered(rows)[1:]
        best = max(layered, key=lambda r: r["test_acc"])
        mean = next((r for k, r in rows.items() if k.startswith("mean(")), None)
        seen = step * cfg["batch_size"]
        accs = ", ".join(f"{r['test_acc']:.3f}" for r in layered)
        print(f"| step {step} | {seen:,} ({seen / 57000:.2f}) | {val.get(step, float('nan')):.4f} | "
              f"{accs} | {best['test_acc']:.4f} ({best['layer']}) | "
              f"{mean['test_acc'] if mean else float('nan'):.4f} |")  # fmt: skip
        rec = {"step": step, "best": best["test_acc"], "last": layered[-1]["test_acc"]}
        if mean:
            rec["mean"] = mean["test_acc"]
        if pixels is not None:
            rec["pixels"] = pixels
        records.append(rec)
    if records:
        curves = [("best", "best single layer"), ("last", "last layer (ln_f)"), ("mean", "mean of layers"),
                  ("pixels", "raw pixels")]  # fmt: skip
        plot_loss_curve(records, images / "fmnist-probe-vs-compute.png", curves=curves,
                        ylabel="linear probe test accuracy", xlabel="pretraining steps (32 images each)")


def _length_runs(out: Path) -> list[Path]:
    """The runs of study variants pretrained for another length, OUT/<variant>-<steps>, sorted by name."""
    return sorted(d for v in VARIANTS for d in out.glob(f"{v}-*") if d.name.removeprefix(f"{v}-").isdigit())


def longer(out: Path, images: Path, pixels: float | None) -> None:
    """Study variants pretrained for another length (OUT/<variant>-<steps>, ``STEPS=`` of fashion_mnist_study.sh):
    a table of every probed checkpoint, and accuracy against depth with one line per checkpoint."""
    for d in (d for d in _length_runs(out) if (d / "probe" / "probe.json").is_file()):
        steps = int(d.name.rsplit("-", 1)[1])
        log = read_log(d / "train" / "log.jsonl")
        val = {r["step"]: r["val_loss"] for r in log if "val_loss" in r}
        minutes = max(r.get("elapsed_s", 0) for r in log) / 60
        print(f"\n{d.name}: {steps} steps, {minutes:.1f} min of pretraining")
        print("\n| checkpoint | val loss | test acc per layer, 1 to the last | best layer | last |")
        print("|---|---:|---|---:|---:|")
        probes = {int(p.parent.name[10:]): p for p in d.glob("probe-step*/probe.json")}
        probes[steps] = d / "probe" / "probe.json"  # the final model
        depth: dict[int, dict] = {}
        for step in sorted(probes):  # one line per checkpoint in the plot
            cells = _profile_cells(probes[step], depth, f"s{step}", pixels)
            print(f"| step {step} | {val.get(step, float('nan')):.4f} | {cells} |")
        curves = [(f"s{step}", f"step {step}") for step in sorted(probes)][-6:]  # at most 7 lines in a plot
        if pixels is not None:
            curves.append(("pixels", "raw pixels"))
        plot_loss_curve(sorted(depth.values(), key=lambda r: r["step"]), images / f"fmnist-{d.name}-depth.png",
                        curves=curves, ylabel="linear probe test accuracy", xlabel="layer (last: ln_f)")


def seeds(out: Path, images: Path, pixels: float | None) -> None:
    """Repeats of a longer run with other seeds (OUT/<variant>-<steps>-seed<N>, ``SEED=`` of fashion_mnist_study.sh)
    beside seed 0 (OUT/<variant>-<steps>): a row per seed and their per-layer mean, and accuracy against depth with
    one line per seed."""
    for d in _length_runs(out):
        runs = {0: d} if (d / "probe" / "probe.json").is_file() else {}
        for r in out.glob(f"{d.name}-seed*"):
            seed = r.name.removeprefix(f"{d.name}-seed")
            if seed.isdigit() and (r / "probe" / "probe.json").is_file():
                runs[int(seed)] = r
        if len(runs) < 2:
            continue
        print(f"\n{d.name}, {len(runs)} seeds (final models):")
        print("\n| seed | val loss | test acc per layer, 1 to the last | best layer | last |")
        print("|---|---:|---|---:|---:|")
        depth: dict[int, dict] = {}
        for seed in sorted(runs):  # one line per seed in the plot
            val = [r for r in read_log(runs[seed] / "train" / "log.jsonl") if "val_loss" in r]
            cells = _profile_cells(runs[seed] / "probe" / "probe.json", depth, f"seed{seed}", pixels)
            print(f"| {seed} | {val[-1]['val_loss']:.4f} | {cells} |")
        rows = sorted(depth.values(), key=lambda r: r["step"])
        for rec in rows:
            accs = [rec[f"seed{s}"] for s in runs if f"seed{s}" in rec]
            rec["mean"] = sum(accs) / len(accs)
        best = max(rows, key=lambda r: r["mean"])
        means = ", ".join(f"{r['mean']:.3f}" for r in rows)
        print(f"| mean | | {means} | {best['mean']:.4f} ({best['step']}) | "
              f"{rows[-1]['mean']:.4f} |")  # fmt: skip
        curves = [(f"seed{s}", f"seed {s}") for s in sorted(runs)][:5] + [("mean", "mean of seeds")]
        if pixels is not None:
            curves.append(("pixels", "raw pixels"))
        plot_loss_curve(rows, images / f"fmnist-{d.name}-seeds-depth.png", curves=curves,
                        ylabel="linear probe test accuracy", xlabel="layer (last: ln_f)")


def finetunes(out: Path, images: Path, image_name: str) -> None:
    """The long run's fine-tunes (finetune-stepS, finetune-noaug-stepS, finetune-flip-stepS): a table, and their
    validation accuracy against epochs drawn into ``images / image_name``."""
    paths = sorted((out / "long").glob("finetune*-step*/finetune.json"))
    if not paths:
        return
    print("\n| fine-tune | steps (epochs) | minutes | val acc every eval | best step | test acc |")
    print("|---|---:|---:|---|---:|---:|")
    runs = [(p.parent.name, json.loads(p.read_text()), json.loads((p.parent / "history.json").read_text()))
            for p in paths]  # fmt: skip
    for name, res, hist in runs:
        vals = ", ".join(f"{h['val_acc']:.3f}" for h in hist)
        print(f"| {name} | {res['steps']} ({res['steps'] * epochs_per_step(res):.2f}) | {res['seconds'] / 60:.1f} | "
              f"{vals} | {res['best_step']} | {res['test_acc']:.4f} |")  # fmt: skip
    plot_finetune_epochs(runs, images / image_name, "epochs of fine-tuning")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/fm"))
    p.add_argument("--images", type=Path, default=Path("docs/images"))
    p.add_argument("--pixels", type=float, help="the raw-pixel baseline's test accuracy on the long run's probe "
                   "split, drawn as a line")  # fmt: skip
    p.add_argument("--study-pixels", type=float, help="the same on the study's probe split")
    p.add_argument("--finetune-image", default="fmnist-long-finetune.png",
                   help="file name (in --images) of the fine-tunes' plot")
    args = p.parse_args()
    study(args.out, args.images, args.study_pixels)
    longer(args.out, args.images, args.study_pixels)
    seeds(args.out, args.images, args.study_pixels)
    long_run(args.out, args.images, args.pixels)
    finetunes(args.out, args.images, args.finetune_image)


if __name__ == "__main__":
    main()
