"""argparse value types shared by the command-line tools: each rejects bad values in one sentence."""
from __future__ import annotations

import argparse
import re

from ..models import list_models
from ..models.sdcpc import SIZE_MULTIPLE

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
