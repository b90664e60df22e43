"""Shared pieces of the command-line tools: argparse value types that reject bad values in one
sentence, a parser whose errors are one sentence, ``run_tool``, which turns ``UserError`` into
``PROG: error: ...`` on stderr and exit status 2 (no traceback for a user's mistake), and
``open_weights``, the tools' way to any weights a user has (``sdcpc_core.weights.resolve``).

Model imports are deferred so that tools without a model (``sdcpc-synth`` and its worker
processes) start without loading torch.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

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


def smoothing(text: str) -> str:
    """argparse type for a temporal smoothing: ``none``, ``ema:A`` or ``window[:O1,O2,..]``
    (``sdcpc_core.eval.smoothing``)."""
    from ..eval.smoothing import parse_smoothing

    try:
        parse_smoothing(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text.strip().lower()


def at_least(minimum: int):
    """argparse type for an integer >= ``minimum``."""
    return in_range(minimum, None)


def in_range(low: int, high: int | None):
    """argparse type for an integer in ``low..high`` (no upper bound when ``high`` is None)."""
    accepted = f">= {low}" if high is None else f"in {low}..{high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {accepted}, got {text!r}")
        return value
    return parse


class ToolParser(argparse.ArgumentParser):
    """Argument errors as one sentence (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class UserError(Exception):
    """A mistake of the user (bad path, option or data): printed as one sentence, exit status 2."""


def check_output_folder(out: Path, overwrite: bool) -> None:
    """``UserError`` when ``out`` exists (unless ``overwrite``) or is not a folder."""
    if out.exists() and not overwrite:
        raise UserError(f"output folder {out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder")


def open_weights(path_or_name, class_hint: str = "--classes"):
    """``sdcpc_core.weights.resolve.open_model`` for a tool; ``UserError`` when the weights cannot be used. The
    tool prints ``loaded.message`` (``announce``) once its other checks passed, so that a refusal stays one line."""
    from ..weights.resolve import open_model

    try:
        return open_model(path_or_name, class_hint=class_hint)
    except (OSError, ValueError) as error:
        raise UserError(str(error)) from None


def announce(prog: str, loaded) -> None:
    """The sentence saying what ``open_weights`` loaded, on stderr (stdout keeps the tool's results)."""
    print(f"{prog}: {loaded.message}", file=sys.stderr)


def output_stem(loaded) -> Path:
    """Where a tool's default outputs for these weights go, without suffix: beside the file or folder, or in the
    working folder for a shipped name."""
    info = loaded.info
    if info.shipped:
        return Path(info.shipped)
    return info.path.parent / (info.path.name if info.path.is_dir() else info.path.stem)


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
