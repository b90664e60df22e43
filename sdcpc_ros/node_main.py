"""Entry points of ``segment_node`` and ``segment_lifecycle_node``, with the stop signals handled from
their first line on.

This module imports nothing heavy, so its handlers are in place before rclpy, torch and the model
load, which take the first seconds of a start. SIGINT (Ctrl-C) and SIGTERM (``kill``, launch, systemd)
then stop the node cleanly at any moment, while it starts as while it runs: the signal raises
``StopRequested`` in the main thread, the worker finishes the frame it is on (and publishes it), the
node is destroyed, the ROS context is shut down last, and the exit status is 0. Once the stop has
begun, further SIGINT / SIGTERM are ignored: launch forwards Ctrl-C to the node while the terminal
delivers its own, and the second one must not interrupt ``destroy_node`` (SIGKILL still ends a stuck
process). A user error at start-up (a parameter, the model, an unparsable ``--ros-args`` rule or
parameter file) is one sentence and exit status 2.
"""
from __future__ import annotations

import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(BaseException):
    """Raised in the main thread by the first SIGINT / SIGTERM (a ``BaseException``, as ``KeyboardInterrupt``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGINT and SIGTERM handlers: the first signal raises ``StopRequested``, later ones are ignored;
    ``stopping()`` starts ignoring them without a signal (a shutdown for another reason). A context
    manager that restores the previous handlers on exit, unless a stop has begun: then they stay
    ignored until the process ends. Outside the main thread (where Python cannot install handlers) it
    does nothing."""

    def __init__(self) -> None:
        self.signal: int | None = None  # the signal that asked to stop
        self._stopping = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            # after a stop, ignored until the process ends: the interpreter's exit still runs finalisers
            # (torch's among them) that a late SIGINT would interrupt with a traceback
            signal.signal(signum, signal.SIG_IGN if self._stopping else handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.signal = signum
        raise StopRequested(signum)

    def stopping(self) -> None:
        """From now on SIGINT / SIGTERM are ignored (the node is already shutting down)."""
        self._stopping = True


def _main(class_name: str, args) -> int:
    with StopSignals() as signals:
        try:
            from . import segment_node

            return segment_node.run_node(getattr(segment_node, class_name), args, signals)
        except StopRequested:  # before the node existed (imports, rclpy.init): nothing to shut down
            return 0


def main(args=None) -> int:
    """Entry point of ``segment_node``."""
    return _main("SegmentNode", args)


def lifecycle_main(args=None) -> int:
    """Entry point of ``segment_lifecycle_node``."""
    return _main("SegmentLifecycleNode", args)


__all__ = ["StopRequested", "StopSignals", "lifecycle_main", "main"]

if __name__ == "__main__":  # python -m sdcpc_ros.node_main: run the package's module, whose classes segment_node uses
    from sdcpc_ros.node_main import main as _main_of_package

    sys.exit(_main_of_package())
