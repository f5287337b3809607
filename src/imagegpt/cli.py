"""The ``imagegpt`` command line. The only place that parses argv and prints; the library logs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  imagegpt init --preset tiny --out runs/tiny          # a small random-weight model + palette
  imagegpt info runs/tiny                              # its size and settings
  imagegpt score --model runs/tiny examples/*.png --out runs/score.png
  imagegpt info openai/imagegpt-small                  # Hub ids work where the Hub is reachable

Models are directories in transformers' layout (config.json, model.safetensors, preprocessor_config.json) or
Hub ids; a model saved by transformers loads as is.
"""

# Small shapes for trying things out on a CPU; the released sizes come from imagegpt.PRESETS.
TINY_PRESETS = {
    "tiny": dict(n_embd=64, n_head=4, n_layer=2, image_size=16, palette_levels=4),
    "mini": dict(n_embd=256, n_head=8, n_layer=8, image_size=32, palette_levels=8),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imagegpt",
        description="ImageGPT (iGPT): autoregressive models over color-quantized pixels.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("info", help="show a model's configuration and size", description="Show a model's "
                       "configuration, parameter count and palette.")  # fmt: skip
    s.add_argument("model", help="model directory or Hub id")

    s = sub.add_parser(
        "init",
        help="create a model with random weights and a uniform palette",
        description="Write a new model directory (config.json, model.safetensors, preprocessor_config.json) "
        "with transformers' random initialization and a uniform RGB palette: a starting point for training, "
        "and a quick way to try the tools before a trained model is at hand.",
    )
    s.add_argument("--out", required=True, type=Path, help="directory to create")
    s.add_argument("--preset", default="tiny", choices=[*TINY_PRESETS, "small", "medium", "large"],
                   help="model size: tiny (2x64, 16x16 px), mini (8x256, 32x32), or OpenAI's small/medium/large")
    s.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    s.add_argument("--force", action="store_true", help="overwrite a model already in --out")

    s = sub.add_parser(
        "score",
        help="likelihood of images under a model, and a picture of what it sees",
        description="Quantize images with the model's palette and report the model's negative log-likelihood "
        "per pixel (nats and bits per token; lower is better). With --out, write a PNG with one row per image: "
        "[image as given, resized | quantized to the palette].",
    )
    s.add_argument("images", nargs="+", type=Path, help="image files in any format/mode Pillow reads")
    s.add_argument("--model", required=True, help="model directory or Hub id")
    s.add_argument("--out", type=Path, help="write the PNG grid here")
    s.add_argument("--batch-size", type=int, default=16)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return {"info": _info, "init": _init, "score": _score}[args.command](args)
    except (ValueError, OSError) as e:  # our errors are written to be read: one line, no traceback
        if args.verbose:
            raise
        print(f"imagegpt {args.command}: error: {e}", file=sys.stderr)
        return 2


def _info(args) -> int:
    import torch

    from imagegpt import ImageGPTConfig, ImageGPTForCausalImageModeling
    from imagegpt.processor import ImageGPTImageProcessor

    config = ImageGPTConfig.from_pretrained(args.model)
    with torch.device("meta"):  # shapes only: no memory, no time
        params = ImageGPTForCausalImageModeling(config).num_parameters()
    print(f"model        {args.model}")
    print(f"layers       {config.n_layer} x {config.n_embd} wide, {config.n_head} heads, MLP {config.inner_dim}, "
          f"{config.activation_function}")  # fmt: skip
    print(f"sequence     {config.n_positions} positions, vocabulary {config.vocab_size} "
          f"({config.vocab_size - 1} colors + start token {config.vocab_size - 1})")  # fmt: skip
    print(f"parameters   ~{params / 1e6:.2f} M (with the LM head)")
    try:
        proc = ImageGPTImageProcessor.from_pretrained(args.model)
        size = proc.size
        n = 0 if proc.clusters is None else len(proc.clusters)
        print(f"palette      {n} colors, images resized to {size['height']}x{size['width']}")
    except OSError:
        print("palette      none (no preprocessor_config.json)")
    return 0


def _init(args) -> int:
    import torch

    from imagegpt import ImageGPTConfig, ImageGPTForCausalImageModeling
    from imagegpt.palette import uniform_palette
    from imagegpt.processor import ImageGPTImageProcessor

    if (args.out / "config.json").exists() and not args.force:
        raise FileExistsError(f"{args.out} already holds a model; pass --force to overwrite it")
    if args.preset in TINY_PRESETS:
        spec = dict(TINY_PRESETS[args.preset])
        side, levels = spec.pop("image_size"), spec.pop("palette_levels")
    else:
        spec, side, levels = ImageGPTConfig.preset(args.preset).to_dict(), 32, 8
    clusters = uniform_palette(levels)
    config = ImageGPTConfig(**{**spec, "vocab_size": len(clusters) + 1, "n_positions": side * side,
                               "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})  # fmt: skip
    torch.manual_seed(args.seed)
    model = ImageGPTForCausalImageModeling(config)
    model.save_pretrained(args.out)
    ImageGPTImageProcessor(clusters=clusters, size={"height": side, "width": side}).save_pretrained(args.out)
    print(f"wrote {args.out}: {model.num_parameters() / 1e6:.2f} M parameters, {side}x{side} pixels, "
          f"{len(clusters)}-color palette (random weights: train before expecting pictures)")  # fmt: skip
    return 0


def _score(args) -> int:
    import torch

    from imagegpt import ImageGPTForCausalImageModeling
    from imagegpt.metrics import nats_to_bits, nll_per_sequence
    from imagegpt.processor import ImageGPTImageProcessor
    from imagegpt.viz import image_grid

    model = ImageGPTForCausalImageModeling.from_pretrained(args.model)
    proc = ImageGPTImageProcessor.from_pretrained(args.model)
    pixels = proc.size["height"] * proc.size["width"]
    if pixels > model.config.n_positions:
        raise ValueError(f"{proc.size['height']}x{proc.size['width']} images need {pixels} positions; "
                         f"the model has {model.config.n_positions}")  # fmt: skip
    ids = proc(args.images, return_tensors="pt", add_start_token=True)["input_ids"]
    with torch.inference_mode():
        nll = nll_per_sequence(model, ids, batch_size=args.batch_size, progress=sys.stderr.isatty())
    width = max(len(p.name) for p in args.images)
    print(f"{'image':<{width}}  nats/token  bits/token")
    for path, value in zip(args.images, nll.tolist()):
        print(f"{path.name:<{width}}  {value:10.4f}  {nats_to_bits(value):10.4f}")
    print(f"{'mean':<{width}}  {nll.mean().item():10.4f}  {nats_to_bits(nll.mean().item()):10.4f}")
    if args.out is not None:
        quantized = proc.decode(ids)
        originals = proc(args.images, do_normalize=False, do_color_quantize=False, return_tensors="np")
        raw = (originals["pixel_values"].transpose(0, 2, 3, 1) * 255).round().clip(0, 255).astype("uint8")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        image_grid([[r, q] for r, q in zip(raw, quantized)]).save(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
