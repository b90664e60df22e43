"""The reference-frame policy of the streaming runtime: which cached frames a new frame attends to.

``ReferenceCache`` keeps the static-branch outputs (``FrameCache``) of recent frames keyed by
their integer nanosecond stamps, picks for each reference offset the buffered frame nearest to
``stamp - offset x period``, and bounds its memory by time and by count.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..models.sdcpc import FrameCache
from .config import StreamingConfig

NS_PER_S = 1_000_000_000


class ReferenceCache:
    """Ring buffer of ``FrameCache`` entries (logits dropped) keyed by integer nanosecond stamps.

    ``select_stamps(stamp)`` gives, for each offset (farthest first), the buffered stamp nearest to
    ``stamp - offset x period`` (the older one on a tie). At a cold start this yields the earliest
    frames available with duplicates, as training clips do (reference index ``max(t - offset, 0)``);
    with an empty buffer, the current frame itself is every reference.

    Memory is bounded twice, whatever the input rate:

    * time: after adding a frame at ``now``, an entry is dropped once its successor is at least as
      near to every time a future frame can ask for (all later than ``now - max(offsets) x period``),
      i.e. when the midpoint between the entry and its successor is ``<= now - max(offsets) x period``.
      What stays spans ``max(offsets) x period`` plus at most one older frame;
    * count: at most ``max_entries`` entries; beyond that the inner entry whose neighbours are closest
      together is dropped (the newest and the oldest stay), which thins a fast stream to about even
      spacing instead of forgetting the far references.
    """

    def __init__(self, offsets: Sequence[int] = (9, 6, 3), period_s: float = 1.0 / 30.0,
                 max_entries: int | None = None) -> None:
        config = StreamingConfig(reference_offsets=tuple(offsets), frame_period_s=period_s, max_entries=max_entries)
        self.offsets: tuple[int, ...] = config.reference_offsets
        self.period_ns = round(period_s * NS_PER_S)
        self.max_entries = config.entries_limit
        self._stamps: list[int] = []  # ascending
        self._entries: dict[int, FrameCache] = {}

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def stamps(self) -> list[int]:
        """Buffered stamps, oldest first."""
        return list(self._stamps)

    @property
    def span_ns(self) -> int:
        """How far back a reference can be asked for: ``max(offsets) x period``."""
        return max(self.offsets) * self.period_ns

    def __getitem__(self, stamp_ns: int) -> FrameCache:
        return self._entries[stamp_ns]

    def clear(self) -> None:
        self._stamps.clear()
        self._entries.clear()

    def add(self, stamp_ns: int, cache: FrameCache) -> None:
        """Stores ``cache.without_logits()`` at ``stamp_ns`` (newer than every buffered stamp), then evicts."""
        if self._stamps and stamp_ns <= self._stamps[-1]:
            raise ValueError(f"ReferenceCache.add needs increasing stamps: got {stamp_ns} ns after "
                             f"{self._stamps[-1]} ns (clear the buffer when time goes backwards)")
        self._stamps.append(stamp_ns)
        self._entries[stamp_ns] = cache.without_logits()
        self._evict()

    def _drop(self, index: int) -> None:
        del self._entries[self._stamps.pop(index)]

    def _evict(self) -> None:
        horizon = self._stamps[-1] - self.span_ns  # every future target time is later than this
        while len(self._stamps) >= 2 and self._stamps[0] + self._stamps[1] <= 2 * horizon:
            self._drop(0)
        while len(self._stamps) > self.max_entries:
            if len(self._stamps) < 3:
                self._drop(0)
                continue
            s = self._stamps
            inner = min(range(1, len(s) - 1), key=lambda i: (s[i + 1] - s[i - 1], i))
            self._drop(inner)

    def nearest(self, target_ns: int) -> int:
        """Buffered stamp nearest to ``target_ns`` (the older one on a tie); the buffer must not be empty."""
        return min(self._stamps, key=lambda s: (abs(s - target_ns), s))

    def select_stamps(self, stamp_ns: int) -> list[int]:
        """Reference stamps for a frame at ``stamp_ns``, farthest offset first; ``[stamp_ns] * n`` when empty."""
        if not self._stamps:
            return [stamp_ns] * len(self.offsets)
        return [self.nearest(stamp_ns - offset * self.period_ns) for offset in self.offsets]

    def select(self, stamp_ns: int, current: FrameCache | None = None) -> list[FrameCache]:
        """Reference entries for a frame at ``stamp_ns`` (oldest first); ``current`` is used when empty."""
        if not self._stamps:
            if current is None:
                raise ValueError("the reference buffer is empty: pass the current frame's cache as current")
            return [current.without_logits()] * len(self.offsets)
        return [self._entries[s] for s in self.select_stamps(stamp_ns)]


__all__ = ["NS_PER_S", "ReferenceCache"]
