"""Temporal smoothing of per-frame class probabilities: the free baselines a temporal model must beat.

Any model's per-frame probabilities, taken in streaming order, can be made steadier without any
training. ``TemporalSmoother`` does it for one stream, one frame at a time (``step(probs) -> probs``,
``reset()`` when the stream restarts):

* ``ema:A``: exponential moving average ``p'_t = A p_t + (1 - A) p'_{t-1}``, ``0 < A <= 1``
  (``A = 1``: no smoothing); the first frame after a reset is passed through.
* ``window``: the mean of the probabilities of frame ``t`` and of the frames ``t - o`` for each
  reference offset ``o`` of the model (``t-9, t-6, t-3`` by default, so the filter sees exactly the
  frames SD-CPC attends to); near the start of a stream the earliest frame available stands in for
  the missing ones, as training clips do (reference index ``max(t - o, 0)``).
  ``window:9,6,3`` gives the offsets explicitly.
* ``none``: no smoothing (``parse_smoothing`` returns None).

Offsets count the frames the smoother is given, not time: on a stream that skips frames (a node
that drops frames while busy) ``t - 3`` is the third frame *processed* before this one.

The arithmetic is elementwise, so ``probs`` may be a torch tensor (any device, e.g. ``(1, K, h, w)``)
or a numpy array; every frame of a stream must have one shape. The smoother keeps its own copies,
so the caller may reuse its input buffer; the returned array is new for each frame and must not be
changed in place (the EMA keeps it as its state).

Where it runs: ``StreamingSegmenter(..., smoothing="ema:0.5")`` (``StreamingConfig.smoothing``)
smooths the softmax of the model's output logits at the network's 1/4 resolution before the label
map and confidence are taken; for SD-CPC models that is on top of the temporal logits. The
evaluator (``evaluate(..., smoothing=...)``, ``sdcpc-eval --smoothing``), ``sdcpc-bag eval
--smoothing`` and the segment node (parameter ``smoothing``) all go through it.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

__all__ = ["SMOOTHING_KINDS", "SMOOTHING_SYNTAX", "TemporalSmoother", "is_smoothing", "parse_smoothing"]

SMOOTHING_KINDS = ("none", "ema", "window")
SMOOTHING_SYNTAX = "none, ema:A with 0 < A <= 1 (e.g. ema:0.5), window, or window:O1,O2,... with offsets >= 1"


def _copy(array):
    """A copy of a torch tensor or numpy array that owns its memory."""
    clone = getattr(array, "clone", None)
    return clone() if clone is not None else array.copy()


class TemporalSmoother:
    """One stream's smoothing state (module docstring).

    Args:
        kind: ``"ema"`` or ``"window"``.
        factor: the EMA weight ``A`` of the newest frame, ``0 < A <= 1`` (``ema`` only).
        offsets: the window's frame offsets, distinct integers >= 1 (``window`` only).
    """

    def __init__(self, kind: str, factor: float = 0.5, offsets: Sequence[int] = (9, 6, 3)) -> None:
        if kind not in ("ema", "window"):
            raise ValueError(f"smoothing kind must be ema or window, got {kind!r}")
        if kind == "ema" and not (isinstance(factor, (int, float)) and not isinstance(factor, bool)
                                  and math.isfinite(factor) and 0 < factor <= 1):
            raise ValueError(f"the EMA factor must be a number in (0, 1], got {factor!r}")
        offsets = tuple(offsets)
        if kind == "window" and (not offsets or len(set(offsets)) != len(offsets) or not all(
                isinstance(o, int) and not isinstance(o, bool) and o >= 1 for o in offsets)):
            raise ValueError(f"the window offsets must be distinct integers >= 1, got {offsets!r}")
        self.kind = kind
        self.factor = float(factor)
        self.offsets = tuple(sorted(offsets, reverse=True))
        self._state = None  # ema: the last output
        self._history: deque = deque(maxlen=max(self.offsets) + 1 if kind == "window" else 1)

    @property
    def spec(self) -> str:
        """The text ``parse_smoothing`` reads back, e.g. ``ema:0.5`` or ``window:9,6,3``."""
        if self.kind == "ema":
            return f"ema:{self.factor:g}"
        return "window:" + ",".join(str(o) for o in self.offsets)

    def __repr__(self) -> str:
        return f"TemporalSmoother({self.spec!r})"

    def reset(self) -> None:
        """Forgets the stream: the next frame starts a new one."""
        self._state = None
        self._history.clear()

    def step(self, probs):
        """The smoothed probabilities of the next frame of the stream (same shape and type as ``probs``)."""
        if self.kind == "ema":
            if self._state is None or self.factor == 1.0:
                self._state = _copy(probs)
            else:
                self._state = probs * self.factor + self._state * (1.0 - self.factor)
            return self._state
        self._history.append(_copy(probs))
        last = len(self._history) - 1
        total = self._history[last]
        for offset in self.offsets:
            total = total + self._history[max(last - offset, 0)]
        return total / (len(self.offsets) + 1)


def parse_smoothing(text: str | None, reference_offsets: Sequence[int] = (9, 6, 3)) -> TemporalSmoother | None:
    """``"ema:0.5"``, ``"window"``, ``"window:9,6,3"`` -> a ``TemporalSmoother``; ``"none"``, ``""`` or None -> None.

    ``window`` without offsets uses ``reference_offsets`` (the model's). Anything else raises
    ``ValueError`` with one sentence naming the text and the accepted forms.
    """
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"smoothing must be a string ({SMOOTHING_SYNTAX}), got {text!r}")
    kind, sep, argument = text.strip().lower().partition(":")
    kind, argument = kind.strip(), argument.strip()
    if kind in ("", "none") and not sep:
        return None
    if kind == "ema" and not sep:
        raise ValueError(f"smoothing {text!r} needs its factor (e.g. ema:0.5); accepted: {SMOOTHING_SYNTAX}")
    if kind not in ("ema", "window"):
        raise ValueError(f"smoothing {text!r} is not known; accepted: {SMOOTHING_SYNTAX}")
    try:
        if kind == "ema":
            return TemporalSmoother("ema", factor=float(argument))
        if not sep:
            return TemporalSmoother("window", offsets=tuple(int(o) for o in reference_offsets))
        return TemporalSmoother("window", offsets=tuple(int(o) for o in argument.split(",")))
    except ValueError as error:
        detail = str(error) if "must" in str(error) else (
            "the factor is not a number" if kind == "ema" else "the offsets are not integers")
        raise ValueError(f"smoothing {text!r} is not valid: {detail}; accepted: {SMOOTHING_SYNTAX}") from None


def is_smoothing(text) -> bool:
    """Whether ``parse_smoothing`` accepts ``text`` (for validating settings that keep the text)."""
    try:
        parse_smoothing(text)
    except ValueError:
        return False
    return True
