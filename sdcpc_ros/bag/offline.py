"""``sdcpc-bag eval BAG``: offline evaluation, frame by frame through the segment node's own pipeline.

Every image message of the bag goes, in the bag's order, through exactly what ``segment_node`` runs
for a received frame: the message is turned into an rclpy message (from its CDR bytes), then
``SegmentPipeline.process`` decodes it (``image_codec``), calls ``StreamingSegmenter.step`` with the
header stamp and frame_id (the temporal references are picked by message stamps, not by wall time),
and builds the output messages with the input header. Its "publishers" here store each message in
the output bag (``/semantic_mask`` mono8, ``/semantic_mask/color`` rgb8 and, when the bag has
camera_info, ``/semantic_mask/camera_info``), at the input message's log time. The segmenter is
built by the node's ``load_segmenter`` from a ``NodeConfig``, i.e. from the node's parameters.
Nothing is dropped: the offline mode processes every frame however long it takes.

Predictions are matched to the ground-truth labels by stamp (``scoring.FrameMatcher``) and the
report (``sdcpc_core.eval.report.write_report``) gets per-stage latencies: ``read`` (bag read and
message conversion), ``decode``, ``preprocess``, ``encode``, ``temporal``, ``postprocess``,
``messages`` (output message building), ``write`` (serialisation and bag write) and ``total`` (all
but ``read``: what the node spends on a frame, with the bag write in place of publishing).
"""
from __future__ import annotations

import time
from pathlib import Path

from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from sdcpc_core.eval.report import write_report
from sdcpc_core.runtime.image import to_rgb

from ..diagnostics import NodeStats
from ..parameters import NodeConfig
from ..pipeline import Outputs, ProcessedFrame, SegmentPipeline, stamp_to_ns
from ..segment_node import input_size_note, load_segmenter
from .bagfiles import CAMERA_INFO_TYPE, DEFAULT_DISTRO, IMAGE_TYPE, MASK_TOPIC, BagError, BagReader, BagWriter
from .scoring import BagEvaluation, EvalOutputs, EvalTopics, FrameMatcher, label_array, note, overlay_indices

__all__ = ["evaluate_offline"]

MAX_RESET_NOTES = 10  # buffer resets listed one by one in the report


class _BagPublisher:
    """Stands in for an rclpy publisher: ``publish`` stores the message in the output bag at ``clock.now``."""

    def __init__(self, bag: BagWriter, topic: str, msgtype: str, clock: _LogClock) -> None:
        self._bag, self._clock = bag, clock
        self._connection = bag.add_topic(topic, msgtype)

    def publish(self, message) -> None:
        self._bag.write(self._connection, self._clock.now_ns, serialize_message(message))

    @staticmethod
    def get_subscription_count() -> int:
        return 1  # every output is wanted


class _LogClock:
    """The log time of the input message being processed: output messages get the same log time."""

    now_ns = 0


class _Log:
    """The pipeline's logger: keeps the messages (the first bad-image message explains a failed bag) and
    passes warnings and errors to ``echo``."""

    def __init__(self, echo) -> None:
        self.echo = echo
        self.messages: list[str] = []

    def warning(self, message: str, **_) -> None:
        self.messages.append(message)
        self.echo(f"warning: {message}")

    error = warning

    def info(self, message: str, **_) -> None:
        self.messages.append(message)


def evaluate_offline(bag_path: str | Path, config: NodeConfig, outputs: EvalOutputs, *, image_topic: str | None = None,
                     label_topic: str | None = None, camera_info_topic: str | None = None,
                     mask_topic: str = MASK_TOPIC, consistency_mode: str = "vspw", num_overlays: int = 8,
                     storage: str | None = None, distro: str = DEFAULT_DISTRO, overwrite: bool = False,
                     progress: bool = True, echo=note) -> BagEvaluation:
    """Evaluates the node configuration ``config`` on a bag (module docstring); writes ``outputs``.

    Topics default to those ``EvalTopics.resolve`` finds. Raises ``ValueError`` (``BagError``,
    ``StartupError``) with one sentence for anything a user can get wrong; nothing is left at the
    output paths then.
    """
    from tqdm.auto import tqdm

    bag_path = Path(bag_path)
    with BagReader(bag_path, distro) as reader:
        topics = EvalTopics.resolve(reader, image_topic, label_topic, camera_info_topic)
        outputs.check(overwrite)
        with outputs.writing(overwrite) as staged:
            segmenter, classes = load_segmenter(config)
            echo(segmenter.loaded.message)
            echo(input_size_note(config, segmenter.loaded, segmenter.config.input_size))
            total = reader.count(topics.image)
            log, clock, stats = _Log(echo), _LogClock(), NodeStats()
            matcher = FrameMatcher(classes, bag_path.stem, consistency_mode, topics.label is not None,
                                   f"{topics.label} in bag {bag_path}")
            slots = overlay_indices(total, num_overlays)
            latency: dict[str, list[float]] = {}
            resets: list[str] = []
            message_type = CompressedImage if topics.compressed else Image
            wanted = [t for t in (topics.image, topics.label, topics.camera_info) if t]
            index = processed = 0
            read_s = 0.0
            began = time.perf_counter()
            with BagWriter(staged.bag, storage=storage, distro=distro) as bag:
                publishers = Outputs(
                    mask=_BagPublisher(bag, mask_topic, IMAGE_TYPE, clock),
                    color=_BagPublisher(bag, f"{mask_topic}/color", IMAGE_TYPE, clock),
                    camera_info=_BagPublisher(bag, f"{mask_topic}/camera_info", CAMERA_INFO_TYPE, clock)
                    if topics.camera_info else None)
                pipeline = SegmentPipeline(segmenter, classes, publishers, stats, log, time.time_ns,
                                           compressed=topics.compressed, max_pixels=config.max_image_pixels)
                bar = tqdm(total=total, desc="eval", unit="frame", disable=not progress, leave=False)
                messages = reader.messages(wanted)
                while True:
                    start = time.perf_counter()
                    message = next(messages, None)
                    if message is None:
                        break
                    if message.topic == topics.camera_info:
                        pipeline.set_camera_info(deserialize_message(message.raw, CameraInfo))
                        read_s += time.perf_counter() - start
                        continue
                    if message.topic == topics.label:
                        label = reader.deserialize(message)
                        read_s += time.perf_counter() - start
                        matcher.add_label(stamp_to_ns(label.header.stamp), label_array(label, topics.label))
                        continue
                    msg = deserialize_message(message.raw, message_type)
                    clock.now_ns = message.log_time_ns
                    read_ms = 1e3 * (time.perf_counter() - start)
                    read_s += read_ms / 1e3
                    frame = pipeline.process(msg)
                    stamp = stamp_to_ns(msg.header.stamp)
                    if frame is None:
                        _check_first_frame(processed, stats, log, topics.image, bag_path)
                    else:
                        processed += 1
                        result = frame.result
                        if result.reset:
                            resets.append(f"frame {index}: {result.reset_reason}")
                        for stage, ms in _stages(read_ms, frame).items():
                            latency.setdefault(stage, []).append(ms)
                    image = None
                    if index in slots and frame is not None:
                        image = to_rgb(*pipeline.decode(msg))
                    matcher.add_frame(index, stamp, None if frame is None else frame.result.labels, image)
                    index += 1
                    bar.update(1)
                bar.close()
                closing = time.perf_counter()
            write_s = sum(latency.get("write", ())) / 1e3 + time.perf_counter() - closing
            seconds = time.perf_counter() - began
            if processed == 0:
                raise BagError(f"no frame of {topics.image} in bag {bag_path} could be segmented"
                               + (f": {log.messages[0]}" if log.messages else " (the topic has no messages)"))
            info = _info(bag_path, topics, config, segmenter.config.input_size, index, processed, stats, resets,
                         seconds, read_s + write_s)
            info["output_bag"] = f"{outputs.bag} ({mask_topic}, {mask_topic}/color"
            info["output_bag"] += f", {mask_topic}/camera_info)" if topics.camera_info else ")"
            smoothed = f" + {config.smoothing}" if config.smoothing != "none" else ""
            report = matcher.finish(f"{Path(config.model).stem}{smoothed} on {bag_path.name} (offline)", latency, info)
            write_report(report, staged.report)
    return BagEvaluation(report, outputs.report, outputs.bag, index, processed, seconds)


def _stages(read_ms: float, frame: ProcessedFrame) -> dict[str, float]:
    """A frame's stage times in ms (module docstring); ``total`` is everything but ``read``."""
    stages = {"read": read_ms, "decode": frame.node_ms["decode"],
              **{k: v for k, v in frame.result.timings_ms.items() if k != "total"},
              "messages": frame.node_ms["encode"], "write": frame.node_ms["publish"]}
    stages["total"] = sum(v for k, v in stages.items() if k != "read")
    return stages


def _check_first_frame(processed: int, stats: NodeStats, log: _Log, topic: str, bag_path: Path) -> None:
    """An image encoding the node cannot take, on the first frame: stop (every frame would fail)."""
    if processed == 0 and stats.snapshot().bad_messages.get("encoding") and log.messages:
        raise BagError(f"{topic} in bag {bag_path}: {log.messages[0]}")


def _info(bag_path: Path, topics: EvalTopics, config: NodeConfig, input_size: tuple[int, int], frames: int,
          processed: int, stats: NodeStats, resets: list[str], seconds: float, io_seconds: float) -> dict:
    """The report's description of the run; ``input_size`` is the network input used (the parameters', else the
    checkpoint's recommended size)."""
    snapshot = stats.snapshot()
    bad = {kind: count for kind, count in snapshot.bad_messages.items() if count}
    notes = "; ".join(resets[:MAX_RESET_NOTES]) + (f"; ... ({len(resets) - MAX_RESET_NOTES} more)"
                                                   if len(resets) > MAX_RESET_NOTES else "")
    return {
        "mode": "offline (every frame, the segment node's pipeline, references by message stamps)",
        "bag": str(bag_path), "image_topic": f"{topics.image} ({topics.image_type})",
        "label_topic": topics.label or "none", "camera_info_topic": topics.camera_info or "none",
        "model": config.model, "backend": config.backend, "device": config.device, "precision": config.precision,
        "input_size": f"{input_size[0]}x{input_size[1]}",
        "reference_offsets": list(config.reference_offsets), "frame_period_s": config.frame_period_s,
        "smoothing": config.smoothing,
        "frames_in_bag": frames, "frames_processed": processed, "bad_messages": bad or "none",
        "errors": snapshot.errors,
        "buffer_resets": len(resets), "buffer_reset_reasons": notes or "none",
        "seconds": round(seconds, 3), "frames_per_second": round(frames / seconds, 2) if seconds > 0 else None,
        "bag_io_seconds": round(io_seconds, 3),
        "bag_io_fraction": round(io_seconds / seconds, 4) if seconds > 0 else None,
    }
