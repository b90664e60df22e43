"""The one check of option names: every name given must be one of the valid ones."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def check_names(given: Iterable, valid: Iterable, what: str, *, valid_label: str | None = None, context: str = "",
                error: type[Exception] = ValueError, show: Callable[[Any], str] = str) -> None:
    """Raises ``error`` naming every name of ``given`` that is not in ``valid`` (sorted), and the valid ones.

    The message reads ``"{context}unknown {what}(s) a, b; {valid_label}: x, y, z"``; ``valid_label``
    defaults to ``"valid {what}s"``, and ``show`` writes each unknown name (``str``).
    """
    valid = list(valid)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        label = valid_label if valid_label is not None else f"valid {what}s"
        raise error(f"{context}unknown {what}(s) {', '.join(map(show, unknown))}; "
                    f"{label}: {', '.join(map(str, valid))}")


__all__ = ["check_names"]
