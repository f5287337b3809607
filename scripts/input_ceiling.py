"""How much do the model's inputs allow? A small CNN trained from scratch on three versions of the same images.

docs/results.md's Fashion-MNIST models see 14x14 images in 8 grays (196 tokens, the price of pretraining on a CPU).
This script measures what that tokenization costs any classifier, with no pretraining involved: the same CNN,
trained on the labeled images with the same split and budget, on
  raw     the images as stored (28x28 for the MNISTs), 256 grays;
  resized the model's size (14x14), not quantized;
  tokens  the model's size and palette: exactly the pixels the model reads.
The gap raw - tokens is what the resize and palette cost; tokens is a rough ceiling for any classifier of the
tokens at this amount of training (not a bound: a better classifier could pass it).

Usage (the run of docs/results.md; about 6 minutes on 2 cores):
  python scripts/input_ceiling.py --train $F/train-images-idx3-ubyte.gz $F/train-labels-idx1-ubyte.gz \
      --test $F/t10k-images-idx3-ubyte.gz $F/t10k-labels-idx1-ubyte.gz --palette runs/fm/long/palette \
      --out runs/fm/input-ceiling.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imagegpt.atomic import atomic_write_text
from imagegpt.datasets import open_source, read_labels
from imagegpt.processor import ImageGPTImageProcessor, color_quantize


def gray_versions(images: str, labels: str, processor: ImageGPTImageProcessor, limit: int | None = None
                  ) -> tuple[dict[str, np.ndarray], np.ndarray]:  # fmt: skip
    """The three versions of the images as (N, 1, H, W) float32 in [-1, 1] (the mean of the channels), and labels.

    The images are read and resized once; the tokens quantize those resized pixels with the processor's own
    ``color_quantize``, so they are the ids ``load_labeled`` gives the model."""
    source, y = open_source(images), read_labels(labels)
    if len(y) != len(source):
        raise ValueError(f"{labels} holds {len(y)} labels for {len(source)} images in {images}")
    n = len(source) if limit is None else min(limit, len(source))
    index, images_u8 = source.read(0, n)  # (N, H, W, C) uint8; folders skip unreadable files, so keep ``index``
    resized = processor(list(images_u8), return_tensors="np", do_color_quantize=False,
                        input_data_format="channels_last")["pixel_values"]  # (N, 3, h, w) in [-1, 1]
    ids = color_quantize(resized.transpose(0, 2, 3, 1), processor.clusters, processor.chunk_size)  # (N, h, w)
    gray = np.asarray(processor.clusters, dtype=np.float32).mean(1)  # each palette entry's gray level
    raw = np.asarray(images_u8, dtype=np.float32).mean(-1) / 127.5 - 1  # (N, H, W)
    out = {"raw": raw, "resized": resized.mean(1), "tokens": gray[ids]}
    return {k: v[:, None].astype(np.float32) for k, v in out.items()}, y[index]


def small_cnn(side: int, classes: int) -> nn.Module:
    """Two 3x3 convolutions, each followed by a 2x2 pooling, and one hidden layer (the textbook Fashion-MNIST
    CNN, small enough for a few minutes of CPU): 0.09 M parameters at 14x14, 0.42 M at 28x28."""
    flat = 64 * (side // 4) ** 2
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, side/2, side/2)
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, side/4, side/4)
                         nn.Flatten(), nn.Dropout(0.3), nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, classes))


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).float().mean())


def train_and_test(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *, epochs: int,
                   val_size: int, seed: int, batch_size: int = 128, lr: float = 1e-3) -> dict:
    """Adam, ``epochs`` passes; the epoch with the best accuracy on ``val_size`` held-out images is tested."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    val, train = order[:val_size], order[val_size:]
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    xv, yv = torch.from_numpy(x[val]), torch.from_numpy(y[val])
    model = small_cnn(x.shape[-1], int(max(y.max(), y_test.max())) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, history, t0 = -1.0, None, [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.from_numpy(rng.permutation(len(xt))).split(batch_size):
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc = _accuracy(model, xv, yv)
        history.append({"epoch": epoch, "val_acc": acc})
        logging.info("%dx%d epoch %d: val acc %.4f (%.0f s)", x.shape[-2], x.shape[-1], epoch, acc,
                     time.perf_counter() - t0)
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    best_epoch = max(history, key=lambda r: r["val_acc"])["epoch"]
    test = _accuracy(model, torch.from_numpy(x_test), torch.from_numpy(y_test))
    return {"side": int(x.shape[-1]), "best_epoch": best_epoch, "val_acc": best, "test_acc": test,
            "seconds": round(time.perf_counter() - t0, 1), "history": history}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--train", nargs=2, required=True, metavar=("IMAGES", "LABELS"), help="IDX/.npy/folder + labels")
    ap.add_argument("--test", nargs=2, required=True, metavar=("IMAGES", "LABELS"))
    ap.add_argument("--palette", required=True, help="a model or palette directory (its preprocessor_config.json)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--val-size", type=int, default=5000, help="training images held out to pick the epoch")
    ap.add_argument("--limit", type=int, help="use the first N training images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="a .json of the results")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # a line per epoch: minutes of work
    processor = ImageGPTImageProcessor.from_pretrained(args.palette)
    if processor.clusters is None:
        ap.error(f"{args.palette} has no palette (clusters) in its preprocessor_config.json")
    train, y = gray_versions(*args.train, processor, args.limit)
    test, y_test = gray_versions(*args.test, processor)
    if args.val_size >= len(y):
        ap.error(f"--val-size {args.val_size} leaves no training images of {len(y)}")
    rows = {name: train_and_test(train[name], y, test[name], y_test, epochs=args.epochs, val_size=args.val_size,
                                 seed=args.seed) for name in ("raw", "resized", "tokens")}  # fmt: skip
    result = {"train_images": len(y) - args.val_size, "val_images": args.val_size, "test_images": len(y_test),
              "epochs": args.epochs, "seed": args.seed, "threads": torch.get_num_threads(),
              "palette_colors": len(processor.clusters), "rows": rows}  # fmt: skip
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")  # makes the folder; a crash keeps the old file
    print("| input | size | best epoch | val acc | test acc | seconds |\n|---|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['side']}x{r['side']} | {r['best_epoch']} | {r['val_acc']:.4f} | {r['test_acc']:.4f} "
              f"| {r['seconds']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
