"""Palette fitting: imagegpt.palette.fit_palette vs scikit-learn's MiniBatchKMeans on the same pixels and k.

Two cases, each on real pixels:
  gray:  Fashion-MNIST training images (the first --gray-pixels pixels' worth of 28x28 images), k=16, ours with
         grayscale=True and sklearn on the same values as (N, 1) floats in [-1, 1];
  color: scikit-image's bundled RGB photos if skimage is importable, else scikit-learn's two bundled photos
         (china.jpg, flower.jpg), else the PNGs in examples/ plus synthetic colors; bilinearly resized so that
         there are --color-pixels pixels (the photos hold ~0.55M pixels), k=512.
Both fit float32 data in [-1, 1] (uint8 mapped as the processor does: x / 255 * 2 - 1). sklearn runs with its
defaults (batch_size=1024, k-means++ init, early stopping) and random_state=--seed. Inertia = mean squared
distance of every pixel to its nearest palette color in [-1, 1] RGB units (palette_inertia, grays as R=G=B),
computed the same way for both palettes. Time = wall-clock seconds of the fit (ours: min and median of --reps).

  python benchmarks/bench_palette.py                       # CPU, ~1-3 minutes here (sklearn takes most of it)
  python benchmarks/bench_palette.py --device cuda
  python benchmarks/bench_palette.py --gray-pixels 200000 --color-pixels 200000   # a quick smoke run
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imagegpt.palette import fit_palette, palette_inertia

sys.path.insert(0, str(Path(__file__).parent))
from bench_forward import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def gray_pixels(n: int) -> tuple[np.ndarray, str]:
    """The first ceil(n / 784) Fashion-MNIST training images, (M, 28, 28) uint8."""
    count = -(-n // 784)
    with gzip.open(FASHION, "rb") as f:
        header = np.frombuffer(f.read(16), ">u4")
        if header[0] != 2051 or tuple(header[2:]) != (28, 28):
            raise ValueError(f"{FASHION} is not an IDX file of 28x28 images")
        count = min(count, int(header[1]))
        images = np.frombuffer(f.read(count * 784), np.uint8).reshape(count, 28, 28)
    return images, f"Fashion-MNIST train[:{count}]"


def photos() -> tuple[list[np.ndarray], str]:
    try:
        import skimage.data as data

        names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "hubble_deep_field")
        images = [getattr(data, name)() for name in names if hasattr(data, name)]
        images = [a[..., :3] for a in images if a.ndim == 3 and a.shape[-1] in (3, 4) and a.dtype == np.uint8]
        if images:
            return images, f"scikit-image photos ({len(images)})"
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images

        return list(load_sample_images().images), "scikit-learn sample photos (china.jpg, flower.jpg)"
    except Exception:  # noqa: BLE001 - any failure: fall back to what the repo has
        pass
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((ROOT / "examples").glob("*.png"))]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    for _ in range(4):  # smooth synthetic color fields with noise
        a, b, c = rng.uniform(0.5, 4, 3)
        field = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx * yy * c), np.sin(c * (xx - yy))], -1)
        images.append(np.clip(127.5 * (field + 1) + rng.normal(0, 6, field.shape), 0, 255).astype(np.uint8))
    return images, f"examples/*.png ({len(images) - 4}) + 4 synthetic color fields"


def color_pixels(n: int) -> tuple[np.ndarray, str]:
    images, source = photos()
    total = sum(a.shape[0] * a.shape[1] for a in images)
    scale = (n / total) ** 0.5
    out = []
    for a in images:
        size = (max(1, round(a.shape[1] * scale)), max(1, round(a.shape[0] * scale)))
        out.append(np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BILINEAR)).reshape(-1, 3))
    pixels = np.concatenate(out)[:n]
    return pixels, f"{source}, resized x{scale:.2f}"


def to_unit(u8: np.ndarray) -> np.ndarray:
    return ((u8.astype(np.float64) / 255).astype(np.float32) - 0.5) / 0.5  # the processor's arithmetic


def timed(fn, device: str) -> tuple[float, object]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def run_case(name: str, pixels: np.ndarray, source: str, k: int, gray: bool, args) -> dict:
    from sklearn.cluster import MiniBatchKMeans

    flat = pixels.reshape(-1, 1 if gray else 3)
    ours_times, palette = [], None
    for _ in range(args.reps):
        t, palette = timed(lambda: fit_palette(pixels, k, seed=args.seed, device=args.device, grayscale=gray),
                           args.device)  # fmt: skip
        ours_times.append(t)
    ours_inertia = palette_inertia(pixels, palette)
    data = to_unit(flat)
    model = MiniBatchKMeans(k, random_state=args.seed)
    sk_time, _ = timed(lambda: model.fit(data), "cpu")
    centers = np.clip(model.cluster_centers_, -1, 1).astype(np.float32)
    sk_inertia = palette_inertia(pixels, np.repeat(centers, 3, 1) if gray else centers)
    return dict(case=name, source=source, shape=list(pixels.shape), pixels=len(flat), k=k, device=args.device,
                dtype="float32", grayscale=gray, ours_s_min=min(ours_times),
                ours_s_median=statistics.median(ours_times), ours_times=ours_times, ours_inertia=ours_inertia,
                sklearn_s=sk_time, sklearn_inertia=sk_inertia, sklearn_steps=int(model.n_steps_),
                time_ratio=statistics.median(ours_times) / sk_time,
                inertia_ratio=ours_inertia / sk_inertia)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gray-pixels", type=int, default=2_000_000)
    parser.add_argument("--color-pixels", type=int, default=1_000_000)
    parser.add_argument("--k-gray", type=int, default=16)
    parser.add_argument("--k-color", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=3, help="runs of ours per case (sklearn runs once)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/palette-<time>.json")
    args = parser.parse_args()
    import sklearn

    threads = f"{cpu_name()}, {torch.get_num_threads()} threads"
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else threads
    print(f"# {device} | torch {torch.__version__} | scikit-learn {sklearn.__version__} | python "
          f"{platform.python_version()}", flush=True)  # fmt: skip
    gray, gray_source = gray_pixels(args.gray_pixels)
    color, color_source = color_pixels(args.color_pixels)
    rows = []
    for name, pixels, source, k, is_gray in (("gray", gray, gray_source, args.k_gray, True),
                                             ("color", color, color_source, args.k_color, False)):  # fmt: skip
        print(f"# {name}: {source}, uint8 {tuple(pixels.shape)}, k={k}", flush=True)
        rows.append(run_case(name, pixels, source, k, is_gray, args))
    head = ("case", "pixels", "k", "device", "dtype", "ours s (min/med)", "sklearn s", "time ratio",
            "ours inertia", "sklearn inertia", "inertia ratio")  # fmt: skip
    lines = [head]
    for r in rows:
        lines.append((r["case"], f"{r['pixels']:,}", str(r["k"]), r["device"], r["dtype"],
                      f"{r['ours_s_min']:.2f}/{r['ours_s_median']:.2f}", f"{r['sklearn_s']:.2f}",
                      f"{r['time_ratio']:.3f}x", f"{r['ours_inertia']:.6f}", f"{r['sklearn_inertia']:.6f}",
                      f"{r['inertia_ratio']:.4f}"))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for i, line in enumerate(lines):
        print(" | ".join(cell.ljust(w) for cell, w in zip(line, widths)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    print("time ratio = ours median / sklearn; inertia ratio = ours / sklearn (< 1: ours fits better)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.json or ROOT / "benchmarks" / "results" / f"palette-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(device=device, torch=torch.__version__, sklearn=sklearn.__version__, python=sys.version.split()[0],
                time=stamp, args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})  # fmt: skip
    path.write_text(json.dumps(dict(meta=meta, results=rows), indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
