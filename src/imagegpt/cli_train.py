"""Training commands of the ``imagegpt`` CLI: ``fit-palette``, ``tokenize``, ``train``.

:func:`add_parsers` adds them to an argparse subparsers object; :data:`COMMANDS` maps each name to its handler
(``args`` -> exit code); :mod:`imagegpt.cli` hooks them in, and ``torchrun ... -m imagegpt train`` runs them
under torchrun.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imagegpt.cli_checks import train_keys_help

__all__ = ["add_parsers", "COMMANDS", "PIPELINE"]

PIPELINE = """\
a whole pipeline, on a folder of images:
  imagegpt fit-palette images/ --k 16 --grayscale --size 28 --out palette/   # k-means colors -> palette/
  imagegpt tokenize images/ --palette palette/ --out tokens/                  # images -> palette-id shards
  imagegpt train --data tokens/ --out runs/demo --set max_steps=2000 --set model.n_layer=4
  imagegpt complete examples/*.png --model runs/demo/final --out completions.png
Interrupted (Ctrl-C saves a checkpoint)? Continue with: imagegpt train --data tokens/ --out runs/demo --resume
"""

TRAIN_HELP = """\
settings come from the defaults, then --config FILE.toml, then --data/--out/--resume, then each --set:
  --set lr=1e-3 --set batch_size=16 --set model.n_embd=128 --set objective='"bert"'
values are TOML (numbers, true/false, [0.9, 0.95]); bare words are strings.
--resume continues with the run's own settings (train_config.json); a --set then may change only max_steps,
the eval/save/log intervals, eval_batches, keep_last, max_time_minutes, device, compile and the learning-rate
schedule (lr, min_lr, warmup_steps, grad_clip): the change is printed and recorded in log.jsonl.
Exit status: 0 done, 1 diverged, 2 bad settings or data, 130/143 stopped by SIGINT/SIGTERM (checkpoint saved).
Several GPUs or machines: torchrun --nproc_per_node 8 -m imagegpt train --config train.toml
"""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``fit-palette``, ``tokenize`` and ``train`` to ``sub`` (from ``parser.add_subparsers()``)."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = sub.add_parser("fit-palette", help="fit a color palette to images by k-means", formatter_class=fmt,
                       description="Resize images to --size, sample pixels and fit a --k color palette by k-means; "
                       "write it as preprocessor_config.json (the palette and size every later step uses). Prints "
                       "the mean squared quantization error and the unigram entropy (the loss of a model that "
                       "ignores context: a trained model should beat it).", epilog=PIPELINE)  # fmt: skip
    s.add_argument("data", type=Path, help="an image folder, a .npy array of images, or an IDX file")
    s.add_argument("--k", type=int, default=16, help="number of colors (default 16; iGPT used 512)")
    s.add_argument("--grayscale", action="store_true", help="fit k grays (for gray images such as MNIST)")
    s.add_argument("--sample-pixels", type=int, default=1_000_000, help="pixels sampled for fitting (default 1M)")
    s.add_argument("--size", type=int, default=32, help="images are resized to size x size pixels (default 32)")
    s.add_argument("--seed", type=int, default=0, help="seeds the pixel sample and the k-means starts (default 0)")
    s.add_argument("--out", type=Path, required=True, help="directory for preprocessor_config.json")

    s = sub.add_parser("tokenize", help="quantize images to palette-id shards for training", formatter_class=fmt,
                       description="Resize and quantize every image with the palette once, into uint16 .npy shards "
                       "plus manifest.json, split into train and val. Re-running with the same inputs reuses the "
                       "shards.", epilog=PIPELINE)  # fmt: skip
    s.add_argument("data", type=Path, help="an image folder, a .npy array (images, or pre-quantized ids) or IDX file")
    s.add_argument("--palette", type=Path, required=True, help="directory with preprocessor_config.json (fit-palette)")
    s.add_argument("--out", type=Path, required=True, help="token dataset directory to write")
    s.add_argument("--val-fraction", type=float, default=0.05, help="share held out for validation (default 0.05)")
    s.add_argument("--augment", type=int, default=0, help="extra randomly cropped/flipped copies of each training "
                   "image (default 0)")  # fmt: skip
    s.add_argument("--seed", type=int, default=0, help="seeds the split and the augmentation")
    s.add_argument("--overwrite", action="store_true", help="replace a token dataset made from other inputs")

    s = sub.add_parser("train", help="train a model on a token dataset", formatter_class=fmt,
                       description="Train ImageGPT (autoregressive or BERT objective) on the shards written by "
                       "tokenize. Writes log.jsonl, loss.png, checkpoints/ and final/ into --out. Ctrl-C (or "
                       "SIGTERM) finishes the step and saves a checkpoint; --resume continues exactly where it "
                       "stopped.", epilog=TRAIN_HELP + "\n" + train_keys_help() + "\n" + PIPELINE)  # fmt: skip
    s.add_argument("--config", type=Path, help="a TOML file of settings")
    s.add_argument("--data", help="token dataset directory (tokenize --out)")
    s.add_argument("--out", help="run directory (default runs/train)")
    s.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (repeatable)")
    s.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the device setting, auto: cuda when available)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def _fit_palette(args) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from imagegpt.data import open_source
    from imagegpt.palette import fit_palette, palette_inertia, save_palette, unigram_entropy
    from imagegpt.processor import ImageGPTImageProcessor

    source = open_source(args.data)
    if source.kind != "images":
        raise ValueError(f"{args.data} holds pre-quantized tokens; fit-palette needs images")
    if args.k < 1 or args.size < 1 or args.sample_pixels < args.k:
        raise ValueError("--k and --size must be positive and --sample-pixels at least --k")
    resize = ImageGPTImageProcessor(size=args.size)
    per_image = -(-args.sample_pixels // len(source))  # an even share of the pixel budget from every image
    rng = np.random.default_rng(args.seed)
    chunks = []
    for _, images in tqdm(source.batches(256), total=-(-len(source) // 256), desc="read", unit="batch"):
        if not len(images):
            continue
        x = resize(list(images), do_normalize=False, do_color_quantize=False, return_tensors="np",
                   input_data_format="channels_last")["pixel_values"]  # (B, 3, H, W) in [0, 1]  # fmt: skip
        pixels = np.rint(x.transpose(0, 2, 3, 1) * 255).astype(np.uint8).reshape(len(x), -1, 3)
        take = min(per_image, pixels.shape[1])
        chunks.extend(p[rng.choice(p.shape[0], take, replace=False)] for p in pixels)
    pixels = np.concatenate(chunks)
    palette = fit_palette(pixels, args.k, seed=args.seed, grayscale=args.grayscale, progress=True,
                          sample_size=args.sample_pixels)  # fmt: skip
    path = save_palette(palette, args.out, size=args.size)
    inertia, entropy = palette_inertia(pixels, palette), unigram_entropy(pixels, palette)
    print(f"wrote {path}: k={len(palette)} colors from {len(pixels)} pixels of {len(source)} images, "
          f"{args.size}x{args.size}")  # fmt: skip
    print(f"inertia {inertia:.5f} (mean squared error in [-1, 1] units), unigram entropy {entropy:.4f} nats "
          f"= {entropy / np.log(2):.4f} bits per pixel")  # fmt: skip
    return 0


def _tokenize(args) -> int:
    from imagegpt.data import tokenize
    from imagegpt.processor import ImageGPTImageProcessor

    processor = ImageGPTImageProcessor.from_pretrained(args.palette)
    info = tokenize(args.data, processor, args.out, val_fraction=args.val_fraction, seed=args.seed,
                    augment=args.augment, overwrite=args.overwrite, progress=True)  # fmt: skip
    verb = "reused" if info.reused else "wrote"
    print(f"{verb} {info.path}: {info.train} train + {info.val} val images of {info.height}x{info.width} ids, "
          f"vocabulary {info.vocab_size} ({info.vocab_size - 1} colors + start token)"
          + (f", {info.skipped} unreadable skipped" if info.skipped else ""))  # fmt: skip
    return 0


def _train(args) -> int:
    import signal

    from imagegpt.distributed import env_rank
    from imagegpt.train_config import load_config, parse_overrides, resume_config
    from imagegpt.training import TrainingDiverged, train

    overrides = parse_overrides(args.set)
    for key in ("data", "out", "device"):
        if getattr(args, key) is not None:
            overrides.setdefault("out_dir" if key == "out" else key, getattr(args, key))
    if args.quiet:
        overrides["progress"] = False
    if args.resume:  # the run's own settings, with the --set changes a resume allows (printed, and logged by train)
        cfg, changes = resume_config(args.config, overrides)
        for key, (old, new) in changes.items():
            print(f"resume: {key} {old!r} -> {new!r}")
    else:
        cfg = load_config(args.config, overrides)
    try:
        s = train(cfg)
    except TrainingDiverged as e:
        print(f"imagegpt train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C (or one before train() set its handler): stopped at once
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a trip still pending would end the process by SIGINT (-2)
        print(f"imagegpt train: interrupted without saving; the last checkpoint in {cfg.out_dir}/checkpoints is "
              "intact (--resume continues from it)", file=sys.stderr)  # fmt: skip
        return 128 + signal.SIGINT
    if env_rank() == 0:
        val = f", val {s['val_loss']:.4f} nats = {s['val_bits_per_dim']:.4f} bits/dim" if s["val_loss"] == s[
            "val_loss"] else ""  # NaN when there is no validation split  # fmt: skip
        print(f"{s['stopped']} at step {s['steps']} ({s['steps_this_run']} this run) in {s['elapsed_s']:.1f} s, "
              f"{s['tokens_per_s']:.0f} tokens/s: train {s['train_loss']:.4f} nats = {s['train_bits_per_dim']:.4f} "
              f"bits/dim{val}; final model in {s['final_dir']}")  # fmt: skip
    if s["stopped"] == "signal" and s["signal"] is not None:
        if env_rank() == 0:
            print(f"interrupted by {signal.Signals(s['signal']).name}: continue with imagegpt train --out "
                  f"{cfg.out_dir} --resume", file=sys.stderr)  # fmt: skip
        return 128 + s["signal"]  # 130 for SIGINT, 143 for SIGTERM, as a shell reports a killed job
    return 0


COMMANDS = {"fit-palette": _fit_palette, "tokenize": _tokenize, "train": _train}
