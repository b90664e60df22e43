"""Counters of the segment node and their ``diagnostic_msgs/DiagnosticStatus`` (published at 1 Hz).

``NodeStats`` is written from the subscription callbacks and the inference worker and read by the
diagnostics timer; every method takes one lock. It also decides what gets logged: the first bad
message (or error) of each kind, so a broken camera does not flood the log while every occurrence
is still counted.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from .image_codec import ERROR_KINDS

LATENCY_WINDOW = 300  # latencies kept for the percentiles: the newest frames (10 s at 30 Hz)
MISSING_GAP = 1.5  # a stamp gap of more than this many frame periods means frames were lost upstream


@dataclass
class StatsSnapshot:
    """One diagnostics period: rates since the previous snapshot, totals since start-up."""

    input_hz: float
    processed_hz: float
    received: int
    processed: int
    dropped: int
    latency_p50_ms: float  # stamp to publish, over the last LATENCY_WINDOW processed frames (nan: none yet)
    latency_p95_ms: float
    resets: int
    last_reset: str  # reason of the last reference-buffer reset ("" if none)
    errors: int
    bad_messages: dict[str, int] = field(default_factory=dict)  # kind -> count (every ERROR_KINDS key)
    new_bad_messages: int = 0  # bad messages in this period
    new_errors: int = 0  # errors in this period
    missing_upstream: int = 0  # frames lost before the node: stamp gaps of more than 1.5 frame periods


class NodeStats:
    """Thread-safe counters: frames received / processed / dropped, latencies, resets, bad input, errors,
    and frames missing upstream: with ``frame_period_s``, a gap between the stamps of two received frames
    of more than ``MISSING_GAP`` periods (and at most ``max_gap_s``, beyond which the camera paused)
    counts ``round(gap / period) - 1`` frames that the camera stamped but the node never received
    (lost by the transport, or by a publisher or subscription queue)."""

    def __init__(self, clock=time.monotonic, frame_period_s: float | None = None,
                 max_gap_s: float | None = None) -> None:
        self._clock = clock
        self._period_ns = round(frame_period_s * 1e9) if frame_period_s else 0
        self._max_gap_ns = round(max_gap_s * 1e9) if max_gap_s else None
        self._last_stamp: int | None = None
        self._missing = 0
        self._lock = threading.Lock()
        self._received = self._processed = self._dropped = self._resets = 0
        self._bad: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._last_reset = ""
        self._mark = (clock(), 0, 0, 0, 0)  # time, received, processed, bad, errors at the last snapshot

    def received(self, stamp_ns: int | None = None) -> None:
        """A frame arrived; ``stamp_ns``: its header stamp (None: not valid, no gap is measured)."""
        with self._lock:
            self._received += 1
            if stamp_ns is None or not self._period_ns:
                return
            if self._last_stamp is not None:
                gap = stamp_ns - self._last_stamp
                if MISSING_GAP * self._period_ns < gap and (self._max_gap_ns is None or gap <= self._max_gap_ns):
                    self._missing += round(gap / self._period_ns) - 1
            self._last_stamp = stamp_ns

    def dropped(self, count: int = 1) -> None:
        with self._lock:
            self._dropped += count

    def processed(self, latency_s: float, reset_reason: str | None) -> None:
        """A frame was published ``latency_s`` after its stamp; ``reset_reason``: why the buffer was cleared."""
        with self._lock:
            self._processed += 1
            self._latencies.append(latency_s)
            if reset_reason is not None:
                self._resets += 1
                self._last_reset = reset_reason

    def bad_message(self, kind: str) -> bool:
        """Counts a skipped message of ``kind`` (one of ``ERROR_KINDS``); True the first time (log it)."""
        with self._lock:
            self._bad[kind] += 1
            return self._bad[kind] == 1

    def error(self, kind: str) -> bool:
        """Counts a failed frame (``kind``: e.g. the exception type); True the first time of that kind."""
        with self._lock:
            self._errors[kind] += 1
            return self._errors[kind] == 1

    def snapshot(self) -> StatsSnapshot:
        """Totals, and rates since the previous call."""
        with self._lock:
            now = self._clock()
            then, received, processed, bad, errors = self._mark
            bad_total, error_total = sum(self._bad.values()), sum(self._errors.values())
            self._mark = (now, self._received, self._processed, bad_total, error_total)
            elapsed = max(now - then, 1e-9)
            p50, p95 = (np.percentile(self._latencies, (50, 95)) * 1e3 if self._latencies else (np.nan, np.nan))
            return StatsSnapshot(
                input_hz=(self._received - received) / elapsed, processed_hz=(self._processed - processed) / elapsed,
                received=self._received, processed=self._processed, dropped=self._dropped,
                latency_p50_ms=float(p50), latency_p95_ms=float(p95), resets=self._resets,
                last_reset=self._last_reset, errors=error_total,
                bad_messages={kind: self._bad[kind] for kind in ERROR_KINDS},
                new_bad_messages=bad_total - bad, new_errors=error_total - errors, missing_upstream=self._missing)


def diagnostic_status(snapshot: StatsSnapshot, name: str, hardware_id: str, backend: str,
                      active: bool = True) -> DiagnosticStatus:
    """The node's status: ERROR if frames failed in this period, WARN if bad messages were skipped, else OK
    (``active`` false: a managed node that is not subscribed)."""
    if snapshot.new_errors:
        level, message = DiagnosticStatus.ERROR, f"{snapshot.new_errors} frame(s) failed in inference"
    elif snapshot.new_bad_messages:
        level, message = DiagnosticStatus.WARN, f"{snapshot.new_bad_messages} bad image message(s) skipped"
    elif not active:
        level, message = DiagnosticStatus.OK, "inactive (not subscribed)"
    elif snapshot.received == 0:
        level, message = DiagnosticStatus.OK, "waiting for images"
    else:
        level, message = DiagnosticStatus.OK, "running"
    values = {
        "input rate (Hz)": f"{snapshot.input_hz:.2f}",
        "processed rate (Hz)": f"{snapshot.processed_hz:.2f}",
        "received": snapshot.received,
        "processed": snapshot.processed,
        "dropped": snapshot.dropped,
        "missing upstream": snapshot.missing_upstream,
        "latency p50 (ms)": f"{snapshot.latency_p50_ms:.1f}",
        "latency p95 (ms)": f"{snapshot.latency_p95_ms:.1f}",
        "backend": backend,
        "buffer resets": snapshot.resets,
        "last reset": snapshot.last_reset,
        "errors": snapshot.errors,
        "bad messages": sum(snapshot.bad_messages.values()),
        **{f"bad messages: {kind}": count for kind, count in snapshot.bad_messages.items()},
    }
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=key, value=str(value)) for key, value in values.items()])


__all__ = ["LATENCY_WINDOW", "MISSING_GAP", "NodeStats", "StatsSnapshot", "diagnostic_status"]
