r"""Is one probed layer better than another, or than the raw pixels, on the same test images? A paired test.

Two accuracies on the same test images are not independent: the standard error of their difference that
docs/results.md uses (from the two accuracies alone) is conservative. This script refits the linear probes of two
rows of a probe directory from its feature caches (with the C that `imagegpt probe` chose for each, so the
accuracies match its probe.json), and counts the test images that only one of the two gets right: with b and c
such images, z = (b - c) / sqrt(b + c), and the exact two-sided p-value of b against Binomial(b + c, 1/2) (McNemar).
A row is a layer (5), layers side by side (2+4+6+8, from `probe --concat`), their mean (mean(1,2,3), `--average`)
or `pixels`: the raw-pixel baseline on the same images, resized by the model's processor as `probe --pixels` does
(needs --data and --test-data; its C is probe.json's pixels row's, else picked from --pixel-Cs on the probe's
validation split: probe.json's val_fraction and groups, or 0.1 and none for a probe.json that predates them).

Usage (the numbers of docs/results.md's 8-layer run; about 20 s per layer):
  python scripts/probe_paired.py runs/fm/deep-3000/probe 5 8 --labels $F/train-labels-idx1-ubyte.gz \
      --test-labels $F/t10k-labels-idx1-ubyte.gz --max-iter 2000
  python scripts/probe_paired.py runs/fm/deep-6000-seed2/probe-settings 2+4+6+8 pixels \
      --data $F/train-images-idx3-ubyte.gz --labels $F/train-labels-idx1-ubyte.gz \
      --test-data $F/t10k-images-idx3-ubyte.gz --test-labels $F/t10k-labels-idx1-ubyte.gz
The refit uses the probe's own max_iter, seed and number of BLAS threads, read from probe.json (an lbfgs fit that
stops at max_iter before converging ends elsewhere with another thread count); a probe.json written before they
were recorded there needs --max-iter (the study's scripts pass 2000; the seed was then always 0) and the probe's
OMP_NUM_THREADS. The script checks that each refit reproduces probe.json's test accuracy and stops if it does not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from imagegpt.datasets import load_labeled, read_labels
from imagegpt.probe import DEFAULT_CS, mcnemar, pick_C, pixel_matrix, refit_probe, row_features


def _layers(npz) -> dict[int, np.ndarray]:
    """A feature cache's arrays by layer: {layer: (N, n_embd)}."""
    return {int(k.removeprefix("layer_")): npz[k] for k in npz.files if k.startswith("layer_")}


def _pixels(args, ap, meta: dict, y: np.ndarray, ty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The probe's own train and test images (uint8), resized as `imagegpt probe --pixels` resizes them."""
    from imagegpt.processor import ImageGPTImageProcessor

    if args.data is None or args.test_data is None:
        ap.error("pixels needs the probe's images: --data and --test-data (as given to `imagegpt probe`)")
    processor = ImageGPTImageProcessor.from_pretrained(args.processor or meta["model"])
    images = []
    for data, labels, n, want in ((args.data, args.labels, len(y), y), (args.test_data, args.test_labels, len(ty), ty)):
        try:
            _, got, pixels = load_labeled(data, labels, processor, n, keep_images=True)
        except (OSError, ValueError) as e:
            ap.error(f"pixels: {e}")
        if len(got) != n or not np.array_equal(got, want):  # e.g. a folder with unreadable files skipped
            ap.error(f"{data}: its first {n} labeled images are not the probe's ({len(got)} read)")
        images.append(pixels)
    return images[0], images[1]


def _groups(ap, meta: dict, n: int) -> np.ndarray | None:
    """The probe's --groups for its n training images (whole groups are held out for validation), or None."""
    if meta.get("groups") is None:  # also a probe.json written before groups were recorded: none were used
        return None
    try:
        return read_labels(Path(meta["groups"]))[:n]
    except (OSError, ValueError) as e:
        ap.error(f"pixels: the probe held out whole groups for validation, but its --groups cannot be read: {e}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", type=Path, help="an `imagegpt probe --out` directory (probe.json + feature caches)")
    ap.add_argument("a", help="a row: a layer (0 = embeddings; n_layer = ln_f), 2+4 (concat), mean(1,2), or pixels")
    ap.add_argument("b", help="the row to compare it with")
    ap.add_argument("--labels", type=Path, required=True, help="the probe's training labels (IDX or .npy)")
    ap.add_argument("--test-labels", type=Path, required=True, help="its test labels (IDX or .npy)")
    ap.add_argument("--max-iter", type=int, default=None,
                    help="the probe's --max-iter (default: probe.json's, else 2000)")
    ap.add_argument("--data", type=Path, help="for pixels: the probe's training images")
    ap.add_argument("--test-data", type=Path, help="for pixels: its test images")
    ap.add_argument("--processor", help="for pixels: the model folder whose processor resizes them "
                                        "(default: probe.json's model)")  # fmt: skip
    ap.add_argument("--pixel-Cs", type=float, nargs="+", default=list(DEFAULT_CS),
                    help="for pixels without a pixels row in probe.json: the C grid (default: the library's and the "
                         "study's, %(default)s)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.a == args.b:
        ap.error(f"compare two different rows, got {args.a} twice")

    meta_path = args.probe / "probe.json"
    caches = [args.probe / "features_train.npz", args.probe / "features_test.npz"]
    for path in (meta_path, *caches):
        if not path.is_file():
            ap.error(f"{path} is missing: run `imagegpt probe ... --out {args.probe}` first")
    meta = json.loads(meta_path.read_text())
    rows = {str(r["layer"]): r for r in meta["rows"]}
    recorded = meta.get("max_iter")
    if args.max_iter is not None and recorded is not None and args.max_iter != recorded:
        ap.error(f"--max-iter {args.max_iter} differs from the probe's own, {recorded} (probe.json): leave it out")
    max_iter, seed, threads = args.max_iter or recorded or 2000, meta.get("seed", 0), meta.get("blas_threads")
    train, test = (_layers(np.load(p, allow_pickle=False)) for p in caches)
    y = read_labels(args.labels)[: meta["n_train"]]
    ty = read_labels(args.test_labels)[: meta["n_test"]]
    right = {}
    for name in (args.a, args.b):
        if name == "pixels":
            x, tx = pixel_matrix(*_pixels(args, ap, meta, y, ty))
        elif name not in rows:
            ap.error(f"{name} was not probed in {args.probe} (probed: {', '.join(rows)})")
        else:
            try:
                x, tx = row_features(train, name), row_features(test, name)
            except ValueError as e:
                ap.error(f"{args.probe}: {e}")
        if len(x) != len(y) or len(tx) != len(ty):
            ap.error(f"{args.probe}: features of {len(x)} / {len(tx)} images but {len(y)} / {len(ty)} labels")
        if name in rows:
            C = rows[name]["C"]
        else:  # pixels not probed with the model: pick C as the probe picks it (its validation split and seed)
            C = pick_C(x, y, val_fraction=meta.get("val_fraction", 0.1), seed=seed, Cs=args.pixel_Cs,
                       max_iter=max_iter, groups=_groups(ap, meta, len(y))).C
        right[name] = refit_probe(x, y, C, max_iter, seed, threads).predict(tx) == ty
        acc = float(right[name].mean())
        if name in rows and abs(acc - rows[name]["test_acc"]) > 1e-9:
            hint = ("the probe's features or labels differ" if "blas_threads" in meta else
                    "pass the probe's own --max-iter, and run with its OMP_NUM_THREADS" if not recorded else
                    "run with the probe's OMP_NUM_THREADS, or its features or labels differ")
            ap.error(f"{name}: the refit scores {acc:.4f}, probe.json {rows[name]['test_acc']:.4f}: {hint}")
        print(f"{name}: C = {C:g}, test accuracy {acc:.4f}" + ("" if name in rows else " (C picked here)"))
    res = mcnemar(right[args.a], right[args.b])
    print(f"only {args.a} right: {res['only_a']} images; only {args.b} right: {res['only_b']}; "
          f"z = {res['z']:.2f}, two-sided p = {res['p']:.2g} (McNemar, exact)")
    return res


if __name__ == "__main__":
    main()
