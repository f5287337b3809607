"""The ``probe`` and ``finetune`` commands of the ``imagegpt`` CLI: linear probes of a model's layers on labeled
images, and fine-tuning it as a classifier.

:func:`add_parsers` adds it to an argparse subparsers object; :data:`COMMANDS` maps its name to its handler
(``args`` -> exit code), as :mod:`imagegpt.cli_train` does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_parsers", "COMMANDS"]

FINETUNE_EXAMPLE = """\
example (Fashion-MNIST's IDX files, the paper's joint loss):
  imagegpt finetune --model runs/fmnist/train/final --data train-images-idx3-ubyte --labels train-labels-idx1-ubyte \\
      --test-data t10k-images-idx3-ubyte --test-labels t10k-labels-idx1-ubyte --gen-weight 0.5 --steps 2000 \\
      --out runs/finetune
Writes best/ (the classifier with the best validation accuracy; transformers' ImageGPTForImageClassification
loads it), last/ (the model of the last step), history.json (a record per evaluation), val_acc.png (validation
accuracy against step), finetune.json (test accuracy of best/ and of last/, confusion matrix of best/) and
confusion.png into --out. With few steps to spend, --probe-init 5000 starts the head from a linear probe instead
of random weights.
"""

EXAMPLE = """\
example (Fashion-MNIST's IDX files):
  imagegpt probe --data train-images-idx3-ubyte --labels train-labels-idx1-ubyte \\
      --test-data t10k-images-idx3-ubyte --test-labels t10k-labels-idx1-ubyte --limit 10000 --out runs/probe
Writes probe.json (a row per layer), probe.png (accuracy against layer) and the feature caches into --out. A
probe that finds caches of the same images and model in its --out skips the model for the layers they hold: copy
features_*.npz into a new --out to try other --C values, --layers, --concat or --average without a second pass.
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
    s.add_argument("--average", type=int, nargs="+", help="also probe the mean of these layers' features (one "
                   "layer's dimensions)")  # fmt: skip
    s.add_argument("--pixels", action="store_true", help="also probe the raw pixels (a baseline)")
    s.add_argument("--limit", type=int, help="use the first N training images")
    s.add_argument("--test-limit", type=int, help="use the first N test images")
    s.add_argument("--val-fraction", type=float, default=0.1, help="share of training images that picks C")
    s.add_argument("--groups", type=Path, help="a .npy of one integer group id per training image (e.g. the emoji "
                   "it draws): validation holds out whole groups, so near-copies never straddle it")  # fmt: skip
    s.add_argument("--C", type=float, nargs="+", dest="Cs", help="inverse regularization strengths to try "
                   "(default 0.01 0.1 1 10)")  # fmt: skip
    s.add_argument("--max-iter", type=int, default=1000, help="lbfgs iterations per fit (default 1000)")
    s.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    s.add_argument("--device", default="auto", help="cpu, cuda ... (default: cuda when available)")
    s.add_argument("--seed", type=int, default=0, help="seeds the validation split that picks C and, "
                   "without --test-data, the held-out test images (default 0)")  # fmt: skip
    s.add_argument("--out", type=Path, default=Path("runs/probe"), help="output directory (default runs/probe)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    f = sub.add_parser("finetune", help="fine-tune a pretrained model as an image classifier",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Put a linear classifier on the average-pooled ln_f states of a pretrained model "
                       "and train all weights on labeled images (augmented with random crops and flips), optionally "
                       "with the paper's joint loss (classification + next-pixel prediction). The best step by "
                       "validation accuracy is kept; training stops early when it stops improving.",
                       epilog=FINETUNE_EXAMPLE)  # fmt: skip
    f.add_argument("--model", default="fashion-mnist", help="pretrained model directory, Hub id or packaged name")
    f.add_argument("--data", type=Path, required=True, help="training images: IDX file, .npy array or folder")
    f.add_argument("--labels", type=Path, required=True, help="their labels: IDX labels file or .npy")
    f.add_argument("--test-data", type=Path, help="test images, scored once at the end with the best model "
                   "(and with the last one: test_acc_last)")
    f.add_argument("--test-labels", type=Path, help="their labels")
    f.add_argument("--label-names", help="comma-separated class names, written into the config's id2label")
    f.add_argument("--limit", type=int, help="use the first N training images")
    f.add_argument("--test-limit", type=int, help="use the first N test images")
    f.add_argument("--val-size", type=int, default=1000, help="training images held out to pick the best step "
                   "(default 1000)")  # fmt: skip
    f.add_argument("--steps", type=int, default=2000, help="maximum optimizer steps (default 2000)")
    f.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    f.add_argument("--lr", type=float, default=3e-4, help="peak learning rate, cosine to --min-lr (default 3e-4)")
    f.add_argument("--min-lr", type=float, default=1e-5, help="where the cosine schedule ends (default 1e-5)")
    f.add_argument("--warmup", type=int, default=50, help="warmup steps (default 50)")
    f.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's decoupled weight decay (default 0.01)")
    f.add_argument("--gen-weight", type=float, default=0.0, help="weight of the next-pixel loss in the joint loss "
                   "(the paper: 0.5-1; default 0 = classification only)")  # fmt: skip
    f.add_argument("--probe-init", type=int, default=0, metavar="N", help="start the head from a linear probe on "
                   "the first N training images (LP-FT; best when steps are few; default 0 = random head)")
    f.add_argument("--dropout", type=float, help="dropout while fine-tuning (default: the checkpoint's)")
    f.add_argument("--no-augment", action="store_true", help="train on the images as they are")
    f.add_argument("--no-flip", action="store_true", help="augment with random crops only, never a left-right "
                   "flip (digits, text: a mirrored 2 is not a 2)")  # fmt: skip
    f.add_argument("--no-crop", action="store_true", help="augment with left-right flips only, never a random crop "
                   "(tiny images such as 14x14, where the 1.125x resize and crop distort what the test images show)")
    f.add_argument("--eval-interval", type=int, default=100, help="steps between validations (default 100)")
    f.add_argument("--patience", type=int, default=5, help="validations without improvement before stopping "
                   "(default 5; 0 = never stop early)")  # fmt: skip
    f.add_argument("--max-minutes", type=float, help="stop (keeping the best model) after this much time")
    f.add_argument("--device", default="auto", help="cpu, cuda ... (default: cuda when available)")
    f.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="autocast of the training steps (default auto: bfloat16 on CUDA, float32 on the CPU)")
    f.add_argument("--seed", type=int, default=0, help="seeds the held-out images, the head's init, the batches and "
                   "the augmentation (default 0)")  # fmt: skip
    f.add_argument("--out", type=Path, default=Path("runs/finetune"), help="output directory (default "
                   "runs/finetune)")  # fmt: skip
    f.add_argument("--quiet", action="store_true", help="no progress bars")


def _probe(args) -> int:
    import numpy as np
    import torch

    from imagegpt import ImageGPTForCausalImageModeling
    from imagegpt.checkpoint import atomic_write_text
    from imagegpt.datasets import load_labeled, read_labels
    from imagegpt.probe import blas_threads, extract_features, plot_probe, probe_layers, raw_pixel_baseline
    from imagegpt.processor import ImageGPTImageProcessor

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model = ImageGPTForCausalImageModeling.from_pretrained(args.model).to(device).eval()
    processor = ImageGPTImageProcessor.from_pretrained(args.model)
    ids, y, pixels = load_labeled(args.data, args.labels, processor, args.limit, args.pixels)
    groups = None
    if args.groups is not None:
        groups, n_labels = read_labels(args.groups), len(read_labels(args.labels))
        if len(groups) != n_labels:
            raise ValueError(f"{args.groups} holds {len(groups)} group ids for the {n_labels} labels of {args.labels}; "
                             "give one per training image")  # fmt: skip
        groups = groups[: args.limit]
        if len(groups) != len(y):
            raise ValueError(f"--groups needs every training image readable ({len(y)} of {len(groups)} were)")
    if args.test_data is not None:
        test_ids, test_y, test_pixels = load_labeled(args.test_data, args.test_labels, processor, args.test_limit,
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
        groups = None if groups is None else groups[tr]
        if pixels is not None:
            pixels, test_pixels = pixels[tr], pixels[te]
    args.out.mkdir(parents=True, exist_ok=True)
    layers, concat, average = args.layers, args.concat, args.average
    if layers is not None and (concat or average):
        layers = sorted(set(layers) | set(concat or ()) | set(average or ()))  # they need those layers' features
    kw = dict(layers=layers, batch_size=args.batch_size, progress=not args.quiet, device=device)
    train_f = extract_features(model, ids, cache_path=args.out / "features_train.npz", **kw)
    test_f = extract_features(model, test_ids, cache_path=args.out / "features_test.npz", **kw)
    fit = dict(val_fraction=args.val_fraction, seed=args.seed, max_iter=args.max_iter, groups=groups,
               **({"Cs": args.Cs} if args.Cs else {}))  # fmt: skip
    rows = probe_layers(train_f, y, test_f, test_y, concat=concat, average=average, **fit)
    if args.pixels:
        rows.append(raw_pixel_baseline(pixels, y, test_pixels, test_y, **fit))
    result = {"model": str(args.model), "n_train": int(len(y)), "n_test": int(len(test_y)),
              "n_layer": model.config.n_layer, "max_iter": args.max_iter, "seed": args.seed,
              "blas_threads": blas_threads(), "val_fraction": args.val_fraction,
              "groups": None if args.groups is None else str(args.groups), "rows": rows}  # fmt: skip
    # max_iter, seed and blas_threads: what a refit of a row needs to reproduce it; val_fraction and groups: the
    # validation split that picks C for a row probed later (scripts/probe_paired.py's pixels)
    atomic_write_text(args.out / "probe.json", json.dumps(result, indent=2) + "\n")
    plot_probe(rows, args.out / "probe.png")
    print(f"linear probes of {args.model} on {len(y)} train / {len(test_y)} test images "
          f"(layer {model.config.n_layer} = ln_f output):")  # fmt: skip
    print(f"{'layer':>8} {'C':>8} {'val acc':>8} {'test acc':>8}")
    for r in rows:
        print(f"{r['layer']!s:>8} {r['C']:>8g} {r['val_acc']:>8.4f} {r['test_acc']:>8.4f}")
    print(f"wrote {args.out / 'probe.json'} and {args.out / 'probe.png'}")
    return 0


def _finetune(args) -> int:
    import numpy as np

    from imagegpt.checkpoint import atomic_write_text
    from imagegpt.datasets import load_labeled
    from imagegpt.finetune import FinetuneConfig, confusion_matrix, evaluate_classifier, finetune
    from imagegpt.heads import ImageGPTForImageClassification
    from imagegpt.processor import ImageGPTImageProcessor
    from imagegpt.viz import plot_confusion, plot_loss_curve

    if args.no_crop and args.no_flip and not args.no_augment:
        raise ValueError("--no-crop with --no-flip leaves no augmentation: use --no-augment instead")
    cfg = FinetuneConfig(batch_size=args.batch_size, max_steps=args.steps, lr=args.lr, min_lr=args.min_lr,
                         warmup_steps=args.warmup, weight_decay=args.weight_decay, gen_weight=args.gen_weight,
                         probe_init=args.probe_init, augment=not args.no_augment, flip=not args.no_flip,
                         crop=not args.no_crop, dropout=args.dropout, eval_interval=args.eval_interval,
                         patience=args.patience, max_time_minutes=args.max_minutes, seed=args.seed,
                         device=args.device, dtype=args.dtype, progress=not args.quiet)  # fmt: skip
    processor = ImageGPTImageProcessor.from_pretrained(args.model)
    ids, y, images = load_labeled(args.data, args.labels, processor, args.limit, keep_images=not args.no_augment)
    if not 1 <= args.val_size < len(y):
        raise ValueError(f"--val-size must lie in [1, {len(y)}) for {len(y)} training images, got {args.val_size}")
    perm = np.random.default_rng(args.seed).permutation(len(y))
    va, tr = perm[: args.val_size], perm[args.val_size :]
    test = None
    if args.test_data is not None:
        test = load_labeled(args.test_data, args.test_labels, processor, args.test_limit)[:2]
    n_labels = int(max(y.max(), test[1].max() if test is not None else 0)) + 1
    names = [n.strip() for n in args.label_names.split(",")] if args.label_names else None
    if names is not None and len(names) != n_labels:
        raise ValueError(f"--label-names gives {len(names)} names; the labels need {n_labels}")
    print(f"fine-tuning {args.model} on {len(tr)} images ({len(va)} held out for validation), {n_labels} classes")
    result = finetune(args.model, (ids[tr], y[tr], None if images is None else images[tr]), (ids[va], y[va]),
                      args.out, cfg, num_labels=n_labels, label_names=names)  # fmt: skip
    print(f"best validation accuracy {result['best_val_acc']:.4f} at step {result['best_step']} of "
          f"{result['steps']} ({result['stopped']}, {result['seconds'] / 60:.1f} min); model in {args.out / 'best'}")
    plot_loss_curve(result["history"], args.out / "val_acc.png", curves=[("val_acc", "val")],
                    ylabel="validation accuracy")  # fmt: skip
    summary = {"model": str(args.model), "n_train": int(len(tr)), "n_val": int(len(va)), **result,
               "config": {k: v for k, v in vars(cfg).items()}}  # fmt: skip
    if test is not None:
        import torch

        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        best = ImageGPTForImageClassification.from_pretrained(args.out / "best", device=device)
        acc, pred = evaluate_classifier(best, test[0], test[1], progress=not args.quiet, desc="test")
        matrix = confusion_matrix(test[1], pred, n_labels)
        label_names = [best.config.id2label[i] for i in range(n_labels)]
        plot_confusion(matrix, label_names, args.out / "confusion.png")
        summary.update(test_acc=acc, n_test=int(len(test[1])), confusion=matrix.tolist(), labels=label_names)
        print(f"test accuracy {acc:.4f} on {len(test[1])} images; confusion matrix (rows true, columns predicted):")
        for name, row in zip(label_names, matrix):
            print(f"  {name[:12]:>12} " + " ".join(f"{v:5d}" for v in row))
        # the last step's model, beside the pick: what choosing the best step on the validation set bought
        if result["best_step"] == result["steps"]:
            summary["test_acc_last"] = acc  # the same weights
        else:
            last = ImageGPTForImageClassification.from_pretrained(args.out / "last", device=device)
            summary["test_acc_last"] = evaluate_classifier(last, test[0], test[1], progress=not args.quiet,
                                                           desc="test (last)")[0]  # fmt: skip
        print(f"test accuracy of the last step ({result['steps']}): {summary['test_acc_last']:.4f}")
        print(f"wrote {args.out / 'confusion.png'}")
    print(f"wrote {args.out / 'val_acc.png'} (validation accuracy against step)")
    atomic_write_text(args.out / "finetune.json", json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out / 'finetune.json'}")
    return 0


COMMANDS = {"probe": _probe, "finetune": _finetune}
