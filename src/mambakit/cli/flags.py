"""What every subcommand shares: the exit codes, the one-line argparse parser, flag value types, the log."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from .._checks import check_int
from ..errors import ConfigError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """A flag type: the text as an integer >= ``minimum``, judged (and worded) by :func:`check_int`."""

    def parse(text: str) -> int:
        try:
            value: object = int(text)
        except ValueError:
            value = text  # not an integer: check_int refuses it with the same words
        try:
            return check_int("value", value, minimum)
        except ConfigError as e:  # argparse adds "argument --flag: "; the user sees what they typed
            expected = str(e).removeprefix("value: ").rsplit(", got ", 1)[0]
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def finite_float(text: str) -> float:
    """A flag type: the text as a finite float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def log(message: str) -> None:
    """A progress or summary line on stderr (stdout carries generated text)."""
    print(message, file=sys.stderr, flush=True)
