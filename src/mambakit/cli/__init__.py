"""The command line: ``mambakit train | generate | serve | info | train-tokenizer | tokenize``
(also ``python -m mambakit``).

Bad input (missing or unreadable data, a data file smaller than one context, a missing, truncated or foreign
checkpoint, a ``--resume`` whose flags contradict the run, nonsense flag values) ends with one line on stderr
and exit code 2, before anything in the run directory is touched. Ctrl-C during training saves a checkpoint
and exits with code 130. Each subcommand is a module here (train, generate, serve, info, tokenize); the shared
flag types and the parser are :mod:`.flags`.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import MambakitError
from . import generate, info, serve, tokenize, train
from .flags import EXIT_BAD_INPUT, EXIT_INTERRUPTED, Parser

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "build_parser", "main"]


# ---------------------------------------------------------------------------------------------------- plot
def _add_plot_parser(sub) -> None:
    p = sub.add_parser("plot", help="write the docs' figures (HiPPO, S4D kernels, modes, SSD) as PNGs")
    p.add_argument("--out", default="docs/figures", help="output folder (default: docs/figures)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a quick look, not the docs' figures")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args) -> int:
    from ..figures import write_figures

    for path in write_figures(args.out, quick=args.quick):
        print(path)
    return 0


# ---------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    """The ``mambakit`` argument parser with every subcommand."""
    parser = Parser(prog="mambakit",
                    description="Mamba language models: train, generate, serve, inspect, plot.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train.add_parser(sub)
    generate.add_parser(sub)
    info.add_parser(sub)
    serve.add_parser(sub)
    tokenize.add_parsers(sub)
    _add_plot_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mambakit`` script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a bad flag (2, one line already printed)
        return int(exit_.code or 0)
    try:
        return args.func(args)
    except MambakitError as exc:
        print(f"mambakit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"mambakit {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `mambakit generate ... | head`
        return 0
    except OSError as exc:
        where = f" {exc.filename!r}" if getattr(exc, "filename", None) else ""
        print(f"mambakit {args.command}: error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
