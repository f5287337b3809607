"""The ``imagegpt`` command line. The only place that parses argv and prints; the library logs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from imagegpt.cli_checks import HelpFormatter, check_model, check_output, expand_images, image_notices, validate
from imagegpt.cli_demo import COMMANDS as DEMO_COMMANDS
from imagegpt.cli_demo import add_parsers as add_demo_parsers
from imagegpt.cli_probe import COMMANDS as PROBE_COMMANDS
from imagegpt.cli_probe import add_parsers as add_probe_parsers
from imagegpt.cli_train import COMMANDS as TRAINING_COMMANDS
from imagegpt.cli_train import PIPELINE
from imagegpt.cli_train import add_parsers as add_training_parsers
from imagegpt.pretrained import DEFAULT_MODEL

EXAMPLES = f"""\
examples:
  imagegpt complete                                    # the packaged model completes its example images
  imagegpt init --preset tiny --out runs/tiny          # a small random-weight model + palette
  imagegpt info runs/tiny                              # its size and settings
  imagegpt score examples/*.png --model runs/tiny --out runs/score.png
  imagegpt sample --model runs/tiny --n 16 --seed 0 --out runs/samples.png
  imagegpt complete examples/*.png --model runs/tiny --rows 8 --samples 4 --top-k 40 --out runs/complete.png
  imagegpt info openai/imagegpt-small                  # Hub ids work where the Hub is reachable

{PIPELINE}
Models are directories in transformers' layout (config.json, model.safetensors, preprocessor_config.json) or
Hub ids; a model saved by transformers loads as is.
"""

# KV cache memory the CLI's automatic --batch-size may fill (all images at once for small models)
AUTO_BATCH_BYTES = 2**30

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
                       "configuration, parameter count and palette.", epilog="examples:\n  imagegpt info "
                       f"{DEFAULT_MODEL}\n  imagegpt info runs/tiny")  # fmt: skip
    s.add_argument("model", help="model directory, packaged name or Hub id")

    s = sub.add_parser(
        "init",
        help="create a model with random weights and a uniform palette",
        description="Write a new model directory (config.json, model.safetensors, preprocessor_config.json) "
        "with transformers' random initialization and a uniform RGB palette: a starting point for training, "
        "and a quick way to try the tools before a trained model is at hand. With --like, another model's "
        "configuration and palette instead: the from-scratch control of a fine-tuning comparison.",
        epilog="examples:\n  imagegpt init --preset tiny --out runs/tiny && imagegpt info runs/tiny\n"
        "  imagegpt init --like runs/fm/train/final --out runs/scratch   # a from-scratch baseline of that model",
    )
    s.add_argument("--out", required=True, type=Path, help="directory to create")
    s.add_argument("--preset", choices=[*TINY_PRESETS, "small", "medium", "large"],
                   help="model size: tiny (2x64, 16x16 px), mini (8x256, 32x32), or OpenAI's small/medium/large "
                   "(default: tiny)")
    s.add_argument("--like", metavar="MODEL", help="instead of a preset: the configuration and palette of this "
                   "model (directory, packaged name or Hub id) with fresh random weights, e.g. the untrained "
                   "baseline of a fine-tuning comparison")
    s.add_argument("--seed", type=int, default=0, help="seed of the random weights, 0 .. 2**63-1 (default 0)")
    s.add_argument("--force", action="store_true", help="overwrite a model already in --out")

    s = sub.add_parser(
        "score",
        help="likelihood of images under a model, and a picture of what it sees",
        description="Quantize images with the model's palette and report the model's negative log-likelihood "
        "per pixel (nats and bits per token; lower is better). With --out, write a PNG with one row per image: "
        "[image as given, resized | quantized to the palette].",
        epilog=f"examples:\n  imagegpt score                              # the {DEFAULT_MODEL} model on its examples\n"
        "  imagegpt score photos/ --model runs/tiny --out runs/score.png",
    )
    s.add_argument("images", nargs="*", type=Path, help="image files or folders of them (default: the example "
                   "images shipped with a packaged model)")  # fmt: skip
    s.add_argument("--model", default=DEFAULT_MODEL, help=f"model directory, packaged name or Hub id (default "
                   f"{DEFAULT_MODEL}, shipped with the package)")  # fmt: skip
    s.add_argument("--out", type=Path, help="write the PNG grid here (default: no picture)")
    s.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: cuda when available)")

    s = sub.add_parser(
        "sample",
        help="generate new images from nothing (unconditional samples)",
        description="Generate images pixel by pixel from the start token and write them as a PNG grid.",
        epilog="examples:\n  imagegpt sample --n 16 --seed 0 --out runs/samples.png\n"
        "  imagegpt sample --model runs/tiny --n 8 --temperature 0.9 --top-k 8 --out runs/tiny-samples.png",
    )
    s.add_argument("--model", default=DEFAULT_MODEL, help=f"model directory, packaged name or Hub id (default "
                   f"{DEFAULT_MODEL}, shipped with the package)")  # fmt: skip
    s.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    s.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG grid to write (default samples.png)")
    _sampling_args(s)

    s = sub.add_parser(
        "complete",
        help="keep the top rows of images and let the model paint the rest",
        description="Resize and quantize each image with the model's palette, keep its top --rows pixel rows and "
        "generate the rest --samples times. The PNG grid has one row per image: [input with the unknown part "
        "grayed out | the completions | the input quantized to the palette (the original the model sees)].",
        epilog="examples:\n  imagegpt complete --out runs/complete.png      # the packaged model on its examples\n"
        "  imagegpt complete photos/ --model runs/tiny --rows 8 --samples 4 --seed 1 --out runs/tiny.png",
    )
    s.add_argument("images", nargs="*", type=Path, help="image files or folders of them, any format/mode Pillow "
                   "reads (default: the example images shipped with a packaged model)")  # fmt: skip
    s.add_argument("--model", default=DEFAULT_MODEL, help=f"model directory, packaged name or Hub id (default "
                   f"{DEFAULT_MODEL}, shipped with the package)")  # fmt: skip
    s.add_argument("--rows", type=int, help="pixel rows to keep from the top, in the model's image size (default: "
                   "half the image)")  # fmt: skip
    s.add_argument("--samples", type=int, default=4, help="completions per image (default 4)")
    s.add_argument("--out", type=Path, default=Path("completions.png"), help="PNG grid (default completions.png)")
    _sampling_args(s)
    add_training_parsers(sub)
    add_probe_parsers(sub)
    add_demo_parsers(sub)
    for parser in sub.choices.values():  # every subcommand states its defaults
        parser.formatter_class = HelpFormatter
    return p


def _sampling_args(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature, > 0; < 1 is more "
                   "conservative (default 1; for the most likely color use --greedy)")  # fmt: skip
    g.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely colors (default: "
                   "all)")  # fmt: skip
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the smallest set of colors with "
                   "this total probability, in (0, 1] (default: off)")  # fmt: skip
    g.add_argument("--greedy", action="store_true", help="always take the most likely color (no sampling)")
    g.add_argument("--seed", type=int, default=0, help="random seed, 0 .. 2**63-1; same seed, batch size and device "
                   "give the same images (default 0)")  # fmt: skip
    g.add_argument("--batch-size", type=int, default=None, help="images generated at once (default: all of them, "
                   "up to 1 GiB of KV cache)")  # fmt: skip
    g.add_argument("--threads", type=int, default=None, help="CPU threads while decoding (default: 1 for small "
                   "models, else torch's default)")  # fmt: skip
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: cuda when available)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model precision; half precision needs CUDA")  # fmt: skip
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        _check_args(args)
        commands = {"info": _info, "init": _init, "score": _score, "sample": _sample, "complete": _complete,
                    **TRAINING_COMMANDS, **PROBE_COMMANDS, **DEMO_COMMANDS}  # fmt: skip
        return commands[args.command](args)
    except (ValueError, OSError) as e:  # our errors are written to be read: one line, no traceback
        if args.verbose:
            raise
        print(f"imagegpt {args.command}: error: {e}", file=sys.stderr)
        return 2


def _check_args(args) -> None:
    """Everything that can be checked before a model is loaded or any work starts."""
    validate(args)
    if args.command == "train":  # cli_train checks its own settings (TrainConfig)
        return
    model = getattr(args, "model", None)
    if isinstance(model, str):
        check_model(model)
    if getattr(args, "images", None):
        args.images = expand_images(args.images)
    out = getattr(args, "out", None)
    if out is not None:
        check_output(Path(out), image=args.command in ("score", "sample", "complete"))


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
    if args.like is not None:  # a from-scratch twin of a model: its shapes and palette, fresh weights
        if args.preset is not None:
            raise ValueError("pass either --preset or --like, not both")
        config = ImageGPTConfig.from_pretrained(args.like)
        processor = ImageGPTImageProcessor.from_pretrained(args.like)
        what = f"the configuration and palette of {args.like}"
    else:
        preset = args.preset or "tiny"
        if preset in TINY_PRESETS:
            spec = dict(TINY_PRESETS[preset])
            side, levels = spec.pop("image_size"), spec.pop("palette_levels")
        else:
            spec, side, levels = ImageGPTConfig.preset(preset).to_dict(), 32, 8
        clusters = uniform_palette(levels)
        config = ImageGPTConfig(**{**spec, "vocab_size": len(clusters) + 1, "n_positions": side * side,
                                   "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})  # fmt: skip
        processor = ImageGPTImageProcessor(clusters=clusters, size={"height": side, "width": side})
        what = f"{side}x{side} pixels, {len(clusters)}-color palette"
    torch.manual_seed(args.seed)
    model = ImageGPTForCausalImageModeling(config)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    print(f"wrote {args.out}: {model.num_parameters() / 1e6:.2f} M parameters, {what} "
          f"(random weights, seed {args.seed}: train before expecting pictures)")  # fmt: skip
    return 0


def _default_images(args) -> None:
    """No images given: the examples shipped with a packaged model."""
    if not args.images:
        from imagegpt.pretrained import packaged_examples, packaged_model_dir

        if packaged_model_dir(args.model) is None:
            raise ValueError(f"give image files ({args.model} is not a packaged model with examples)")
        args.images = packaged_examples(args.model)


def _notify(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def _score(args) -> int:
    from imagegpt.processor import ImageGPTImageProcessor

    _default_images(args)
    proc = ImageGPTImageProcessor.from_pretrained(args.model)
    _notify(image_notices(args.images, proc))
    import torch

    from imagegpt import ImageGPTForCausalImageModeling
    from imagegpt.metrics import nats_to_bits, nll_per_sequence
    from imagegpt.viz import image_grid

    device = _device(args.device)
    model = ImageGPTForCausalImageModeling.from_pretrained(args.model).to(device).eval()
    pixels = proc.size["height"] * proc.size["width"]
    if pixels > model.config.n_positions:
        raise ValueError(f"{proc.size['height']}x{proc.size['width']} images need {pixels} positions; "
                         f"the model has {model.config.n_positions}")  # fmt: skip
    ids = proc(args.images, return_tensors="pt", add_start_token=True)["input_ids"]
    with torch.inference_mode():
        nll = nll_per_sequence(model, ids.to(device), batch_size=args.batch_size, progress=sys.stderr.isatty()).cpu()
    width = max(len(p.name) for p in args.images)
    print(f"{'image':<{width}}  nats/token  bits/token")
    for path, value in zip(args.images, nll.tolist()):
        print(f"{path.name:<{width}}  {value:10.4f}  {nats_to_bits(value):10.4f}")
    print(f"{'mean':<{width}}  {nll.mean().item():10.4f}  {nats_to_bits(nll.mean().item()):10.4f}")
    if args.out is not None:
        quantized = proc.decode(ids)
        originals = proc(args.images, do_normalize=False, do_color_quantize=False, return_tensors="np")
        raw = (originals["pixel_values"].transpose(0, 2, 3, 1) * 255).round().clip(0, 255).astype("uint8")
        _save(image_grid([[r, q] for r, q in zip(raw, quantized)], header=["given (resized)", "quantized"]),
              args.out)  # fmt: skip
        print(f"wrote {args.out}")
    return 0


def _load_for_sampling(args, n_images: int, image_paths: list[Path] | None = None, rows: int | None = None):
    """Check the settings against the model's config and palette, then load it: (model, processor, options)."""
    from imagegpt import ImageGPTConfig
    from imagegpt.processor import ImageGPTImageProcessor

    config = ImageGPTConfig.from_pretrained(args.model)
    proc = ImageGPTImageProcessor.from_pretrained(args.model)
    colors, height = config.vocab_size - 1, proc.size["height"]
    if rows is not None and not 0 <= rows < height:
        raise ValueError(f"--rows must be in [0, {height - 1}] for this model's {height}-row images, got {rows}")
    if args.top_k is not None and args.top_k > colors:
        _notify([f"notice: --top-k {args.top_k} is more than the model's {colors} colors: no top-k filtering"])
    if image_paths:
        _notify(image_notices(image_paths, proc))
    batch_size = args.batch_size
    if batch_size is None:  # everything at once unless the KV cache would pass AUTO_BATCH_BYTES
        per_row = 2 * config.n_layer * config.n_positions * config.n_embd * 4
        batch_size = max(1, min(n_images, AUTO_BATCH_BYTES // per_row))
    import torch

    from imagegpt import ImageGPTForCausalImageModeling

    device = _device(args.device)
    dtype = getattr(torch, args.dtype)
    if dtype != torch.float32 and not device.startswith("cuda"):
        raise ValueError(f"--dtype {args.dtype} needs a CUDA device (half precision is slow or missing on CPUs)")
    model = ImageGPTForCausalImageModeling.from_pretrained(args.model).to(device=device, dtype=dtype).eval()
    options = dict(batch_size=batch_size, do_sample=not args.greedy, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed, progress=not args.quiet,
                   num_threads=args.threads)  # fmt: skip
    return model, proc, options


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu")
    return name


def grid_columns(n: int) -> int:
    """Columns of a grid of ``n`` images: a square for square counts, else a divisor of n near its square root
    (no empty cells) when one gives rows at most twice as long as they are many, else ceil(sqrt(n))."""
    import math

    cols = math.ceil(math.sqrt(n))
    return next((d for d in range(cols, 2 * cols + 1) if n % d == 0 and n // d <= d), cols)


def _sample(args) -> int:
    import time

    from imagegpt.completion import sample
    from imagegpt.viz import image_grid

    model, proc, options = _load_for_sampling(args, args.n)
    start = time.perf_counter()
    result = sample(model, proc, args.n, **options)
    seconds = time.perf_counter() - start
    cols = grid_columns(args.n)
    images = list(result.images)
    _save(image_grid([images[i : i + cols] for i in range(0, len(images), cols)]), args.out)
    print(f"wrote {args.out}: {args.n} samples in {seconds:.1f} s ({args.n / seconds:.2f} images/s)")
    return 0


def _complete(args) -> int:
    import time

    from imagegpt.completion import complete
    from imagegpt.viz import image_grid

    _default_images(args)
    model, proc, options = _load_for_sampling(args, len(args.images) * args.samples, args.images, args.rows)
    height = proc.size["height"]
    rows = height // 2 if args.rows is None else args.rows
    start = time.perf_counter()
    result = complete(model, proc, [str(p) for p in args.images], rows, args.samples, **options)
    seconds = time.perf_counter() - start
    grid = [[prompt, *done, original] for prompt, done, original in
            zip(result.prompts, result.images, result.originals)]  # fmt: skip
    header = [f"top {rows} rows given", *(f"sample {i + 1}" for i in range(args.samples)), "quantized input"]
    _save(image_grid(grid, header=header), args.out)
    print(f"wrote {args.out}: {len(args.images)} images x {args.samples} completions from the top {rows} of "
          f"{height} rows in {seconds:.1f} s")  # fmt: skip
    return 0


def _save(image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
