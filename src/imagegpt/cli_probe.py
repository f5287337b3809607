"""The ``probe`` command of the ``imagegpt`` CLI: linear probes of a model's layers on labeled images.

:func:`add_parsers` adds it to an argparse subparsers object; :data:`COMMANDS` maps its name to its handler
(``args`` -> exit code), as :mod:`imagegpt.cli_train` does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_parsers", "COMMANDS"]

EXAMPLE = """\
example (Fashion-MNIST's IDX files):
  imagegpt probe --data train-images-idx3-ubyte --labels train-labels-idx1-ubyte \\
      --test-data t10k-images-idx3-ubyte --test-labels t10k-labels-idx1-ubyte --limit 10000 --out runs/probe
Writes probe.json (a row per layer), probe.png (accuracy against layer) and the feature caches into --out.
"""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``probe`` to ``sub`` (from ``parser.add_subparsers()``)."""
    s = sub.add_parser("probe", help="linear probes of each layer's features on labeled images",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Average-pool each layer's hidden states over the image, fit a logistic "
                       "regression (scikit-learn; C chosen on a validation split) and report its accuracy on the "
                       "test images: the iGPT paper's linear probe.", epilog=EXAMPLE)  # fmt: skip
    s.add_argument("--model", default="fashion-mnist", help="model directory, Hub id or packaged name "
                   "(default fashion-mnist)")  # fmt: skip
    s.add_argument("--data", type=Path, required=True, help="training images: IDX file, .npy array or folder")
    s.add_argument("--labels", type=Path, required=True, help="their labels: IDX labels file or .npy")
    s.add_argument("--test-data", type=Path, help="test images (default: hold out --test-fraction of --data)")
    s.add_argument("--test-labels", type=Path, help="their labels")
    s.add_argument("--test-fraction", type=float, default=0.2, help="held out when there is no --test-data")
    s.add_argument("--layers", type=int, nargs="+", help="layers to probe, 0 .. n_layer (default all; n_layer is "
                   "the ln_f output)")  # fmt: skip
    s.add_argument("--concat", type=int, nargs="+", help="also probe these layers' features concatenated")
    s.add_argument("--pixels", action="store_true", help="also probe the raw pixels (a baseline)")
    s.add_argument("--limit", type=int, help="use the first N training images")
    s.add_argument("--test-limit", type=int, help="use the first N test images")
    s.add_argument("--val-fraction", type=float, default=0.1, help="share of training images that picks C")
    s.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    s.add_argument("--device", default="auto", help="cpu, cuda ... (default: cuda when available)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, default=Path("runs/probe"), help="output directory (default runs/probe)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def _labels(path: Path):
    import numpy as np

    from imagegpt.datasets import read_idx

    y = np.load(path, allow_pickle=False) if path.name.lower().endswith(".npy") else read_idx(path)
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: labels must be a 1-D array of integer class ids, got {y.dtype} {y.shape}")
    return y.astype(np.int64)


def _load(data: Path, labels: Path | None, limit: int | None, processor, keep_images: bool):
    """Images -> (ids with start token (N, 1 + H*W), labels (N,), resized uint8 images or None)."""
    import numpy as np

    from imagegpt.datasets import open_source

    if labels is None:
        raise ValueError(f"{data} needs its labels (--labels / --test-labels)")
    source, y = open_source(data), _labels(labels)
    if source.kind != "images":
        raise ValueError(f"{data} holds pre-quantized tokens; probe needs images")
    if len(y) != len(source):
        raise ValueError(f"{labels} holds {len(y)} labels for {len(source)} images in {data}")
    n = len(source) if limit is None else min(limit, len(source))
    ids, kept, images = [], [], []
    for start in range(0, n, 256):
        index, batch = source.read(start, min(start + 256, n))
        if not len(batch):
            continue
        # the model's own size and palette: the features must come from the inputs it was trained on
        ids.append(processor(list(batch), return_tensors="np", add_start_token=True,
                             input_data_format="channels_last")["input_ids"])  # fmt: skip
        kept.append(index)  # folders skip unreadable files: keep their labels in step
        if keep_images:
            images.append(processor(list(batch), return_tensors="np", do_normalize=False, do_color_quantize=False,
                                    input_data_format="channels_last")["pixel_values"])  # fmt: skip
    if not ids:
        raise ValueError(f"no readable images in {data}")
    pixels = (np.rint(np.concatenate(images) * 255).astype(np.uint8) if keep_images else None)
    return np.concatenate(ids), y[np.concatenate(kept)], pixels


def _probe(args) -> int:
    import numpy as np
    import torch

    from imagegpt import ImageGPTForCausalImageModeling
    from imagegpt.checkpoint import atomic_write_text
    from imagegpt.probe import extract_features, plot_probe, probe_layers, raw_pixel_baseline
    from imagegpt.processor import ImageGPTImageProcessor

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model = ImageGPTForCausalImageModeling.from_pretrained(args.model).to(device).eval()
    processor = ImageGPTImageProcessor.from_pretrained(args.model)
    ids, y, pixels = _load(args.data, args.labels, args.limit, processor, args.pixels)
    if args.test_data is not None:
        test_ids, test_y, test_pixels = _load(args.test_data, args.test_labels, args.test_limit, processor,
                                              args.pixels)  # fmt: skip
    else:
        if not 0 < args.test_fraction < 1:
            raise ValueError(f"--test-fraction must lie in (0, 1), got {args.test_fraction}")
        if len(ids) < 4:
            raise ValueError(f"{len(ids)} images are too few to hold out test images; pass --test-data")
        perm = np.random.default_rng(args.seed).permutation(len(ids))
        n_test = min(max(1, int(round(len(ids) * args.test_fraction))), len(ids) - 2)
        te, tr = perm[:n_test], perm[n_test:]
        test_ids, test_y = ids[te], y[te]
        ids, y = ids[tr], y[tr]
        if pixels is not None:
            pixels, test_pixels = pixels[tr], pixels[te]
    args.out.mkdir(parents=True, exist_ok=True)
    layers, concat = args.layers, args.concat
    if layers is not None and concat:
        layers = sorted(set(layers) | set(concat))  # the concatenation needs its layers' features
    kw = dict(layers=layers, batch_size=args.batch_size, progress=not args.quiet, device=device)
    train_f = extract_features(model, ids, cache_path=args.out / "features_train.npz", **kw)
    test_f = extract_features(model, test_ids, cache_path=args.out / "features_test.npz", **kw)
    rows = probe_layers(train_f, y, test_f, test_y, val_fraction=args.val_fraction, seed=args.seed, concat=concat)
    if args.pixels:
        rows.append(raw_pixel_baseline(pixels, y, test_pixels, test_y, val_fraction=args.val_fraction,
                                       seed=args.seed))  # fmt: skip
    result = {"model": str(args.model), "n_train": int(len(y)), "n_test": int(len(test_y)),
              "n_layer": model.config.n_layer, "rows": rows}  # fmt: skip
    atomic_write_text(args.out / "probe.json", json.dumps(result, indent=2) + "\n")
    plot_probe(rows, args.out / "probe.png")
    print(f"linear probes of {args.model} on {len(y)} train / {len(test_y)} test images "
          f"(layer {model.config.n_layer} = ln_f output):")  # fmt: skip
    print(f"{'layer':>8} {'C':>8} {'val acc':>8} {'test acc':>8}")
    for r in rows:
        print(f"{r['layer']!s:>8} {r['C']:>8g} {r['val_acc']:>8.4f} {r['test_acc']:>8.4f}")
    print(f"wrote {args.out / 'probe.json'} and {args.out / 'probe.png'}")
    return 0


COMMANDS = {"probe": _probe}
