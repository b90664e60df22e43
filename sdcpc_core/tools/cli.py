"""Shared pieces of the command-line tools: argparse value types that reject bad values in one
sentence, a parser whose errors are one sentence, and ``run_tool``, which turns ``UserError`` into
``PROG: error: ...`` on stderr and exit status 2 (no traceback for a user's mistake).

Model imports are deferred so that tools without a model (``sdcpc-synth`` and its worker
processes) start without loading torch.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Callable, Sequence

SIZE_MULTIPLE = 32  # network input sizes are multiples of this (sdcpc_core.models.sdcpc.SIZE_MULTIPLE)

_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """``"480x853"`` -> ``(480, 853)``; raises ``ValueError`` with a one-sentence message."""
    match = _SIZE.match(text)
    if not match or min(int(match.group(1)), int(match.group(2))) < SIZE_MULTIPLE:
        raise ValueError(f"size must be HEIGHTxWIDTH with both >= {SIZE_MULTIPLE}, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def image_size(text: str) -> tuple[int, int]:
    """argparse type for ``HEIGHTxWIDTH``."""
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def variant(text: str) -> str:
    """argparse type for a model variant name."""
    from ..models import list_models

    if text not in list_models():
        raise argparse.ArgumentTypeError(f"unknown model variant {text!r}; valid variants: {', '.join(list_models())}")
    return text


def at_least(minimum: int):
    """argparse type for an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value
    return parse


class ToolParser(argparse.ArgumentParser):
    """Argument errors as one sentence (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class UserError(Exception):
    """A mistake of the user (bad path, option or data): printed as one sentence, exit status 2."""


def run_tool(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
             argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and calls ``run(args)``; returns the exit status (2 for user errors)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or an argument error already printed
        return int(exit_.code or 0)
    try:
        return run(args)
    except UserError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
