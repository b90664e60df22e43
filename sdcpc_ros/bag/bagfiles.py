"""rosbag2 reading and writing for the bag tools, with the pure-Python ``rosbags`` library (no ROS install).

A bag is either a rosbag2 *folder* (``metadata.yaml`` plus one storage file, what ``ros2 bag record``
writes) or a single storage *file*: ``.mcap`` (MCAP) or ``.db3`` (SQLite 3). Both carry the
message definitions, so ``ros2 bag info`` / ``play`` (Iron and newer), Foxglove and ``rosbags`` read
them without this package.

``BagReader`` opens one for reading and turns every failure of the library (missing file, unknown
format, truncated or corrupt data, undecodable messages) into ``BagError``: one sentence naming the
file. ``BagWriter`` writes one *atomically*: everything goes to a hidden temporary name in the target
folder and is renamed to the target only when the bag is complete, so an interrupted run never leaves
a bag that looks finished. An existing target is refused unless ``overwrite``.

Message stores (``distro``): ``humble``, ``jazzy``, ``kilted``. They choose the message definitions
and type hashes written into new bags and the definitions used to read old bags that embed none
(SQLite bags from Humble and earlier). ``rosbags`` writes rosbag2 metadata version 8 (``humble``,
``jazzy``) or 9 (``kilted``); Humble's ``ros2 bag`` cannot parse a folder's ``metadata.yaml`` of
that version, but reads a single storage file (``NAME.mcap`` / ``NAME.db3``, rosbag2 0.15.3 and
newer), so write single files for Humble.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from sdcpc_core.atomic_files import replace_path, staging_folder

__all__ = ["BagError", "BagMessage", "BagReader", "BagWriter", "CAMERA_INFO_TOPIC", "CAMERA_INFO_TYPE",
           "COMPRESSED_TOPIC", "COMPRESSED_TYPE", "DEFAULT_DISTRO", "DISTROS", "IMAGE_TOPIC", "IMAGE_TYPE",
           "LABEL_TOPIC", "MASK_TOPIC", "NS_PER_S", "STORAGES", "check_output", "typestore"]

DISTROS = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY, "kilted": Stores.ROS2_KILTED}
DEFAULT_DISTRO = "kilted"
# rosbag2 metadata version written per distro (rosbags writes 8 or 9; Kilted introduced 9).
_BAG_VERSIONS = {"humble": 8, "jazzy": 8, "kilted": 9}
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
_FILE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"

# Default topics: camera images (raw or image_transport "compressed"), ground-truth class ids (mono8,
# the images' stamps), calibration, and the segment node's output.
IMAGE_TOPIC = "/camera/image_raw"
COMPRESSED_TOPIC = "/camera/image_raw/compressed"
LABEL_TOPIC = "/camera/labels"
CAMERA_INFO_TOPIC = "/camera/camera_info"
MASK_TOPIC = "/semantic_mask"
NS_PER_S = 1_000_000_000


class BagError(ValueError):
    """A bag (or a bag output path) that cannot be used; the message is one sentence naming the file."""


def typestore(distro: str = DEFAULT_DISTRO):
    """The ``rosbags`` type store of a ROS 2 distribution (``humble``, ``jazzy`` or ``kilted``)."""
    if distro not in DISTROS:
        raise BagError(f"unknown ROS 2 distribution {distro!r}; accepted: {', '.join(DISTROS)}")
    return get_typestore(DISTROS[distro])


@dataclass(frozen=True)
class BagMessage:
    """One stored message: topic, type name (``sensor_msgs/msg/Image``), log time (ns) and CDR bytes."""

    topic: str
    msgtype: str
    log_time_ns: int
    raw: bytes


# ---------------------------------------------------------------------------------------------- reading
class BagReader:
    """An open bag (file or folder); use as a context manager.

    ``topics`` maps topic names to ``(msgtype, count)``; ``messages(topics)`` yields ``BagMessage``
    in log-time order; ``deserialize`` gives ``rosbags`` message objects (numpy arrays for byte
    fields); ``store`` is the type store of ``distro``. Every read error raises ``BagError`` naming
    the file.
    """

    def __init__(self, path: str | os.PathLike, distro: str = DEFAULT_DISTRO) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        if self.path.is_file() and self.path.suffix not in _FILE_SUFFIXES:
            raise BagError(f"{self.path} is not a rosbag2 bag: expected a bag folder (with metadata.yaml), an .mcap "
                           "or a .db3 file")
        if self.path.is_dir() and not (self.path / "metadata.yaml").is_file():
            raise BagError(f"{self.path} is a folder without metadata.yaml, not a rosbag2 bag")
        self.store = typestore(distro)  # definitions for bags that embed none
        self._reader: AnyReader | None = None
        self.topics: dict[str, tuple[str, int]] = {}

    def __enter__(self) -> BagReader:
        try:
            reader = AnyReader([self.path], default_typestore=self.store)
            reader.open()
        except Exception as error:  # rosbags raises many types for damaged files
            raise self._damaged(error) from None
        self._reader = reader
        self.topics = {name: (info.msgtype or "(mixed types)", int(info.msgcount))
                       for name, info in sorted(reader.topics.items())}
        return self

    def __exit__(self, *exc) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _damaged(self, error: Exception) -> BagError:
        reason = str(error).strip().rstrip(".") or type(error).__name__
        return BagError(f"cannot read bag {self.path}: {reason} (the file is truncated, corrupt or not a rosbag2 bag)")

    def describe_topics(self) -> str:
        """``/a (sensor_msgs/msg/Image, 10 messages), ...``, or ``no topics``."""
        if not self.topics:
            return "no topics"
        return ", ".join(f"{name} ({msgtype}, {count} messages)" for name, (msgtype, count) in self.topics.items())

    def require_topic(self, topic: str, msgtypes: Iterable[str], option: str) -> str:
        """The type of ``topic``, which must exist with one of ``msgtypes``; ``BagError`` listing the topics."""
        msgtypes = tuple(msgtypes)
        if topic not in self.topics:
            raise BagError(f"{option} {topic} is not in bag {self.path}; its topics: {self.describe_topics()}")
        msgtype = self.topics[topic][0]
        if msgtype not in msgtypes:
            raise BagError(f"{option} {topic} in bag {self.path} carries {msgtype}; supported: {', '.join(msgtypes)}")
        return msgtype

    def count(self, topic: str) -> int:
        """Messages on ``topic`` according to the bag's index (0 when absent)."""
        return self.topics.get(topic, ("", 0))[1]

    def messages(self, topics: Iterable[str] = ()) -> Iterator[BagMessage]:
        """Messages of ``topics`` (all when empty) in log-time order; ``BagError`` if the data is damaged."""
        assert self._reader is not None, "use BagReader as a context manager"
        wanted = set(topics)
        connections = [c for c in self._reader.connections if not wanted or c.topic in wanted]
        if wanted and not connections:
            return
        iterator = self._reader.messages(connections=connections)
        while True:
            try:
                connection, log_time, raw = next(iterator)
            except StopIteration:
                return
            except Exception as error:  # damaged chunk, index or database page
                raise self._damaged(error) from None
            yield BagMessage(connection.topic, connection.msgtype, int(log_time), bytes(raw))

    def deserialize(self, message: BagMessage):
        """The ``rosbags`` message object of ``message``; ``BagError`` if its bytes do not decode."""
        assert self._reader is not None, "use BagReader as a context manager"
        try:
            return self._reader.deserialize(message.raw, message.msgtype)
        except Exception as error:  # truncated or mismatching CDR data
            raise BagError(f"cannot decode a {message.msgtype} message on {message.topic} at log time "
                           f"{message.log_time_ns} ns in bag {self.path}: {error}") from None


# ---------------------------------------------------------------------------------------------- writing
def _storage_of(path: Path, storage: str | None) -> tuple[str, bool]:
    """(storage, single file?) for an output path: ``.mcap`` / ``.db3`` are files, anything else a folder."""
    if storage is not None and storage not in STORAGES:
        raise BagError(f"unknown bag storage {storage!r}; accepted: {', '.join(STORAGES)}")
    implied = _FILE_SUFFIXES.get(path.suffix)
    if implied is None:
        return storage or "mcap", False
    if storage is not None and storage != implied:
        raise BagError(f"output bag {path} has the suffix {path.suffix} of {implied} storage but {storage} was asked "
                       f"for; use a {'.mcap' if storage == 'mcap' else '.db3'} name or a folder name")
    return implied, True


def check_output(path: str | os.PathLike, overwrite: bool, what: str = "output") -> Path:
    """``path`` as a Path if it may be written; ``BagError`` when it exists and ``overwrite`` is false, or
    when it is a folder that is not a bag (never replaced)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise BagError(f"{what} {path} already exists; pass --overwrite to replace it")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise BagError(f"{what} {path} is a folder that is not a rosbag2 bag; refusing to replace it")
    return path


class BagWriter:
    """Writes a bag to ``path`` atomically; use as a context manager (an exception discards the bag).

    ``path`` ending in ``.mcap`` / ``.db3`` gives a single storage file, any other name a rosbag2
    folder with ``storage`` (``mcap`` by default). ``add_topic`` registers a topic, ``write`` stores
    CDR bytes, ``write_message`` serialises a ``rosbags`` message first.
    """

    def __init__(self, path: str | os.PathLike, storage: str | None = None, distro: str = DEFAULT_DISTRO,
                 overwrite: bool = False) -> None:
        self.path = check_output(path, overwrite, "output bag")
        self.storage, self.single_file = _storage_of(self.path, storage)
        self.store = typestore(distro)
        self._version = _BAG_VERSIONS[distro]
        self._staging: Path | None = None
        self._writer: Writer | None = None
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        self._staging = staging_folder(self.path)
        self._writer = Writer(self._staging / self.path.stem if self.single_file else self._staging / self.path.name,
                              version=self._version, storage_plugin=STORAGES[self.storage])
        self._writer.open()
        return self

    def add_topic(self, topic: str, msgtype: str):
        """Registers ``topic`` of ``msgtype`` (with its definition from the type store); returns its connection."""
        assert self._writer is not None, "use BagWriter as a context manager"
        self.counts[topic] = 0
        return self._writer.add_connection(topic, msgtype, typestore=self.store)

    def write(self, connection, log_time_ns: int, raw: bytes | memoryview) -> None:
        """Stores one CDR-serialised message at ``log_time_ns``."""
        self._writer.write(connection, int(log_time_ns), raw)
        self.counts[connection.topic] += 1

    def write_message(self, connection, log_time_ns: int, message) -> None:
        """Serialises a ``rosbags`` message of the connection's type and stores it."""
        self.write(connection, log_time_ns, self.store.serialize_cdr(message, connection.msgtype))

    def __exit__(self, exc_type, exc, traceback) -> None:
        writer, staging = self._writer, self._staging
        self._writer = self._staging = None
        try:
            if exc_type is not None:
                writer.abort()
                return
            writer.close()
            bag = staging / (self.path.stem if self.single_file else self.path.name)
            replace_path(next(p for p in bag.iterdir() if p.suffix == self.path.suffix) if self.single_file else bag,
                         self.path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

