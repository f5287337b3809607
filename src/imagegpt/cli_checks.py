"""Checks the ``imagegpt`` CLI runs before it loads a model or starts any work, and its help formatting.

Every option is validated up front (:func:`validate`), so nothing fails after minutes of sampling; inputs that
work but not as a user may expect get a one-line notice (:func:`image_notices`). Imports here stay light (no
torch): ``imagegpt --help`` and a rejected option return at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import warnings
from pathlib import Path

__all__ = ["HelpFormatter", "validate", "check_model", "expand_images", "check_output", "image_notices",
           "train_keys_help"]  # fmt: skip

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_SEED = 2**63 - 1
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' and examples' line breaks and appends "(default: X)" to every option that has a
    default and does not state it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS, []):
            return text
        if action.option_strings or action.nargs in ("?", "*"):
            return text + " (default: %(default)s)"
        return text


# dest -> (test, what it must be); applied to whichever options a subcommand has
_RULES = {
    **{k: (lambda v: v >= 1, "a positive integer") for k in (
        "batch_size", "n", "samples", "k", "size", "sample_pixels", "limit", "test_limit", "max_iter", "steps",
        "eval_interval", "val_size", "threads")},
    **{k: (lambda v: v >= 0, "an integer >= 0") for k in ("augment", "warmup", "patience", "probe_init", "rows",
                                                          "top_k")},
    "seed": (lambda v: 0 <= v <= MAX_SEED, f"an integer in [0, 2**63 - 1 = {MAX_SEED}]"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "val_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "test_fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    **{k: (lambda v: v > 0, "> 0") for k in ("lr", "max_minutes")},
    **{k: (lambda v: v >= 0, ">= 0") for k in ("min_lr", "weight_decay", "gen_weight")},
    "Cs": (lambda v: all(c > 0 for c in v), "positive numbers"),
}


def validate(args: argparse.Namespace) -> None:
    """Raise ValueError naming the first bad option of ``args`` (a parsed subcommand), before any work."""
    temperature = getattr(args, "temperature", None)
    if temperature is not None and not temperature > 0:
        hint = " (for the most likely color at every pixel, use --greedy)" if temperature == 0 else ""
        raise ValueError(f"--temperature must be > 0, got {temperature}{hint}")
    for dest, (ok, what) in _RULES.items():
        value = getattr(args, dest, None)
        if value is not None and not ok(value):
            raise ValueError(f"--{dest.replace('_', '-') if dest != 'Cs' else 'C'} must be {what}, got {value}")
    device = getattr(args, "device", None)
    if device is not None and not DEVICE.match(device):
        raise ValueError(f"--device {device!r} is not a device here: use auto, cpu, cuda, cuda:N or mps")
    if getattr(args, "dtype", "float32") != "float32" and getattr(args, "device", "auto") in ("cpu", "mps"):
        raise ValueError(f"--dtype {args.dtype} needs a CUDA device (half precision is slow or missing on CPUs)")


def check_model(name: str) -> None:
    """A clear error when ``name`` is neither a model directory, a packaged model, nor shaped like a Hub id."""
    from imagegpt.pretrained import packaged_model_dir, packaged_models

    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{name} is a directory without config.json: not a model directory")
        return
    if packaged_model_dir(name) is not None:
        return
    hub_like = re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not name.startswith((".", "/"))
    if hub_like and not path.exists():
        return  # resolved on the Hub (or its cache) at load time
    packaged = packaged_models()
    close = difflib.get_close_matches(name, packaged, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"no model {name!r}: not a model directory, a packaged model (packaged: "
                     f"{', '.join(packaged) or 'none'}) or a Hub id (owner/name){hint}")  # fmt: skip


def expand_images(paths: list[Path]) -> list[Path]:
    """Files as given; a directory becomes its image files (sorted, not recursive). Missing files are errors."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"{p} is a directory with no images in it ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif not p.is_file():
            raise ValueError(f"no such image: {p}")
        else:
            out.append(p)
    return out


def check_output(path: Path, image: bool = True) -> None:
    """``path`` can be written: an image file with an extension Pillow saves (when ``image``), and a directory
    we can create or write into."""
    if image:
        from PIL import Image

        Image.init()
        fmt = Image.registered_extensions().get(path.suffix.lower())
        if fmt is None or fmt not in Image.SAVE:
            raise ValueError(f"--out {path}: give an image file name ending in .png (or .jpg, .webp ...), not "
                             f"{path.suffix or 'no extension'!r}")  # fmt: skip
        if path.is_dir():
            raise ValueError(f"--out {path} is a directory; give a file name such as {path / 'grid.png'}")
    parent = (path.parent if image else path).absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--out {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out {path}: {parent} is not writable")


def image_notices(paths: list[Path], processor, limit: int = 5) -> list[str]:
    """One line per image whose size or colors the model's processor changes in a way worth knowing."""
    import numpy as np
    from PIL import Image

    h, w = processor.size["height"], processor.size["width"]
    clusters = processor.clusters
    gray_model = clusters is not None and bool(np.all(np.ptp(np.asarray(clusters), axis=1) == 0))
    notes: list[str] = []
    for p in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(p) as im:
                    if im.width * h != im.height * w:  # a plain rescale (64x64 -> 32x32) is no news
                        notes.append(f"notice: {p.name} is {im.width}x{im.height}: resized to {w}x{h} (aspect ratio "
                                     "not kept)")  # fmt: skip
                    if gray_model and im.mode not in ("1", "L", "LA", "I", "I;16", "F"):
                        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
                        if np.abs(rgb - rgb[..., :1]).max() > 8:
                            notes.append(f"notice: {p.name} is in colour and the model's palette is gray: it is "
                                         f"converted to the nearest of {len(clusters)} grays")  # fmt: skip
        except (Image.DecompressionBombError, Image.DecompressionBombWarning, OSError):
            continue  # unreadable or too large: reading it for the model says so, in one line
    if len(notes) > limit:
        notes = notes[:limit] + [f"notice: ... and {len(notes) - limit} more like these"]
    return notes


# Meanings of the TrainConfig fields whose definition carries no comment (a comment there wins).
_TRAIN_MEANINGS = {
    "out_dir": "run directory: log.jsonl, loss.png, checkpoints/, final/",
    "model": "a table of ImageGPTConfig fields (model.n_embd=...), or a model directory / Hub id to start from",
    "bert_mask_prob": "share of pixels masked per image (objective bert)",
    "batch_size": "images per rank and micro-step",
    "grad_accum": "micro-steps per optimizer step",
    "max_steps": "optimizer steps (updates) in all",
    "lr": "peak learning rate (AdamW), reached after warmup_steps",
    "warmup_steps": "steps of linear warmup from 0 to lr",
    "betas": "AdamW betas",
    "eval_interval": "steps between validation losses",
    "eval_batches": "validation batches per evaluation",
    "save_interval": "steps between checkpoints",
    "log_interval": "steps between log.jsonl records",
    "seed": "seeds weights, batches and dropout",
}


def train_keys_help() -> str:
    """Every ``--set`` key of ``imagegpt train``: its default and meaning, read from TrainConfig itself (the
    dataclass and its field comments), so the help never goes out of date."""
    import inspect

    from imagegpt.train_config import TrainConfig

    comments: dict[str, str] = {}
    try:
        for line in inspect.getsource(TrainConfig).splitlines():
            m = re.match(r"\s+(\w+):.*?#\s*(.+)$", line)
            if m:
                comments[m.group(1)] = m.group(2).strip()
    except OSError:  # no source (a frozen install): keys and defaults still listed
        pass
    lines = ["settable keys (--set KEY=VALUE, or in the TOML file), with their defaults:"]
    for f in dataclasses.fields(TrainConfig):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(value, dict):
            value = "{" + ", ".join(f"{k}={v}" for k, v in value.items()) + "}"
        text = f"  {f.name} = {value!r}" if isinstance(value, str) and not value.startswith("{") else \
            f"  {f.name} = {value}"  # fmt: skip
        lines.append(f"{text:<40} {comments.get(f.name) or _TRAIN_MEANINGS.get(f.name, '')}".rstrip())
    lines.append(f"{'  model.KEY = ...':<40} any ImageGPTConfig field (n_embd, n_head, n_layer, "
                 "activation_function ...)")  # fmt: skip
    return "\n".join(lines) + "\n"
