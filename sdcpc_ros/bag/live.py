"""``sdcpc-bag eval BAG --live``: play a bag to a running ``segment_node`` and score what it publishes.

Nothing but the player and a recorder starts here, both in this process on one rclpy node: the
segment node is the user's (subscribed to the bag's image topic, e.g. remapped with
``-r image:=/camera/image_raw``). The evaluation

1. waits until the node subscribes to the image topic, publishes the mask topic and has latched its
   class list on ``<mask topic>/classes`` (or ``classes`` is given);
2. plays the image (and camera_info) topics with their recorded timing (``rate``), noting when each
   frame went out, while recording every message on the mask topic with its arrival time;
3. after the last frame, waits until every frame has its mask, or until no mask came for a quiet
   period: three times the median time between masks (what the node needs for a frame or two still
   in flight), at least ``MIN_QUIET_S`` and at most ``settle_s``; in all at most the playing time plus
   ``settle_s`` (masks later than that count as dropped); then
   for the node's next ``/diagnostics`` status (1 Hz), whose totals (received, processed, dropped,
   buffer resets, errors) go into the report;
4. writes the recorded masks as the output bag (log time = arrival time, as ``ros2 bag record``),
   matches masks to frames and labels by header stamp and scores them like the offline mode.

Frames the node never answered (dropped by its queue, lost in transport, or still in flight when
the wait ended) are *reported*: counted, listed by frame index and left out of the scores, never
filled in. Latency ``end_to_end`` is mask arrival minus frame publication, both measured here.

The recorder subscribes reliably (keep last ``RECORD_DEPTH``): the node's ``output_qos`` must be
reliable (its default), otherwise no publisher matches and the wait says so.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

from sdcpc_core.classes import ClassList
from sdcpc_core.eval.report import write_report
from sdcpc_core.runtime.image import to_rgb

from ..image_codec import ImageDecodeError, compressed_to_array, image_to_array
from ..parameters import latched_qos
from ..pipeline import stamp_to_ns
from .bagfiles import DEFAULT_DISTRO, IMAGE_TYPE, MASK_TOPIC, BagError, BagReader, BagWriter
from .play import BagPlayer, RosSession
from .scoring import BagEvaluation, EvalOutputs, EvalTopics, FrameMatcher, label_array, note, overlay_indices

__all__ = ["evaluate_live"]

RECORD_DEPTH = 1000  # masks the recorder's subscription may hold before its callback takes them
DIAGNOSTICS_TOPIC = "/diagnostics"
STATUS_SUFFIX = ": semantic segmentation"  # the segment node's DiagnosticStatus name ends so
DIAGNOSTIC_KEYS = ("received", "processed", "dropped", "missing upstream", "buffer resets", "last reset", "errors",
                   "bad messages")
DIAGNOSTICS_WAIT_S = 2.5  # the node publishes /diagnostics at 1 Hz
MIN_QUIET_S = 1.0  # the shortest wait for late masks after the last frame
_POLL_S = 0.05


class _Recorder:
    """Mask messages by header stamp: (arrival perf_counter, arrival wall time ns, CDR bytes)."""

    def __init__(self, store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self.masks: dict[int, tuple[float, int, bytes]] = {}
        self.arrivals: list[float] = []
        self.classes: str | None = None
        self.diagnostics: dict[str, str] = {}  # the node's latest status values
        self.diagnostics_arrival = 0.0

    def on_mask(self, raw: bytes) -> None:
        arrival, wall = time.perf_counter(), time.time_ns()
        header = self._store.deserialize_cdr(raw, IMAGE_TYPE).header
        with self._lock:
            self.masks[stamp_to_ns(header.stamp)] = (arrival, wall, bytes(raw))
            self.arrivals.append(arrival)

    def quiet_s(self, settle_s: float) -> float:
        """How long to wait for one more mask: 3 x the median time between masks, in [MIN_QUIET_S, settle_s]."""
        with self._lock:
            gaps = np.diff(self.arrivals)
        typical = 3.0 * float(np.median(gaps)) if gaps.size else settle_s
        return min(settle_s, max(MIN_QUIET_S, typical))

    def last_arrival(self) -> float:
        with self._lock:
            return self.arrivals[-1] if self.arrivals else 0.0

    def on_classes(self, message: String) -> None:
        self.classes = message.data

    def on_diagnostics(self, message: DiagnosticArray) -> None:
        for status in message.status:
            if status.name.endswith(STATUS_SUFFIX):
                self.diagnostics = {value.key: value.value for value in status.values}
                self.diagnostics_arrival = time.perf_counter()

    def node_totals(self) -> str:
        """The node's own counters from its last diagnostics, e.g. ``received 296, processed 66, ...``."""
        if not self.diagnostics:
            return f"none received on {DIAGNOSTICS_TOPIC}"
        return ", ".join(f"{key} {self.diagnostics[key] or '-'}" for key in DIAGNOSTIC_KEYS if key in self.diagnostics)

    def count(self, stamps) -> int:
        with self._lock:
            return sum(1 for stamp in stamps if stamp in self.masks)


def _wait(condition: Callable[[], bool], timeout_s: float, alive: Callable[[], None]) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        alive()
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_S)
    return True


def _decode_image(message, compressed: bool):
    image, encoding = compressed_to_array(message) if compressed else image_to_array(message)
    return to_rgb(image, encoding)


def evaluate_live(bag_path: str | Path, outputs: EvalOutputs, *, image_topic: str | None = None,
                  label_topic: str | None = None, camera_info_topic: str | None = None, mask_topic: str = MASK_TOPIC,
                  rate: float = 1.0, wait_s: float = 30.0, settle_s: float = 5.0, classes: ClassList | None = None,
                  consistency_mode: str = "vspw", num_overlays: int = 8, storage: str | None = None,
                  distro: str = DEFAULT_DISTRO, overwrite: bool = False, domain_id: int | None = None,
                  alive: Callable[[], None] = lambda: None, progress: bool = True, echo=note) -> BagEvaluation:
    """Plays ``bag_path`` to the running segment node and scores its masks (module docstring).

    ``alive()`` is called while waiting and may raise to abort (the demo checks its node process).
    ``classes``: the class list of the masks (None: the node's latched list). Raises ``BagError``
    naming what is missing (no subscriber, no mask publisher, no class list) after ``wait_s``.
    """
    if not rate > 0:
        raise BagError(f"rate must be > 0, got {rate}")
    bag_path = Path(bag_path)
    with BagReader(bag_path, distro) as reader:
        topics = EvalTopics.resolve(reader, image_topic, label_topic, camera_info_topic)
        outputs.check(overwrite)
        with outputs.writing(overwrite) as staged:
            recorder = _Recorder(reader.store)
            played: dict[int, float] = {}  # stamp -> publication perf_counter
            order: list[int] = []  # stamps of the played frames, in order

            def on_publish(message, when: float) -> None:
                if message.topic == topics.image:
                    stamp = stamp_to_ns(reader.deserialize(message).header.stamp)
                    played[stamp] = when
                    order.append(stamp)

            with RosSession(f"sdcpc_bag_live_{os.getpid()}", domain_id) as session:
                node = session.node
                reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=RECORD_DEPTH,
                                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
                mask_subscription = node.create_subscription(Image, mask_topic, recorder.on_mask, reliable, raw=True)
                node.create_subscription(String, f"{mask_topic}/classes", recorder.on_classes, latched_qos())
                node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, recorder.on_diagnostics, 10)
                player = BagPlayer(node, reader, [t for t in (topics.image, topics.camera_info) if t])
                _await_node(player, topics.image, topics.compressed, mask_subscription, mask_topic, recorder,
                            classes is None, wait_s, alive)
                classes = classes or ClassList.from_json(recorder.classes, f"{mask_topic}/classes")
                echo(f"segment node found: playing {topics.image} at rate {rate:g} to it, recording {mask_topic}")
                result = player.play(rate=rate, on_publish=on_publish, progress=progress)
                last_played = played[order[-1]] if order else 0.0
                _wait(lambda: recorder.count(order) == len(order) or time.perf_counter() - max(
                    recorder.last_arrival(), last_played) > recorder.quiet_s(settle_s), settle_s + result.seconds,
                    alive)
                settled = time.perf_counter()
                _wait(lambda: recorder.diagnostics_arrival > settled, DIAGNOSTICS_WAIT_S, alive)
            echo(result.summary_line())
            with BagWriter(staged.bag, storage=storage, distro=distro) as bag:
                connection = bag.add_topic(mask_topic, IMAGE_TYPE)
                for _, wall, raw in sorted(recorder.masks.values()):
                    bag.write(connection, wall, raw)
            run = {"mode": f"live (played at rate {rate:g} to a running segment node, masks recorded from "
                           f"{mask_topic})",
                   "bag": str(bag_path), "output_bag": f"{outputs.bag} ({mask_topic} as recorded)",
                   "settle_s": settle_s,
                   "masks_without_frame": len(set(recorder.masks) - set(played)),
                   "buffer_resets": recorder.diagnostics.get("buffer resets", "unknown (no diagnostics from the node)"),
                   "node_diagnostics": f"{recorder.node_totals()} (the node's totals since its start)"}
            report = _score(reader, topics, recorder, played, order, classes, run, consistency_mode, num_overlays,
                            progress)
            write_report(report, staged.report)
    return BagEvaluation(report, outputs.report, outputs.bag, len(order), report.info["frames_segmented"],
                         result.seconds)


def _await_node(player: BagPlayer, image_topic: str, compressed: bool, mask_subscription, mask_topic: str,
                recorder: _Recorder, need_classes: bool, wait_s: float, alive: Callable[[], None]) -> None:
    """Waits until the segment node is connected both ways (and has sent its class list); ``BagError`` if not."""
    remap = f"-p use_compressed:=true -r image/compressed:={image_topic}" if compressed else f"-r image:={image_topic}"
    checks = [(lambda: player.subscribers(image_topic) > 0, f"nothing subscribes to {image_topic} (start segment_node "
               f"with {remap}, on the same ROS_DOMAIN_ID)"),
              (lambda: mask_subscription.get_publisher_count() > 0, f"nothing publishes {mask_topic} with a reliable "
               "QoS (the node's output_qos must be default or reliable)")]
    if need_classes:
        checks.append((lambda: recorder.classes is not None, f"no class list arrived on {mask_topic}/classes (pass "
                       "--classes)"))
    if not _wait(lambda: all(check() for check, _ in checks), wait_s, alive):
        missing = "; ".join(reason for check, reason in checks if not check())
        raise BagError(f"no running segment node found after {wait_s:g} s: {missing}")


def _score(reader: BagReader, topics: EvalTopics, recorder: _Recorder, played: dict[int, float], order: list[int],
           classes: ClassList, run: dict, consistency_mode: str, num_overlays: int, progress: bool):
    """Reads the played frames and labels again and scores the recorded masks against them (``run``: the
    report's first info entries)."""
    from tqdm.auto import tqdm

    matcher = FrameMatcher(classes, reader.path.stem, consistency_mode, topics.label is not None,
                           f"{topics.label} in bag {reader.path}")
    answered = [index for index, stamp in enumerate(order) if stamp in recorder.masks]
    slots = {answered[k] for k in overlay_indices(len(answered), num_overlays)}  # overlays of frames with masks
    latency: list[float] = []
    wanted = [t for t in (topics.image, topics.label) if t]
    index = 0
    with tqdm(total=len(order), desc="score", unit="frame", disable=not progress, leave=False) as bar:
        for message in reader.messages(wanted):
            decoded = reader.deserialize(message)
            stamp = stamp_to_ns(decoded.header.stamp)
            if message.topic == topics.label:
                matcher.add_label(stamp, label_array(decoded, topics.label))
                continue
            if stamp not in played:
                continue
            prediction = image = None
            if stamp in recorder.masks:
                arrival, _, raw = recorder.masks[stamp]
                latency.append(1e3 * (arrival - played[stamp]))
                try:
                    prediction, _ = image_to_array(reader.store.deserialize_cdr(raw, IMAGE_TYPE),
                                                   ("mono8", "mono16"))
                except ImageDecodeError as error:
                    raise BagError(f"the mask of frame {index} on the mask topic is unusable: {error}") from None
                if index in slots:
                    image = _decode_image(decoded, topics.compressed)
            matcher.add_frame(index, stamp, prediction, image)
            index += 1
            bar.update(1)
    segmented = recorder.count(order)
    info = {**run, "image_topic": f"{topics.image} ({topics.image_type})", "label_topic": topics.label or "none",
            "frames_played": len(order), "frames_segmented": segmented, "frames_dropped": len(order) - segmented,
            "consistency_frames": "mVC windows are n successive frames the node answered, not n consecutive camera "
                                  "frames: a frame the node dropped is skipped, so a window can span more time"}
    return matcher.finish(f"segment node on {reader.path.name} (live)", {"end_to_end": latency}, info)
