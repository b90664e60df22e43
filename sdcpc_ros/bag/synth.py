"""``sdcpc-bag synth``: a synthetic drive (``sdcpc_core.data.synthetic``) written as a rosbag2 bag.

Topics (defaults), all with the frame's stamp in the header and as the log time, in camera order
(dropped frames are skipped, so stamps jump where the camera dropped frames):

* ``/camera/image_raw``: ``sensor_msgs/Image`` in ``rgb8`` or ``bgr8``, or, with ``image_format="jpeg"``,
  ``/camera/image_raw/compressed``: ``sensor_msgs/CompressedImage`` (JPEG, image_transport's
  ``"rgb8; jpeg compressed bgr8"`` format);
* ``/camera/camera_info``: ``sensor_msgs/CameraInfo`` of the generator's pinhole camera (no distortion);
* ``/camera/labels``: ``sensor_msgs/Image`` ``mono8``, the Cityscapes train ids of the true scene
  (255 = ignore).

Stamps are the drive's stamps plus ``start_time_ns`` (default 2023-11-14T22:13:20Z, 1.7e9 s), so
the bag looks like a recording and replays give plausible ROS times.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sdcpc_core.data.synthetic import SyntheticConfig, SyntheticDrive

from ..image_codec import array_to_image_fields
from .bagfiles import (
    CAMERA_INFO_TOPIC,
    CAMERA_INFO_TYPE,
    COMPRESSED_TOPIC,
    COMPRESSED_TYPE,
    DEFAULT_DISTRO,
    IMAGE_TOPIC,
    IMAGE_TYPE,
    LABEL_TOPIC,
    NS_PER_S,
    BagWriter,
)

__all__ = ["IMAGE_FORMATS", "SynthResult", "write_synthetic_bag"]

IMAGE_FORMATS = ("rgb8", "bgr8", "jpeg")
DEFAULT_START_NS = 1_700_000_000 * NS_PER_S
JPEG_FORMAT = "rgb8; jpeg compressed bgr8"


@dataclass(frozen=True)
class SynthResult:
    """What ``write_synthetic_bag`` wrote."""

    path: Path
    frames: int  # image messages (= label and camera_info messages)
    dropped: int  # frames the synthetic camera dropped (not in the bag)
    image_topic: str
    duration_s: float  # last stamp - first stamp
    bytes: int  # size on disk
    seconds: float  # wall time

    def summary_line(self) -> str:
        return (f"wrote {self.path}: {self.frames} frames on {self.image_topic} (+ labels, camera_info), "
                f"{self.dropped} dropped by the camera, {self.duration_s:.1f} s of drive, "
                f"{self.bytes / 2 ** 20:.1f} MiB in {self.seconds:.1f} s")


class _Messages:
    """Builds ``rosbags`` messages of one type store."""

    def __init__(self, store) -> None:
        types = store.types
        self._time = types["builtin_interfaces/msg/Time"]
        self._header = types["std_msgs/msg/Header"]
        self._image = types[IMAGE_TYPE]
        self._compressed = types[COMPRESSED_TYPE]
        self._info = types[CAMERA_INFO_TYPE]
        self._roi = types["sensor_msgs/msg/RegionOfInterest"]

    def header(self, stamp_ns: int, frame_id: str):
        sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
        return self._header(stamp=self._time(sec=sec, nanosec=nanosec), frame_id=frame_id)

    def image(self, header, array: np.ndarray, encoding: str):
        fields = array_to_image_fields(array, encoding)
        fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
        return self._image(header=header, **fields)

    def compressed(self, header, data: bytes, fmt: str):
        return self._compressed(header=header, format=fmt, data=np.frombuffer(data, dtype=np.uint8))

    def camera_info(self, header, height: int, width: int, focal: float):
        """A distortion-free pinhole camera; the principal point is the image centre (pixel-centre convention)."""
        cx, cy = width / 2.0 - 0.5, height / 2.0 - 0.5
        k = np.array([focal, 0.0, cx, 0.0, focal, cy, 0.0, 0.0, 1.0])
        p = np.array([focal, 0.0, cx, 0.0, 0.0, focal, cy, 0.0, 0.0, 0.0, 1.0, 0.0])
        return self._info(header=header, height=height, width=width, distortion_model="plumb_bob", d=np.zeros(5),
                          k=k, r=np.eye(3).ravel(), p=p, binning_x=0, binning_y=0,
                          roi=self._roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def write_synthetic_bag(path: str | os.PathLike, config: SyntheticConfig = SyntheticConfig(), seed: int = 0, *,
                        image_format: str = "rgb8", storage: str | None = None, distro: str = DEFAULT_DISTRO,
                        overwrite: bool = False, frame_id: str = "camera", start_time_ns: int = DEFAULT_START_NS,
                        jpeg_quality: int = 90, image_topic: str | None = None, label_topic: str = LABEL_TOPIC,
                        camera_info_topic: str = CAMERA_INFO_TOPIC, progress: bool = True) -> SynthResult:
    """Renders the drive of ``(config, seed)`` and writes it to ``path`` (see the module docstring).

    ``image_format``: ``rgb8`` / ``bgr8`` (raw ``Image``) or ``jpeg`` (``CompressedImage``, quality
    ``jpeg_quality``); ``image_topic`` defaults to ``/camera/image_raw`` or, for JPEG,
    ``/camera/image_raw/compressed``. ``storage``, ``distro`` and ``overwrite``: see ``BagWriter``.
    Raises ``ValueError`` (``BagError``) for bad options or an existing output.
    """
    from tqdm.auto import tqdm

    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise ValueError(f"JPEG quality must be an integer in 1..100, got {jpeg_quality!r}")
    if int(start_time_ns) < 0:
        raise ValueError(f"start time must be >= 0 ns, got {start_time_ns}")
    compressed = image_format == "jpeg"
    image_topic = image_topic or (COMPRESSED_TOPIC if compressed else IMAGE_TOPIC)
    topics = [image_topic, label_topic, camera_info_topic]
    if len(set(topics)) != len(topics):
        raise ValueError(f"image, label and camera_info topics must differ, got {', '.join(topics)}")
    began = time.perf_counter()
    drive = SyntheticDrive(config, seed)
    written, stamps = 0, []
    with BagWriter(path, storage=storage, distro=distro, overwrite=overwrite) as bag:
        build = _Messages(bag.store)
        image_connection = bag.add_topic(image_topic, COMPRESSED_TYPE if compressed else IMAGE_TYPE)
        label_connection = bag.add_topic(label_topic, IMAGE_TYPE)
        info_connection = bag.add_topic(camera_info_topic, CAMERA_INFO_TYPE)
        with tqdm(total=len(drive), desc="synth", unit="frame", disable=not progress, leave=False) as bar:
            for frame in drive:
                stamp = int(start_time_ns) + frame.stamp_ns
                header = build.header(stamp, frame_id)
                if compressed:
                    ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR),
                                            [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
                    if not ok:
                        raise RuntimeError("OpenCV could not encode a JPEG image")
                    image = build.compressed(header, data.tobytes(), JPEG_FORMAT)
                else:
                    pixels = frame.image if image_format == "rgb8" else np.ascontiguousarray(frame.image[:, :, ::-1])
                    image = build.image(header, pixels, image_format)
                bag.write_message(info_connection, stamp, build.camera_info(header, config.height, config.width,
                                                                            drive.focal))
                bag.write_message(image_connection, stamp, image)
                bag.write_message(label_connection, stamp, build.image(header, frame.labels, "mono8"))
                written += 1
                stamps.append(stamp)
                bar.update(frame.index + 1 - bar.n)
    path = Path(path)
    size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.iterdir())
    duration = (stamps[-1] - stamps[0]) / NS_PER_S if stamps else math.nan
    return SynthResult(path, written, len(drive) - written, image_topic, duration, size, time.perf_counter() - began)
