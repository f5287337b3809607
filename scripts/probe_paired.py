"""Is one probed layer better than another on the same test images? A paired (McNemar) test.

Two accuracies on the same test images are not independent: the standard error of their difference that
docs/results.md uses (from the two accuracies alone) is conservative. This script refits the linear probes of two
layers from a probe directory's feature caches (with the C that `imagegpt probe` chose for each, so the
accuracies match its probe.json), and counts the test images that only one of the two gets right: with b and c
such images, z = (b - c) / sqrt(b + c), and the exact two-sided p-value of b against Binomial(b + c, 1/2).

Usage (the numbers of docs/results.md's 8-layer run; about 20 s per layer):
  python scripts/probe_paired.py runs/fm/deep-3000/probe 5 8 --labels $F/train-labels-idx1-ubyte.gz \
      --test-labels $F/t10k-labels-idx1-ubyte.gz --max-iter 2000
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

from imagegpt.datasets import read_labels
from imagegpt.probe import mcnemar, refit_probe


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", type=Path, help="an `imagegpt probe --out` directory (probe.json + feature caches)")
    ap.add_argument("a", type=int, help="a layer (0 = embeddings; n_layer = ln_f)")
    ap.add_argument("b", type=int, help="the layer to compare it with")
    ap.add_argument("--labels", type=Path, required=True, help="the probe's training labels (IDX or .npy)")
    ap.add_argument("--test-labels", type=Path, required=True, help="its test labels (IDX or .npy)")
    ap.add_argument("--max-iter", type=int, default=None,
                    help="the probe's --max-iter (default: probe.json's, else 2000)")
    args = ap.parse_args(argv)

    meta_path = args.probe / "probe.json"
    caches = [args.probe / "features_train.npz", args.probe / "features_test.npz"]
    for path in (meta_path, *caches):
        if not path.is_file():
            ap.error(f"{path} is missing: run `imagegpt probe ... --out {args.probe}` first")
    meta = json.loads(meta_path.read_text())
    rows = {r["layer"]: r for r in meta["rows"]}
    recorded = meta.get("max_iter")
    if args.max_iter is not None and recorded is not None and args.max_iter != recorded:
        ap.error(f"--max-iter {args.max_iter} differs from the probe's own, {recorded} (probe.json): leave it out")
    max_iter, seed = args.max_iter or recorded or 2000, meta.get("seed", 0)
    train, test = (np.load(p, allow_pickle=False) for p in caches)
    y = read_labels(args.labels)[: meta["n_train"]]
    ty = read_labels(args.test_labels)[: meta["n_test"]]
    right = {}
    for layer in (args.a, args.b):
        if layer not in rows or f"layer_{layer}" not in train.files:
            probed = sorted(k for k in rows if isinstance(k, int))
            ap.error(f"layer {layer} was not probed in {args.probe} (probed: {probed})")
        x, tx = train[f"layer_{layer}"], test[f"layer_{layer}"]
        if len(x) != len(y) or len(tx) != len(ty):
            ap.error(f"{args.probe}: features of {len(x)} / {len(tx)} images but {len(y)} / {len(ty)} labels")
        C = rows[layer]["C"]
        right[layer] = refit_probe(x, y, C, max_iter, seed, meta.get("blas_threads")).predict(tx) == ty
        acc = float(right[layer].mean())
        if abs(acc - rows[layer]["test_acc"]) > 1e-9:
            hint = ("the probe's features or labels differ" if "blas_threads" in meta else
                    "pass the probe's own --max-iter, and run with its OMP_NUM_THREADS" if not recorded else
                    "run with the probe's OMP_NUM_THREADS, or its features or labels differ")
            ap.error(f"layer {layer}: the refit scores {acc:.4f}, probe.json {rows[layer]['test_acc']:.4f}: {hint}")
        print(f"layer {layer}: C = {C:g}, test accuracy {acc:.4f}")
    res = mcnemar(right[args.a], right[args.b])
    print(f"only layer {args.a} right: {res['only_a']} images; only layer {args.b} right: {res['only_b']}; "
          f"z = {res['z']:.2f}, two-sided p = {res['p']:.2g} (McNemar, exact)")
    return res


if __name__ == "__main__":
    main()
