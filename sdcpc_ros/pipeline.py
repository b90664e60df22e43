"""The segment node's inference loop: subscription callback -> frame queue -> worker -> publishers.

``SegmentPipeline.submit(msg)`` is all a subscription callback does: it stores the message in a
``FrameQueue``. With capacity 1 (the default) the queue holds only the newest frame, and a frame
that arrives while the worker is busy replaces (drops) the waiting one; with ``process_every_frame``
it is a bounded FIFO that drops its oldest frames when it holds more than ``capacity`` frames or more
than ``max_bytes`` of image data (``queue_limit_mib``). Every drop is counted, and so are frames
missing upstream (gaps in the received stamps, ``NodeStats``). The time-keyed
reference buffer of ``StreamingSegmenter`` picks references by stamp, so dropped frames do not
upset the temporal model.

The worker thread takes frames one by one and calls ``process(msg)``: decode (``image_codec``),
``StreamingSegmenter.step``, encode the outputs, publish them, each with the input image's header.
``process`` is also what the benchmark times, without a worker. Bad messages and failed frames are
counted in ``NodeStats`` and logged once per kind; nothing a frame causes stops the worker.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, Image, RegionOfInterest

from sdcpc_core.classes import ClassList
from sdcpc_core.runtime.image import ENCODINGS
from sdcpc_core.runtime.streaming import SegmentationResult, StreamingSegmenter

from .diagnostics import NodeStats
from .image_codec import ImageDecodeError, array_to_image_fields, check_stamp, compressed_to_array, image_to_array

_NS_PER_S = 1_000_000_000
_MASK_ENCODINGS = {np.dtype(np.uint8): "mono8", np.dtype(np.uint16): "mono16"}


def _data_bytes(frame) -> int:
    """Bytes of image data a message holds (``data``; 0 for anything without it)."""
    return len(getattr(frame, "data", b""))


class FrameQueue:
    """Frames waiting for the worker, oldest first: at most ``capacity`` frames and, with ``max_bytes``,
    at most that many bytes of ``size(frame)`` in all (the newest frame is always kept, even alone
    above it); a full queue drops its oldest."""

    def __init__(self, capacity: int, max_bytes: int | None = None, size=_data_bytes) -> None:
        if capacity < 1:
            raise ValueError(f"FrameQueue capacity must be >= 1, got {capacity}")
        self._frames: deque = deque()
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._size = size
        self._bytes = 0
        self._ready = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._ready:
            return len(self._frames)

    @property
    def closed(self) -> bool:
        with self._ready:
            return self._closed

    @property
    def bytes(self) -> int:
        """Bytes the waiting frames hold (counted only with ``max_bytes``)."""
        with self._ready:
            return self._bytes

    def put(self, frame) -> int:
        """Adds ``frame``; returns how many frames were dropped: the oldest waiting ones, or ``frame`` (1)
        once closed."""
        with self._ready:
            if self._closed:
                return 1
            size = self._size(frame) if self._max_bytes is not None else 0
            dropped = 0
            while self._frames and (len(self._frames) >= self._capacity or
                                    (self._max_bytes is not None and self._bytes + size > self._max_bytes)):
                oldest = self._frames.popleft()
                self._bytes -= self._size(oldest) if self._max_bytes is not None else 0
                dropped += 1
            self._frames.append(frame)
            self._bytes += size
            self._ready.notify()
            return dropped

    def get(self, timeout: float | None = None):
        """The oldest frame, waiting up to ``timeout`` seconds; None on time-out or once closed."""
        with self._ready:
            if not self._frames and not self._closed:
                self._ready.wait(timeout)
            if not self._frames or self._closed:
                return None
            frame = self._frames.popleft()
            self._bytes -= self._size(frame) if self._max_bytes is not None else 0
            return frame

    def close(self) -> int:
        """Wakes the worker for good and empties the queue; returns how many frames were waiting."""
        with self._ready:
            self._closed = True
            waiting = len(self._frames)
            self._frames.clear()
            self._bytes = 0
            self._ready.notify_all()
            return waiting


@dataclass
class Outputs:
    """Publishers of the node's outputs; None: that output is switched off."""

    mask: object  # sensor_msgs/Image, mono8 / mono16 class ids
    color: object | None = None  # sensor_msgs/Image, rgb8 class colours
    confidence: object | None = None  # sensor_msgs/Image, 32FC1
    dynamic: object | None = None  # sensor_msgs/Image, mono8: 255 on dynamic classes
    camera_info: object | None = None  # sensor_msgs/CameraInfo scaled to the mask size


@dataclass
class ProcessedFrame:
    """What ``SegmentPipeline.process`` did with one frame; ``node_ms``: decode, encode, publish times."""

    result: SegmentationResult
    node_ms: dict[str, float]


class LabelPainter:
    """Class ids -> colour image and dynamic mask, through lookup tables (OpenCV for uint8 ids:
    ``cv2.applyColorMap`` and ``cv2.LUT`` make one pass in C over the pixels, where numpy's fancy
    indexing gathers through an index array; the node's per-frame cost is in bench/RESULTS.md)."""

    def __init__(self, classes: ClassList, dynamic_ids) -> None:
        self.classes = classes
        self.palette = classes.palette(256)[:256].reshape(256, 1, 3)  # for uint8 ids; OpenCV colour-map layout
        self.dynamic = np.zeros(65536, np.uint8)  # class id -> 255 if dynamic
        self.dynamic[list(dynamic_ids)] = 255
        self._dynamic8 = self.dynamic[:256].copy()

    def color(self, labels: np.ndarray) -> np.ndarray:
        """``(H, W)`` uint8 / uint16 ids -> ``(H, W, 3)`` uint8 RGB (what ``ClassList.colorize`` gives)."""
        if labels.dtype != np.uint8:
            return self.classes.colorize(labels)
        return cv2.applyColorMap(labels, self.palette)  # a per-channel lookup of the user colour map

    def dynamic_mask(self, labels: np.ndarray) -> np.ndarray:
        """``(H, W)`` ids -> ``(H, W)`` uint8, 255 where the class is dynamic, else 0."""
        if labels.dtype == np.uint8:
            return cv2.LUT(labels, self._dynamic8)
        return np.take(self.dynamic, labels)


def image_message(header, pixels: np.ndarray, encoding: str) -> Image:
    """A ``sensor_msgs/Image`` of ``pixels`` with ``header``; one copy of the pixels (the generated
    constructor would copy ``data`` once more, so it is assigned afterwards)."""
    fields = array_to_image_fields(pixels, encoding)
    data = fields.pop("data")
    msg = Image(header=header, **fields)
    msg.data = data
    return msg


def stamp_to_ns(stamp) -> int:
    """``builtin_interfaces/Time`` -> integer nanoseconds."""
    return int(stamp.sec) * _NS_PER_S + int(stamp.nanosec)


def scaled_camera_info(info: CameraInfo, header, height: int, width: int) -> CameraInfo:
    """``info`` for an image of ``height`` x ``width`` (the mask) with ``header``: K, P and the ROI
    scaled by mask size / calibrated size, as image_proc's resize does."""
    sx = width / info.width if info.width else 1.0
    sy = height / info.height if info.height else 1.0
    k = np.array(info.k, dtype=np.float64)
    p = np.array(info.p, dtype=np.float64)
    k[[0, 2]] *= sx
    k[[4, 5]] *= sy
    p[[0, 2, 3]] *= sx
    p[[5, 6, 7]] *= sy
    roi = info.roi
    scaled_roi = RegionOfInterest(x_offset=round(roi.x_offset * sx), y_offset=round(roi.y_offset * sy),
                                  width=round(roi.width * sx), height=round(roi.height * sy),
                                  do_rectify=roi.do_rectify)
    return CameraInfo(header=header, height=height, width=width, distortion_model=info.distortion_model, d=info.d,
                      k=k, r=np.array(info.r, dtype=np.float64), p=p, binning_x=info.binning_x,
                      binning_y=info.binning_y, roi=scaled_roi)


class SegmentPipeline:
    """Frames in (``submit``), masks out (``outputs``); a worker thread runs ``process`` per frame.

    ``compressed``: the messages are ``CompressedImage``; ``capacity``: frames kept waiting (1: only
    the newest); ``max_queue_bytes``: the most image data they may hold; ``now_ns``: the node clock
    (latency = publish time - image stamp); ``logger``: an rclpy logger. ``dynamic_ids``: class ids of
    the dynamic mask.
    """

    def __init__(self, segmenter: StreamingSegmenter, classes: ClassList, outputs: Outputs, stats: NodeStats,
                 logger, now_ns, *, dynamic_ids=(), compressed: bool = False, max_pixels: int | None = None,
                 capacity: int = 1, max_queue_bytes: int | None = None) -> None:
        self.segmenter = segmenter
        self.outputs = outputs
        self.stats = stats
        self.painter = LabelPainter(classes, dynamic_ids)
        self._logger = logger
        self._now_ns = now_ns
        self._compressed = compressed
        self._max_pixels = max_pixels
        self._queue = FrameQueue(capacity, max_queue_bytes)
        self._camera_info: CameraInfo | None = None
        self._worker: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        """Frames waiting for the worker."""
        return len(self._queue)

    # ------------------------------------------------------------------------------ callbacks
    def submit(self, msg) -> None:
        """Subscription callback: stores the frame for the worker (dropping the oldest if the queue is full)."""
        try:
            check_stamp(msg.header.stamp)
            stamp = stamp_to_ns(msg.header.stamp)
        except ImageDecodeError:
            stamp = None  # refused by the worker; no gap is measured from it
        self.stats.received(stamp)
        dropped = self._queue.put(msg)
        if dropped:
            self.stats.dropped(dropped)

    def set_camera_info(self, info: CameraInfo) -> None:
        """camera_info callback: the newest calibration, republished scaled with each mask."""
        self._camera_info = info

    # --------------------------------------------------------------------------------- worker
    def start(self) -> None:
        """Starts the worker thread (once)."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="sdcpc-segment-worker", daemon=True)
            self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the worker after its current frame; frames still waiting are dropped (and counted)."""
        waiting = self._queue.close()
        if waiting:
            self.stats.dropped(waiting)
        if self._worker is not None:
            self._worker.join(timeout)
            self._worker = None

    def _run(self) -> None:
        while not self._queue.closed:
            msg = self._queue.get(timeout=1.0)
            if msg is None:
                continue
            try:
                self.process(msg)
            except Exception as error:  # the worker must outlive any frame: count, log once per kind, go on
                kind = type(error).__name__
                if self.stats.error(kind):
                    self._logger.error(f"Processing a frame failed ({kind}: {error}); the frame is skipped. Later "
                                       f"{kind} errors are only counted in /diagnostics.")

    # -------------------------------------------------------------------------------- a frame
    def decode(self, msg) -> tuple[np.ndarray, str]:
        """The message's pixels and encoding; ``ImageDecodeError`` for anything the model cannot take."""
        if self._compressed:
            image, encoding = compressed_to_array(msg, self._max_pixels)
        else:
            image, encoding = image_to_array(msg, ENCODINGS, self._max_pixels)
        if encoding not in ENCODINGS:
            raise ImageDecodeError("encoding", f"compressed image decodes to {encoding}; the model accepts "
                                               f"{', '.join(ENCODINGS)}")
        return image, encoding

    def process(self, msg) -> ProcessedFrame | None:
        """Decodes, segments and publishes one frame; None for a bad message (counted, logged once per kind).
        Other failures raise (the worker counts them as errors)."""
        start = time.perf_counter()
        try:
            check_stamp(msg.header.stamp)
            image, encoding = self.decode(msg)
        except ImageDecodeError as error:
            if self.stats.bad_message(error.kind):
                self._logger.warning(f"Skipping a bad image message ({error.kind}): {error}. Later '{error.kind}' "
                                     "problems are only counted in /diagnostics.")
            return None
        header = msg.header
        decoded = time.perf_counter()
        result = self.segmenter.step(image, stamp_to_ns(header.stamp), header.frame_id, encoding=encoding)
        stepped = time.perf_counter()
        messages = self._messages(header, result)
        encoded = time.perf_counter()
        for publisher, message in messages:
            publisher.publish(message)
        published = time.perf_counter()
        self.stats.processed((self._now_ns() - stamp_to_ns(header.stamp)) / _NS_PER_S, result.reset_reason)
        if result.reset:
            self._logger.info(f"Reference buffer cleared: {result.reset_reason}.", throttle_duration_sec=5.0)
        node_ms = {"decode": decoded - start, "encode": encoded - stepped, "publish": published - encoded}
        return ProcessedFrame(result, {key: 1e3 * value for key, value in node_ms.items()})

    def _messages(self, header, result: SegmentationResult) -> list[tuple[object, object]]:
        """(publisher, message) for every output that is switched on and has a subscriber (the mask always)."""
        labels = result.labels
        out = self.outputs
        messages = [(out.mask, image_message(header, labels, _MASK_ENCODINGS[labels.dtype]))]
        if _wanted(out.color):
            messages.append((out.color, image_message(header, self.painter.color(labels), "rgb8")))
        if _wanted(out.confidence):
            messages.append((out.confidence, image_message(header, result.confidence, "32FC1")))
        if _wanted(out.dynamic):
            messages.append((out.dynamic, image_message(header, self.painter.dynamic_mask(labels), "mono8")))
        info = self._camera_info
        if info is not None and _wanted(out.camera_info):
            messages.append((out.camera_info, scaled_camera_info(info, header, *labels.shape)))
        return messages


def _wanted(publisher) -> bool:
    return publisher is not None and publisher.get_subscription_count() > 0


__all__ = ["FrameQueue", "LabelPainter", "Outputs", "ProcessedFrame", "SegmentPipeline", "image_message",
           "scaled_camera_info", "stamp_to_ns"]
