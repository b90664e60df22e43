"""``sdcpc-bag play BAG``: publishes a bag into the live ROS 2 graph with its recorded timing, as
``ros2 bag play`` does.

Each message goes out at its recorded log time relative to the first one, divided by ``rate``
(``rate=2`` plays twice as fast), optionally looping. Messages are published as their stored CDR
bytes (``Publisher.publish(bytes)``), so nothing is decoded and any message type whose Python
package is installed can be played. Topics can be selected and renamed (``remap``). Publishers are
reliable with a history of ``depth`` messages (``qos="sensor_data"``: best effort), which every
subscriber QoS accepts.

``RosSession`` is the rclpy set-up the player and the live evaluation share: its own context (on
``domain_id`` when given), one node, and an executor spinning it in a background thread.
"""
from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from .bagfiles import NS_PER_S, BagError, BagMessage, BagReader

__all__ = ["BagPlayer", "MAX_DOMAIN_ID", "PlayResult", "QOS_CHOICES", "RosSession", "check_domain_id", "message_class",
           "parse_remaps"]

QOS_CHOICES = ("reliable", "sensor_data")
# The DDS default port mapping (Fast DDS, Cyclone DDS) gives domain d the ports 7400 + 250 d + a few
# offsets, which must stay below 65536: domain ids 0..232 (0..101 keep clear of Linux's ephemeral ports).
MAX_DOMAIN_ID = 232


def check_domain_id(domain_id: int | None) -> int | None:
    """``domain_id``, or ``ROS_DOMAIN_ID`` when None (None when that is unset too); ``BagError`` for one
    outside 0..MAX_DOMAIN_ID, which the middleware would refuse with a traceback."""
    where = "--domain-id"
    if domain_id is None:
        text = os.environ.get("ROS_DOMAIN_ID", "").strip()
        if not text:
            return None
        where = "ROS_DOMAIN_ID"
        domain_id = int(text) if text.isdigit() else -1
    if not 0 <= domain_id <= MAX_DOMAIN_ID:
        raise BagError(f"{where} must be a ROS domain id in 0..{MAX_DOMAIN_ID} (the DDS default port mapping has "
                       f"no ports for larger ones; 0..101 is safe on Linux), got "
                       f"{os.environ.get('ROS_DOMAIN_ID') if where == 'ROS_DOMAIN_ID' else domain_id}")
    return domain_id


class RosSession:
    """An rclpy context with one node spun by a background executor; a context manager.

    ``domain_id``: the ROS domain (None: ``ROS_DOMAIN_ID`` or 0). rclpy's signal handlers are not
    installed, so Ctrl-C raises ``KeyboardInterrupt`` in the main thread as usual, and ``sys.argv``
    is not parsed for ROS arguments.
    """

    def __init__(self, node_name: str, domain_id: int | None = None) -> None:
        self.node_name = node_name
        self.domain_id = domain_id
        self.context: Context | None = None
        self.node = None
        self._executor: SingleThreadedExecutor | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RosSession:
        domain_id = check_domain_id(self.domain_id)
        self.context = Context()
        # args=[]: the program's own command line (e.g. "--remap a:=b") is not ROS arguments
        rclpy.init(args=[], context=self.context, domain_id=domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        try:
            self.node = rclpy.create_node(self.node_name, context=self.context)
            self._executor = SingleThreadedExecutor(context=self.context)
            self._executor.add_node(self.node)
            self._thread = threading.Thread(target=self._executor.spin, name="sdcpc-bag-executor", daemon=True)
            self._thread.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:
            self._executor.shutdown(timeout_sec=5.0)
            self._thread.join(timeout=5.0)
        if self.node is not None:
            self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._executor = self._thread = self.node = None


def message_class(msgtype: str, topic: str):
    """The rclpy message class of a type name such as ``sensor_msgs/msg/Image``; ``BagError`` if not installed."""
    package, _, name = msgtype.partition("/msg/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError, ValueError):
        raise BagError(f"cannot publish {topic}: its message type {msgtype} is not installed in this Python "
                       f"(no module {package}.msg with {name or 'a type'}); install its ROS 2 package or leave the "
                       "topic out with --topics") from None


def _absolute(name: str) -> str:
    return name if name.startswith("/") else f"/{name}"


def parse_remaps(items: Iterable[str]) -> dict[str, str]:
    """``["/a:=/b", "c:=d"]`` -> ``{"/a": "/b", "/c": "/d"}``; ``BagError`` for a malformed rule or a name
    that is not a valid ROS topic name."""
    from rclpy.exceptions import InvalidTopicNameException
    from rclpy.validate_full_topic_name import validate_full_topic_name

    remaps = {}
    for item in items:
        source, separator, target = item.partition(":=")
        if not separator or not source.strip() or not target.strip():
            raise BagError(f"remap rule {item!r} must look like /old/topic:=/new/topic")
        for name in (source, target):
            try:
                validate_full_topic_name(_absolute(name.strip()))
            except InvalidTopicNameException as error:
                reason = str(error).splitlines()[0].removeprefix("Invalid topic name: ").rstrip(":")
                raise BagError(f"remap rule {item!r}: {name.strip()!r} is not a valid topic name ({reason})") from None
        remaps[_absolute(source.strip())] = _absolute(target.strip())
    return remaps


def qos(choice: str, depth: int) -> QoSProfile:
    """Publisher QoS: ``reliable`` or ``sensor_data`` (best effort), keep last ``depth``, volatile."""
    if choice not in QOS_CHOICES:
        raise BagError(f"unknown QoS {choice!r}; accepted: {', '.join(QOS_CHOICES)}")
    reliability = ReliabilityPolicy.RELIABLE if choice == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


@dataclass(frozen=True)
class PlayResult:
    """What a ``BagPlayer.play`` call published."""

    messages: int
    topics: int
    loops: int  # complete passes over the bag
    bag_seconds: float  # recorded time span of one pass
    seconds: float  # wall time
    rate: float

    def summary_line(self) -> str:
        return (f"published {self.messages} messages on {self.topics} topic(s) in {self.seconds:.1f} s ({self.loops} "
                f"pass(es) over {self.bag_seconds:.1f} s of recording at rate {self.rate:g})")


class BagPlayer:
    """Publishes ``topics`` of an open bag (all when None) on ``node``, renamed by ``remap``."""

    def __init__(self, node, reader: BagReader, topics: Iterable[str] | None = None,
                 remap: dict[str, str] | None = None, qos_choice: str = "reliable", depth: int = 10) -> None:
        self.reader = reader
        self.topics = list(reader.topics) if topics is None else list(topics)
        if not self.topics:
            raise BagError(f"bag {reader.path} has no topics to play")
        for topic in self.topics:
            if topic not in reader.topics:
                raise BagError(f"topic {topic} is not in bag {reader.path}; its topics: {reader.describe_topics()}")
        remap = remap or {}
        unknown = sorted(set(remap) - set(self.topics))
        if unknown:
            raise BagError(f"remapped topic(s) {', '.join(unknown)} are not played from bag {reader.path}; played "
                           f"topics: {', '.join(self.topics)}")
        profile = qos(qos_choice, depth)
        self.published_names = {topic: remap.get(topic, topic) for topic in self.topics}
        self.publishers = {topic: node.create_publisher(message_class(reader.topics[topic][0], topic),
                                                        self.published_names[topic], profile)
                           for topic in self.topics}

    def subscribers(self, topic: str) -> int:
        """Subscribers currently matched on the publisher of bag topic ``topic``."""
        return self.publishers[topic].get_subscription_count()

    def play(self, rate: float = 1.0, loop: bool = False, stop: threading.Event | None = None,
             on_publish: Callable[[BagMessage, float], None] | None = None, progress: bool = True) -> PlayResult:
        """Publishes every message at ``first wall time + (log time - first log time) / rate``.

        ``loop``: start again after the last message until ``stop`` is set. ``on_publish(message,
        perf_counter_time)`` is called right after each publish. Returns what was published.
        """
        from tqdm.auto import tqdm

        if not rate > 0:
            raise BagError(f"rate must be > 0, got {rate}")
        stop = stop or threading.Event()
        total = sum(self.reader.count(topic) for topic in self.topics)
        published = loops = 0
        first_log = last_log = None
        began = time.perf_counter()
        bar = tqdm(total=total, desc="play", unit="msg", disable=not progress, leave=False)
        while True:
            start = time.perf_counter()
            for message in self.reader.messages(self.topics):
                if first_log is None:
                    first_log = message.log_time_ns
                delay = start + (message.log_time_ns - first_log) / NS_PER_S / rate - time.perf_counter()
                if stop.is_set() or (delay > 0 and stop.wait(delay)):
                    break
                self.publishers[message.topic].publish(message.raw)
                if on_publish is not None:
                    on_publish(message, time.perf_counter())
                published += 1
                last_log = message.log_time_ns
                bar.update(1)
            else:
                loops += 1
            if stop.is_set() or not loop or not published:
                break
            bar.reset()
        bar.close()
        span = (last_log - first_log) / NS_PER_S if published else 0.0
        return PlayResult(published, len(self.topics), loops, span, time.perf_counter() - began, rate)
