"""The ``demo`` command of the ``imagegpt`` CLI: the local web demo (:mod:`imagegpt.demo`, Gradio).

:func:`add_parsers` adds it to an argparse subparsers object; :data:`COMMANDS` maps its name to its handler
(``args`` -> exit code), as :mod:`imagegpt.cli_train` does.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parsers", "COMMANDS"]

EXAMPLE = """\
examples:
  imagegpt demo                                  # the packaged models, on http://127.0.0.1:7860
  imagegpt demo --model runs/tiny --port 8000    # also a model directory of yours
Needs Gradio: pip install 'imagegpt[demo]'. Stop it with Ctrl+C.
"""


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "yes", "no", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("true", "yes", "1")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``demo`` to ``sub`` (from ``parser.add_subparsers()``)."""
    s = sub.add_parser("demo", help="a local web demo: completions streamed row by row, samples, surprise maps",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLE,
                       description="Serve a web page (Gradio) where a model completes images row by row as you "
                       "watch, draws unconditional samples, and shows how surprised it is by each pixel of an "
                       "image. Every packaged model is offered; --model adds directories (or names) of your own.")
    s.add_argument("--model", action="append", default=[], metavar="NAME_OR_PATH",
                   help="model directory or packaged name to offer first (repeatable; default: the packaged models)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                   "0.0.0.0 opens it to your network)")  # fmt: skip
    s.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    s.add_argument("--share", type=_bool, default=False, metavar="{true,false}",
                   help="ask Gradio for a public share link (default false; needs internet access)")
    s.add_argument("--concurrency", type=int, default=2, help="model jobs run at once, for all users together; "
                   "the others wait in the queue (default 2)")  # fmt: skip
    s.add_argument("--threads", type=int, default=1, help="CPU threads per job (default 1: with several jobs "
                   "at once, more threads than cores slows every one of them down)")  # fmt: skip
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")


def _demo(args) -> int:
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.concurrency < 1 or args.threads < 1:
        raise ValueError("--concurrency and --threads must be at least 1")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("imagegpt demo: error: the demo needs Gradio; install it with: pip install 'imagegpt[demo]'",
              file=sys.stderr)
        return 2
    import torch

    from imagegpt.demo import launch

    torch.set_num_threads(args.threads)
    print(f"imagegpt demo: serving on http://{args.host}:{args.port} (Ctrl+C to stop)", flush=True)
    launch(args.model, host=args.host, port=args.port, share=args.share, concurrency=args.concurrency,
           device=args.device)  # fmt: skip
    return 0


COMMANDS = {"demo": _demo}
