"""The segment node over real ROS 2 messaging (rclpy from the ROS 2 wheels), in this process.

One rclpy context for the module, on a random ROS_DOMAIN_ID, with an executor spinning in a thread;
every test starts its own node in its own namespace. The model is a tiny SD-CPC checkpoint written
by the test (5 classes, 64x96 input), so a frame takes milliseconds.
"""
import array
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed: pip install -e '.[ros]'")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rcl_interfaces.msg import Log  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

import sdcpc_ros.segment_node as segment_node  # noqa: E402
from sdcpc_core.classes import ClassInfo, ClassList  # noqa: E402
from sdcpc_core.models import build_model  # noqa: E402
from sdcpc_core.weights import save_weights  # noqa: E402
from sdcpc_ros.image_codec import array_to_image_fields  # noqa: E402
from sdcpc_ros.parameters import NodeConfig, ParameterError, latched_qos  # noqa: E402
from sdcpc_ros.pipeline import FrameQueue  # noqa: E402
from sdcpc_ros.segment_node import SegmentLifecycleNode, SegmentNode, StartupError  # noqa: E402

pytestmark = pytest.mark.ros  # every test here needs ROS 2 (rclpy and the message packages)

CLASSES = ClassList(tuple(ClassInfo(i, name, color) for i, (name, color) in enumerate([
    ("road", (128, 64, 128)), ("person", (220, 20, 60)), ("car", (0, 0, 142)), ("sky", (70, 130, 180)),
    ("vegetation", (107, 142, 35))])), dataset="test")
DYNAMIC_IDS = (1, 2)  # person, car: the default dynamic_classes that this list has
CAMERA = (48, 80)  # camera image (height, width)
PERIOD_NS = 33_333_333
_names = itertools.count()


# --------------------------------------------------------------------------------------------- harness
class Graph:
    """An rclpy context with one executor spinning in a thread, plus a node for the test's own topics."""

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.nodes = []
        self.tester = self.add(rclpy.create_node(f"tester_{os.getpid()}", context=self.context))
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def remove(self, node) -> None:
        self.executor.remove_node(node)
        self.nodes.remove(node)
        node.destroy_node()

    def close(self) -> None:
        self.executor.shutdown()
        for node in self.nodes:
            node.destroy_node()
        rclpy.shutdown(context=self.context)


class Probe:
    """Collects the messages of one topic."""

    def __init__(self, graph: Graph, message_type, topic: str, qos=None) -> None:
        self.messages = []
        self._lock = threading.Lock()
        self.subscription = graph.tester.create_subscription(message_type, topic, self._store,
                                                             qos or QoSProfile(depth=100))

    def _store(self, msg) -> None:
        with self._lock:
            self.messages.append(msg)

    def __len__(self) -> int:
        with self._lock:
            return len(self.messages)

    def wait(self, count: int = 1, timeout: float = 10.0) -> list:
        wait_for(lambda: len(self) >= count, timeout, f"{count} message(s) on {self.subscription.topic_name}")
        with self._lock:
            return list(self.messages)


def wait_for(predicate, timeout: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def graph():
    with pytest.MonkeyPatch.context() as patch:  # read by rclpy.init: no cross-talk with other runs
        patch.setenv("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 200)))
        patch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        graph = Graph()
        yield graph
        graph.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_temporal_model):
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_weights(tiny_temporal_model, path, metadata={"classes": CLASSES.to_json()})
    return path


def start(graph, checkpoint, node_class=SegmentNode, **params):
    """A segment node in a fresh namespace with the tiny model; reliable QoS so no test frame is lost."""
    values = {"model": str(checkpoint), "input_height": 64, "input_width": 96, "input_qos": "default", **params}
    namespace = f"/t{next(_names)}_{os.getpid()}"
    node = node_class(context=graph.context, namespace=namespace,
                      parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
    return graph.add(node)


def running(graph, checkpoint, **params):
    """A started node, a probe on its semantic_mask and a connected publisher of its images."""
    node = start(graph, checkpoint, **params)
    masks = Probe(graph, Image, topic(node, "semantic_mask"))
    return node, masks, image_publisher(graph, node)


def topic(node, name: str) -> str:
    return f"{node.get_namespace()}/{name}"


def image_msg(pixels, encoding="rgb8", stamp_ns=10 * 10**9, frame_id="camera") -> Image:
    msg = Image(**array_to_image_fields(pixels, encoding))
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    msg.header.frame_id = frame_id
    return msg


def scene(seed=0, shape=CAMERA, channels=3):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (*shape, channels) if channels > 1 else shape, dtype=np.uint8)


def connected(publisher, subscribers: int = 1) -> None:
    wait_for(lambda: publisher.get_subscription_count() >= subscribers, 10.0, f"a subscriber on {publisher.topic_name}")


def image_publisher(graph, node, message_type=Image, name="image"):
    publisher = graph.tester.create_publisher(message_type, topic(node, name), QoSProfile(depth=100))
    connected(publisher)
    return publisher


def send_and_wait(publisher, probe, msg, timeout=10.0):
    """Publishes ``msg`` and waits for one more message on ``probe``."""
    before = len(probe)
    publisher.publish(msg)
    return probe.wait(before + 1, timeout)[-1]


def stamp_ns(header) -> int:
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def diagnostics(graph, node, probe, predicate=lambda values: True, timeout=5.0) -> dict:
    """The node's newest diagnostics key/values (with the level and message) that satisfy ``predicate``."""
    name = f"{node.get_namespace()}/{node.get_name()}: semantic segmentation"
    found = {}

    def newest():
        for array_msg in reversed(probe.messages):
            for status in array_msg.status:
                if status.name == name:
                    found.clear()
                    found.update({kv.key: kv.value for kv in status.values}, level=status.level,
                                 message=status.message, hardware_id=status.hardware_id)
                    return predicate(found)
        return False

    wait_for(newest, timeout, f"diagnostics of {name}")
    return dict(found)


@pytest.fixture
def diagnostics_probe(graph):
    probe = Probe(graph, DiagnosticArray, "/diagnostics")
    yield probe
    graph.tester.destroy_subscription(probe.subscription)


# ----------------------------------------------------------------------------------------------- outputs
def test_outputs_carry_the_input_header_size_and_encoding(graph, checkpoint):
    node = start(graph, checkpoint, publish_confidence=True)
    probes = {name: Probe(graph, Image, topic(node, f"semantic_mask{suffix}")) for name, suffix in
              [("mask", ""), ("color", "/color"), ("confidence", "/confidence"), ("dynamic", "/dynamic")]}
    for name in ("color", "confidence", "dynamic"):
        connected(getattr(node.runtime.outputs, name))
    publisher = image_publisher(graph, node)
    sent = []
    for index, encoding in enumerate(["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "rgb8"]):
        pixels = scene(index, channels={"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}[encoding])
        msg = image_msg(pixels, encoding, 10 * 10**9 + index * PERIOD_NS, frame_id="front_camera")
        sent.append(msg.header)
        send_and_wait(publisher, probes["mask"], msg)
    for probe in probes.values():
        probe.wait(len(sent))
    masks = probes["mask"].messages
    for name, probe in probes.items():
        assert [stamp_ns(m.header) for m in probe.messages] == [stamp_ns(h) for h in sent], name
        assert {m.header.frame_id for m in probe.messages} == {"front_camera"}, name
        assert {(m.height, m.width) for m in probe.messages} == {CAMERA}, name
    assert {m.encoding for m in masks} == {"mono8"}
    assert {m.encoding for m in probes["color"].messages} == {"rgb8"}
    assert {m.encoding for m in probes["confidence"].messages} == {"32FC1"}
    assert {m.encoding for m in probes["dynamic"].messages} == {"mono8"}
    for mask, color, confidence, dynamic in zip(*(probes[k].messages for k in
                                                  ("mask", "color", "confidence", "dynamic"))):
        labels = np.frombuffer(mask.data, np.uint8).reshape(CAMERA)
        assert labels.max() < len(CLASSES)
        np.testing.assert_array_equal(np.frombuffer(color.data, np.uint8).reshape(*CAMERA, 3),
                                      CLASSES.colorize(labels))
        np.testing.assert_array_equal(np.frombuffer(dynamic.data, np.uint8).reshape(CAMERA),
                                      np.where(np.isin(labels, DYNAMIC_IDS), 255, 0))
        probability = np.frombuffer(confidence.data, np.float32)
        assert probability.min() >= 1 / len(CLASSES) - 1e-6 and probability.max() <= 1 + 1e-6
    assert len({bytes(m.data) for m in masks}) > 1, "different scenes should give different masks"


def test_class_list_is_latched_and_a_parameter(graph, checkpoint):
    node = start(graph, checkpoint)
    probe = Probe(graph, String, topic(node, "semantic_mask/classes"), latched_qos())  # subscribes late
    received = json.loads(probe.wait(1)[0].data)
    assert ClassList.from_dict(received) == CLASSES
    assert [(c["id"], c["name"], c["color"]) for c in received["classes"]][1] == (1, "person", [220, 20, 60])
    assert ClassList.from_json(node.get_parameter("classes").value) == CLASSES
    result = node.set_parameters([Parameter("classes", value="[]")])[0]
    assert not result.successful


def test_network_resolution_and_camera_info(graph, checkpoint):
    node = start(graph, checkpoint, output_resolution="network")
    masks = Probe(graph, Image, topic(node, "semantic_mask"))
    infos = Probe(graph, CameraInfo, topic(node, "semantic_mask/camera_info"))
    connected(node.runtime.outputs.camera_info)
    info_publisher = graph.tester.create_publisher(CameraInfo, topic(node, "camera_info"), QoSProfile(depth=1))
    connected(info_publisher)
    info = CameraInfo(height=CAMERA[0], width=CAMERA[1], distortion_model="plumb_bob", d=[0.1, 0.0, 0.0, 0.0, 0.0],
                      k=np.array([60.0, 0, 40, 0, 60, 24, 0, 0, 1]),
                      p=np.array([60.0, 0, 40, 5, 0, 60, 24, 0, 0, 0, 1, 0]))
    info.header.frame_id = "camera_optical"
    info_publisher.publish(info)
    wait_for(lambda: node.runtime.pipeline._camera_info is not None, 5.0, "camera_info at the node")
    publisher = image_publisher(graph, node)
    mask = send_and_wait(publisher, masks, image_msg(scene(), stamp_ns=12 * 10**9 + 5, frame_id="cam"))
    # letterbox: 48x80 fits 64x96 as 58x96 (scale 1.2); the network output is its 1/4: 15x24
    assert (mask.height, mask.width) == (15, 24)
    scaled = infos.wait(1)[0]
    assert stamp_ns(scaled.header) == 12 * 10**9 + 5 and scaled.header.frame_id == "cam"
    assert (scaled.height, scaled.width) == (15, 24)
    sx, sy = 24 / CAMERA[1], 15 / CAMERA[0]
    np.testing.assert_allclose(scaled.k, [60 * sx, 0, 40 * sx, 0, 60 * sy, 24 * sy, 0, 0, 1])
    np.testing.assert_allclose(scaled.p, [60 * sx, 0, 40 * sx, 5 * sx, 0, 60 * sy, 24 * sy, 0, 0, 0, 1, 0])
    assert list(scaled.d) == list(info.d) and scaled.distortion_model == "plumb_bob"


def test_more_than_255_classes_give_mono16(graph, tmp_path):
    model = build_model("sdcpc_b0", 300, coarse_tokens=4, window=3).eval()
    path = tmp_path / "wide.safetensors"
    wide = ClassList(tuple(ClassInfo(i, f"class_{i}", (i % 256, i // 256, 0)) for i in range(300)), ignore_id=65535)
    save_weights(model, path, metadata={"classes": wide.to_json()})
    node = start(graph, path, publish_dynamic=False)
    masks = Probe(graph, Image, topic(node, "semantic_mask"))
    colors = Probe(graph, Image, topic(node, "semantic_mask/color"))
    connected(node.runtime.outputs.color)
    mask = send_and_wait(image_publisher(graph, node), masks, image_msg(scene()))
    assert mask.encoding == "mono16" and mask.step == 2 * CAMERA[1]
    labels = np.frombuffer(mask.data, np.uint16).reshape(CAMERA)
    color = np.frombuffer(colors.wait(1)[0].data, np.uint8).reshape(*CAMERA, 3)
    np.testing.assert_array_equal(color, wide.colorize(labels))
    assert node.runtime.outputs.dynamic is None
    assert ClassList.from_json(node.get_parameter("classes").value) == wide


# ------------------------------------------------------------------------------------------ bad input
def _bad_images():
    good = image_msg(scene())
    short = image_msg(scene())
    short.data = array.array("B", bytes(len(good.data) - 3))
    padded = image_msg(scene())
    padded.step += 4  # data no longer height x step
    unsupported = image_msg(scene(shape=CAMERA, channels=1).astype(np.uint16).astype(np.uint16), "mono16")
    empty = Image(height=0, width=CAMERA[1], encoding="rgb8", step=3 * CAMERA[1])
    huge = image_msg(scene(shape=(200, 200)))  # 40000 pixels > max_image_pixels below
    return {"size": [short, padded], "encoding": [unsupported], "zero_size": [empty], "too_large": [huge]}


def test_bad_messages_are_skipped_counted_and_logged_once(graph, checkpoint, diagnostics_probe):
    node = start(graph, checkpoint, max_image_pixels=10000)
    logs = Probe(graph, Log, "/rosout", QoSProfile(depth=1000))
    masks = Probe(graph, Image, topic(node, "semantic_mask"))
    publisher = image_publisher(graph, node)
    bad = _bad_images()
    for round_ in range(2):
        for messages in bad.values():
            for msg in messages:
                publisher.publish(msg)
                time.sleep(0.02)  # one at a time: with the default (newest frame) policy none is dropped
        mask = send_and_wait(publisher, masks, image_msg(scene(), stamp_ns=(20 + round_) * 10**9))
    assert stamp_ns(mask.header) == 21 * 10**9  # still alive after every kind, twice
    expected = {kind: 2 * len(messages) for kind, messages in bad.items()}
    values = diagnostics(graph, node, diagnostics_probe,
                         lambda v: int(v["bad messages"]) == sum(expected.values()))
    for kind, count in expected.items():
        assert values[f"bad messages: {kind}"] == str(count), kind
    assert values["bad messages: corrupt"] == "0" and values["errors"] == "0"
    assert values["processed"] == "2" and values["dropped"] == "0"
    ours = [m.msg for m in logs.messages if m.name.endswith(node.get_name()) and "Skipping a bad image" in m.msg]
    assert sorted(m.split("(")[1].split(")")[0] for m in ours) == sorted(expected), ours
    assert any("image data has" in m and "height x step" in m for m in ours)


def test_compressed_input_and_corrupt_jpeg(graph, checkpoint, diagnostics_probe, capfd):
    """Truncated JPEGs and PNGs (one JPEG with an end marker appended, which decodes with a warning) are
    corrupt frames: counted, logged once, and no decoder line reaches stderr."""
    node = start(graph, checkpoint, use_compressed=True, process_every_frame=True, input_qos="reliable")
    masks = Probe(graph, Image, topic(node, "semantic_mask"))
    publisher = image_publisher(graph, node, CompressedImage, "image/compressed")
    pixels = scene()
    ok, jpeg = cv2.imencode(".jpg", pixels[:, :, ::-1])
    ok_png, png = cv2.imencode(".png", pixels[:, :, ::-1])
    assert ok and ok_png
    jpeg, png = jpeg.tobytes(), png.tobytes()

    def compressed(data, stamp):
        msg = CompressedImage(format="rgb8; jpeg compressed bgr8", data=array.array("B", bytes(data)))
        msg.header.stamp.sec, msg.header.frame_id = stamp, "camera"
        return msg

    capfd.readouterr()
    bad = [jpeg[: len(jpeg) // 2], b"\xff\xd8" + bytes(200), jpeg[: len(jpeg) // 2] + b"\xff\xd9",
           png[: len(png) // 2], png[:-20]]
    for stamp, data in enumerate(bad * 3, start=1):
        publisher.publish(compressed(data, stamp))
    mask = send_and_wait(publisher, masks, compressed(jpeg, 100))
    assert stamp_ns(mask.header) == 100 * 10**9 and (mask.height, mask.width) == CAMERA
    values = diagnostics(graph, node, diagnostics_probe, lambda v: v["bad messages: corrupt"] == str(3 * len(bad)))
    assert values["processed"] == "1"
    err = capfd.readouterr().err
    assert "Corrupt JPEG" not in err and "libpng" not in err and "Premature end" not in err, err
    assert err.count("Skipping a bad image message (corrupt)") == 1, err


def test_segmentation_errors_are_counted_and_the_worker_goes_on(graph, checkpoint, diagnostics_probe):
    node, masks, publisher = running(graph, checkpoint)
    segmenter = node.runtime.segmenter
    real_step = segmenter.step
    failures = iter([RuntimeError("out of memory")])

    def failing_step(*args, **kwargs):
        error = next(failures, None)
        if error is not None:
            raise error
        return real_step(*args, **kwargs)

    segmenter.step = failing_step
    publisher.publish(image_msg(scene(), stamp_ns=10**9))
    wait_for(lambda: node.runtime.stats.snapshot().errors == 1, 5.0, "the failed frame to be counted")
    mask = send_and_wait(publisher, masks, image_msg(scene(), stamp_ns=2 * 10**9))
    assert stamp_ns(mask.header) == 2 * 10**9
    values = diagnostics(graph, node, diagnostics_probe, lambda v: v["processed"] == "1")
    assert values["errors"] == "1"


# ---------------------------------------------------------------------------------------- time and rates
def test_stamp_going_backwards_resets_the_buffer(graph, checkpoint, diagnostics_probe):
    node, masks, publisher = running(graph, checkpoint)
    stamps = [100 * 10**9 + i * PERIOD_NS for i in range(4)] + [50 * 10**9, 50 * 10**9 + PERIOD_NS]
    for index, stamp in enumerate(stamps):
        send_and_wait(publisher, masks, image_msg(scene(index), stamp_ns=stamp))
    assert [stamp_ns(m.header) for m in masks.messages] == stamps
    values = diagnostics(graph, node, diagnostics_probe, lambda v: v["processed"] == str(len(stamps)))
    assert values["buffer resets"] == "1"
    assert "went backwards" in values["last reset"]
    assert node.runtime.segmenter.buffered_stamps == stamps[-2:]


def test_diagnostics_report_rates_latency_and_backend(graph, checkpoint, diagnostics_probe):
    node, masks, publisher = running(graph, checkpoint)
    idle = diagnostics(graph, node, diagnostics_probe)
    assert idle["message"] == "waiting for images" and idle["backend"] == "eager" and idle["hardware_id"] == "cpu"
    for index in range(10):
        now = node.get_clock().now().nanoseconds
        send_and_wait(publisher, masks, image_msg(scene(index), stamp_ns=now))
    values = diagnostics(graph, node, diagnostics_probe, lambda v: v["processed"] == "10")
    assert float(values["processed rate (Hz)"]) > 0 and float(values["input rate (Hz)"]) > 0
    p50, p95 = float(values["latency p50 (ms)"]), float(values["latency p95 (ms)"])
    assert 0 < p50 <= p95 < 5000
    assert values["level"] == b"\x00" and values["message"] == "running"


# ------------------------------------------------------------------------------------------ threading
class SlowSegmenter:
    """A real StreamingSegmenter whose steps take ``delay_s`` longer: a slow model without the CPU load."""

    def __init__(self, segmenter, delay_s: float) -> None:
        self.inner = segmenter
        self.delay_s = delay_s

    def step(self, *args, **kwargs):
        time.sleep(self.delay_s)
        return self.inner.step(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def slow_model(monkeypatch):
    """Makes the nodes started in the test run a model that needs ``delay[0]`` s more per frame."""
    delay = [0.1]
    real = segment_node.load_segmenter

    def load(config):
        segmenter, classes = real(config)
        return SlowSegmenter(segmenter, delay[0]), classes

    monkeypatch.setattr(segment_node, "load_segmenter", load)
    return delay


def taken_first(node) -> None:
    """Waits until the node received one frame and its worker took it."""
    wait_for(lambda: node.runtime.stats.snapshot().received == 1 and node.runtime.pipeline.waiting == 0, 5.0,
             "the worker to take the first frame")


def test_busy_worker_keeps_only_the_newest_frame(graph, checkpoint, slow_model):
    slow_model[0] = 0.3
    node, masks, publisher = running(graph, checkpoint)
    stamps = [10**9 * (1 + i) // 30 for i in range(6)]
    publisher.publish(image_msg(scene(), stamp_ns=stamps[0]))
    taken_first(node)
    for stamp in stamps[1:]:  # arrive while the first frame is being processed
        publisher.publish(image_msg(scene(), stamp_ns=stamp))
    masks.wait(2)
    time.sleep(0.4)
    assert [stamp_ns(m.header) for m in masks.messages] == [stamps[0], stamps[-1]]
    snapshot = node.runtime.stats.snapshot()
    assert (snapshot.received, snapshot.processed, snapshot.dropped) == (6, 2, 4)


def test_process_every_frame_queues_in_order(graph, checkpoint, slow_model):
    slow_model[0] = 0.05
    node, masks, publisher = running(graph, checkpoint, process_every_frame=True, queue_size=4, input_qos="reliable")
    stamps = [10**9 + i * PERIOD_NS for i in range(10)]
    publisher.publish(image_msg(scene(), stamp_ns=stamps[0]))
    taken_first(node)
    for stamp in stamps[1:]:
        publisher.publish(image_msg(scene(), stamp_ns=stamp))
    masks.wait(5)
    time.sleep(0.3)
    received = [stamp_ns(m.header) for m in masks.messages]
    assert received == [stamps[0], *stamps[-4:]]  # in order; a full queue drops its oldest
    assert node.runtime.stats.snapshot().dropped == 5


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc to read the memory in use")
def test_30hz_into_a_slow_model_for_20s_keeps_memory_bounded(graph, checkpoint, slow_model, diagnostics_probe):
    slow_model[0] = 0.1  # about 9 frames a second: two of every three frames must be dropped
    node = start(graph, checkpoint)
    masks = Probe(graph, Image, topic(node, "semantic_mask"), QoSProfile(depth=10))
    publisher = image_publisher(graph, node)
    frame = scene(shape=(240, 320))
    period = 1 / 30
    start_time = time.monotonic()
    rss, waiting = {}, []
    for index in range(int(20 / period)):
        msg = image_msg(frame, stamp_ns=node.get_clock().now().nanoseconds)
        publisher.publish(msg)
        waiting.append(node.runtime.pipeline.waiting)
        elapsed = time.monotonic() - start_time
        for mark in (5, 20 - 2 * period):
            if mark not in rss and elapsed >= mark:
                rss[mark] = _rss_bytes()
        time.sleep(max(0.0, (index + 1) * period - (time.monotonic() - start_time)))
    wait_for(lambda: node.runtime.pipeline.waiting == 0, 5.0, "the last frame")
    time.sleep(0.3)
    snapshot = node.runtime.stats.snapshot()
    assert max(waiting) <= 1
    assert len(node.runtime.segmenter.cache) <= node.runtime.segmenter.config.entries_limit
    growth = rss[20 - 2 * period] - rss[5]
    assert growth < 32 * 2**20, f"memory grew by {growth / 2**20:.1f} MiB from 5 s to 20 s"
    assert snapshot.received >= 590  # a frame may be lost to the reader's history depth, before the node sees it
    assert snapshot.dropped == snapshot.received - snapshot.processed > 300
    assert len(masks) == snapshot.processed
    values = diagnostics(graph, node, diagnostics_probe, lambda v: v["received"] == str(snapshot.received),
                         timeout=3.0)
    assert int(values["dropped"]) == snapshot.dropped
    assert values["message"] == "running"


# ------------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("params, words", [
    ({"input_height": 100},
     "parameter 'input_height' must be 0 (the checkpoint's recommended size) or a multiple of 32 in 32..8192"),
    ({"input_width": 0}, "parameters 'input_height' and 'input_width' must both be 0 (the checkpoint's recommended "
                         "size) or both be set; got 64x0"),
    ({"backend": "magic"},
     "parameter 'backend' must be one of eager, compile, cudagraph, onnxruntime, tensorrt; got 'magic'"),
    ({"compile_mode": "fast"}, "parameter 'compile_mode' must be empty (inductor's default) or one of default, "
                               "reduce-overhead, max-autotune, max-autotune-no-cudagraphs; got 'fast'"),
    ({"device": "gpu"}, "parameter 'device' must be cpu, cuda or cuda:N"),
    ({"frame_period_s": 0.0}, "parameter 'frame_period_s' must be a number in 0.001..10.0"),
    ({"max_gap_s": 2}, "parameter 'max_gap_s' must be a number in 0.001..3600.0"),
    ({"reference_offsets": [3, 3]}, "parameter 'reference_offsets' must be a non-empty list of distinct integers"),
    ({"queue_size": 0}, "parameter 'queue_size' must be an integer in 1..10000"),
    ({"output_qos": "fast"}, "parameter 'output_qos' must be one of sensor_data, default, reliable"),
    ({"model": " "}, "parameter 'model' must be a shipped model name or a checkpoint path"),
    ({"precision": "fp16"}, "parameter 'precision' fp16 needs a CUDA device but parameter 'device' is cpu"),
])
def test_invalid_parameters_are_refused_at_start_up(graph, checkpoint, params, words):
    with pytest.raises(ParameterError) as caught:
        start(graph, checkpoint, **params)
    assert str(caught.value).startswith(words), str(caught.value)


@pytest.mark.parametrize("params, words", [
    ({"model": "missing/model.safetensors"}, r"parameter 'model' \('missing/model.safetensors'\): .*not found"),
    ({"model": "no_such_model"},
     r"parameter 'model' .*unknown checkpoint name 'no_such_model' \(shipped names: sdcpc_b0_synthetic\)"),
    ({"class_palette_file": "cityscapes"}, "class list of cityscapes has 19 classes but the model predicts 5"),
    ({"class_palette_file": "missing.yaml"}, "parameter 'class_palette_file': class list file not found"),
    ({"device": "cuda:7"}, "parameter 'device' is 'cuda:7' but this machine has"),
    ({"backend": "tensorrt"}, r"parameters backend \(tensorrt\).*needs the Python package 'torch_tensorrt'"),
])
def test_unusable_model_settings_are_refused_at_start_up(graph, checkpoint, params, words):
    with pytest.raises(StartupError, match=words):
        start(graph, checkpoint, **params)


def test_parameters_have_descriptors_and_are_read_only(graph, checkpoint):
    node = start(graph, checkpoint)
    height = node.describe_parameter("input_height")
    assert height.integer_range[0].from_value == 0 and height.integer_range[0].step == 32  # 0: the checkpoint's
    assert height.read_only and "multiple of 32" in height.additional_constraints
    assert node.describe_parameter("max_gap_s").floating_point_range[0].to_value == 3600.0
    assert "one of camera, network" in node.describe_parameter("output_resolution").additional_constraints
    assert set(NodeConfig.names()) <= set(node._parameters)
    assert not node.set_parameters([Parameter("queue_size", value=3)])[0].successful


@pytest.mark.parametrize("model, params, size, source", [
    ("sdcpc_b0_synthetic", {}, (256, 480), "the checkpoint's recommended size"),
    ("sdcpc_b0_synthetic", {"input_height": 128, "input_width": 256}, (128, 256),
     "the input_height and input_width parameters"),
    ("tiny", {}, (480, 864), "the default: the checkpoint recommends none"),
])
def test_input_size_is_the_checkpoints_unless_the_parameters_set_it(graph, checkpoint, capfd, model, params, size,
                                                                   source):
    """input_height / input_width default to 0: the checkpoint's recommended size (the shipped model's 256x480,
    else 480x864); the size used is logged at start-up and is the network's input (masks at 1/4 of it)."""
    values = {"model": str(checkpoint) if model == "tiny" else model, "input_qos": "default",
              "output_resolution": "network", **params}
    node = graph.add(SegmentNode(context=graph.context, namespace=f"/size{next(_names)}_{os.getpid()}",
                                 parameter_overrides=[Parameter(k, value=v) for k, v in values.items()]))
    assert (node.get_parameter("input_height").value, node.get_parameter("input_width").value) == \
        (params.get("input_height", 0), params.get("input_width", 0))
    assert node.runtime.segmenter.config.input_size == size
    assert f"Network input {size[0]}x{size[1]} ({source}" in capfd.readouterr().err
    masks = Probe(graph, Image, topic(node, "semantic_mask"))
    mask = send_and_wait(image_publisher(graph, node), masks, image_msg(scene(shape=size)), timeout=60.0)
    assert (mask.height, mask.width) == (size[0] // 4, size[1] // 4)


# -------------------------------------------------------------------------------------------- lifecycle
def _transition(graph, node, client, transition_id):
    request = ChangeState.Request()
    request.transition.id = transition_id
    future = client.call_async(request)
    wait_for(future.done, 10.0, f"lifecycle transition {transition_id}")
    return future.result().success


def test_lifecycle_node_loads_subscribes_stops_and_frees(graph, checkpoint):
    node = start(graph, checkpoint, node_class=SegmentLifecycleNode)
    client = graph.tester.create_client(ChangeState, f"{node.get_namespace()}/{node.get_name()}/change_state")
    assert client.wait_for_service(timeout_sec=10.0)
    assert node.runtime is None and node.count_subscribers(topic(node, "image")) == 0

    # parameters can change while unconfigured, and are still validated
    assert not node.set_parameters([Parameter("input_height", value=50)])[0].successful
    assert node.set_parameters([Parameter("output_resolution", value="network")])[0].successful

    assert _transition(graph, node, client, Transition.TRANSITION_CONFIGURE)
    assert node.runtime is not None and node.runtime.config.output_resolution == "network"
    assert node.count_subscribers(topic(node, "image")) == 0  # configured, not active: no subscription
    assert not node.set_parameters([Parameter("queue_size", value=3)])[0].successful
    assert ClassList.from_json(node.get_parameter("classes").value) == CLASSES

    masks = Probe(graph, Image, topic(node, "semantic_mask"))
    assert _transition(graph, node, client, Transition.TRANSITION_ACTIVATE)
    publisher = image_publisher(graph, node)
    mask = send_and_wait(publisher, masks, image_msg(scene(), stamp_ns=5 * 10**9))
    assert (mask.height, mask.width) == (15, 24)  # network resolution, set while unconfigured

    assert _transition(graph, node, client, Transition.TRANSITION_DEACTIVATE)
    wait_for(lambda: publisher.get_subscription_count() == 0, 5.0, "the node to unsubscribe")
    publisher.publish(image_msg(scene(), stamp_ns=6 * 10**9))
    time.sleep(0.3)
    assert len(masks) == 1

    assert _transition(graph, node, client, Transition.TRANSITION_CLEANUP)
    assert node.runtime is None
    assert node._state_machine.current_state[0] == State.PRIMARY_STATE_UNCONFIGURED


def test_lifecycle_configure_fails_cleanly_on_a_bad_model(graph, checkpoint):
    node = start(graph, checkpoint, node_class=SegmentLifecycleNode, model="missing.safetensors")
    assert node.trigger_configure() == rclpy.lifecycle.TransitionCallbackReturn.FAILURE
    assert node.runtime is None
    assert node.set_parameters([Parameter("model", value=str(checkpoint))])[0].successful
    assert node.trigger_configure() == rclpy.lifecycle.TransitionCallbackReturn.SUCCESS
    assert node.runtime is not None


# -------------------------------------------------------------------------------------- frame queue
def test_frame_queue_drops_the_oldest_and_closes():
    queue = FrameQueue(2)
    assert [queue.put(frame) for frame in "abc"] == [False, False, True]
    assert len(queue) == 2 and queue.get(0) == "b"
    assert queue.close() == 1  # "c" was still waiting
    assert queue.closed and queue.get(0) is None
    assert queue.put("d") == 1 and len(queue) == 0  # a closed queue takes nothing (one frame dropped)
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        FrameQueue(0)


def test_frame_queue_bounds_the_bytes_it_holds():
    queue = FrameQueue(100, max_bytes=10, size=len)
    assert queue.put("aaaa") == 0 and queue.put("bbbb") == 0
    assert queue.put("cccc") == 1 and queue.bytes == 8  # 12 bytes > 10: the oldest goes
    assert queue.put("x" * 20) == 2 and len(queue) == 1  # alone above the limit: kept, the others dropped
    assert queue.get(0) == "x" * 20 and queue.bytes == 0


def test_process_every_frame_queue_is_bounded_in_bytes(graph, checkpoint, slow_model):
    """queue_size 10000 allows any backlog; queue_limit_mib 1 keeps one 900 KiB frame waiting at most."""
    slow_model[0] = 0.2
    node, masks, publisher = running(graph, checkpoint, process_every_frame=True, queue_size=10000,
                                     queue_limit_mib=1, input_qos="reliable")
    frame = scene(shape=(480, 640))  # rgb8: 921600 bytes
    publisher.publish(image_msg(frame, stamp_ns=10**9))
    taken_first(node)
    waiting = []
    for index in range(1, 7):
        publisher.publish(image_msg(frame, stamp_ns=10**9 + index * PERIOD_NS))
        wait_for(lambda count=index + 1: node.runtime.stats.snapshot().received == count, 5.0, f"frame {index}")
        waiting.append(node.runtime.pipeline._queue.bytes)
    masks.wait(2)
    assert max(waiting) <= 2**20
    assert node.runtime.stats.snapshot().dropped >= 4


# ------------------------------------------------------------------------------ upstream loss, stamps
def test_stamp_gaps_count_frames_missing_upstream_and_bad_stamps_are_refused(graph, checkpoint, diagnostics_probe):
    node, masks, publisher = running(graph, checkpoint)
    base = 100 * 10**9
    for k in (0, 1, 2, 5, 6, 9):  # frames 3, 4, 7 and 8 never arrive
        send_and_wait(publisher, masks, image_msg(scene(k), stamp_ns=base + k * PERIOD_NS))
    bad = image_msg(scene(), stamp_ns=base + 10 * PERIOD_NS)
    bad.header.stamp.nanosec += 10**9  # not normalised: refused, and no gap is measured from it
    publisher.publish(bad)
    wait_for(lambda: node.runtime.stats.snapshot().bad_messages["stamp"] == 1, 5.0, "the bad stamp to be refused")
    mask = send_and_wait(publisher, masks, image_msg(scene(), stamp_ns=base + 10 * PERIOD_NS))
    assert stamp_ns(mask.header) == base + 10 * PERIOD_NS
    values = diagnostics(graph, node, diagnostics_probe, lambda v: v["processed"] == "7")
    assert values["missing upstream"] == "4"
    assert values["bad messages: stamp"] == "1" and values["errors"] == "0"


# ------------------------------------------------------------------------------------------- topics
def test_camera_info_follows_the_image_topic(graph, checkpoint):
    """image_transport's convention: the camera_info beside the image topic, unless remapped itself."""
    ns = f"/ci{os.getpid()}"
    cases = [
        ([], {}, f"{ns}/t/camera_info"),
        (["image:=/cam_a/front/image_raw"], {}, "/cam_a/front/camera_info"),
        (["image:=/cam_a/front/image_raw", "camera_info:=/calibration/front"], {}, "/calibration/front"),
        (["image/compressed:=/cam_b/rear/image_raw/compressed"], {"use_compressed": True}, "/cam_b/rear/camera_info"),
    ]
    for remaps, params, expected in cases:
        values = {"model": str(checkpoint), "input_height": 64, "input_width": 96, **params}
        node = graph.add(SegmentNode(context=graph.context, namespace=f"{ns}/t",
                                     cli_args=["--ros-args", *[a for r in remaps for a in ("-r", r)]],
                                     parameter_overrides=[Parameter(k, value=v) for k, v in values.items()]))
        try:
            assert node.runtime._subscriptions[1].topic_name == expected, remaps
        finally:
            graph.remove(node)


# ------------------------------------------------------------------------ start-up mistakes, one sentence
def test_parameters_the_node_does_not_have_are_warned_about(graph, checkpoint, capfd):
    start(graph, checkpoint, input_size=[128, 256], devise="cuda")
    err = capfd.readouterr().err
    assert "parameter 'input_size' is not a parameter of segment_node and is ignored; did you mean input_qos, " \
           "input_width or input_qos_depth?" in err
    assert "parameter 'devise' is not a parameter of segment_node and is ignored; did you mean device?" in err
    assert "'model' is not a parameter" not in err and "'input_height' is not a parameter" not in err


@pytest.mark.parametrize("ros_args, words", [
    (["-p", "reference_offsets:=[]"], "parameter 'reference_offsets' must be a non-empty list of distinct integers"),
    (["-p", "dynamic_classes:=[]"], "parameter 'dynamic_classes' must be a non-empty list of class names; got []"),
    (["--params-file", "{bad_yaml}"], "the ROS arguments cannot be used: Couldn't parse params file"),
    (["--params-file", "{missing}"], "the ROS arguments cannot be used: Couldn't parse params file"),
    (["-r", "image:=bad name"], "Couldn't parse remap rule: '-r image:=bad name'"),
    (["-r", "image:=bad", "name"], "unknown ROS argument(s) name after --ros-args (quote a value with spaces)"),
    (["-r", "__ns:=/front", "-p", "model:=missing.safetensors"],
     "[front.segment_node]: Cannot start: parameter 'model' ('missing.safetensors'): checkpoint not found"),
])
def test_start_up_mistakes_are_one_sentence_and_exit_status_2(tmp_path, capfd, ros_args, words):
    """What ``segment_node`` does with its command line (``run_node``), here in this process: these stop
    before the node would spin."""
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("a: [\n")
    args = [a.format(bad_yaml=bad_yaml, missing=tmp_path / "missing.yaml") for a in ros_args]
    capfd.readouterr()
    code = segment_node.run_node(SegmentNode, ["segment_node", "--ros-args", *args])
    output = "".join(capfd.readouterr())
    assert code == 2, output
    assert words in output and output.count("Cannot start") == 1, output
    assert "Traceback" not in output and "Exception" not in output and "[rcl]" not in output, output


# ------------------------------------------------------------------------------------------ signals
class NodeProcess:
    """``segment_node`` (or ``segment_lifecycle_node``) run by its entry point in a child process, on this
    module's ROS domain; its output lines are collected as they come."""

    def __init__(self, checkpoint, *ros_args, entry="main") -> None:
        code = f"import sys; from sdcpc_ros.node_main import {entry}; sys.exit({entry}())"
        command = [sys.executable, "-c", code, "--ros-args", "-r", f"__ns:=/p{next(_names)}_{os.getpid()}",
                   "-p", f"model:={checkpoint}", "-p", "input_height:=64", "-p", "input_width:=96", *ros_args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self._reader.start()

    @property
    def namespace(self) -> str:
        return next(a for a in self.process.args if a.startswith("__ns:="))[len("__ns:="):]

    def wait_for_line(self, words: str, timeout: float = 120.0) -> None:
        wait_for(lambda: any(words in line for line in self.lines) or self.process.poll() is not None, timeout,
                 f"'{words}' from the node")
        assert any(words in line for line in self.lines), self.output

    def signal(self, signum) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = 60.0) -> int:
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._reader.join(5.0)
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("delay_s", [0.3, 1.5])
def test_a_stop_signal_while_starting_exits_cleanly(graph, checkpoint, signum, delay_s):
    """In the first seconds (interpreter, rclpy, torch, the model): exit status 0, no traceback."""
    node = NodeProcess(checkpoint)
    time.sleep(delay_s)
    node.signal(signum)
    code = node.finish()
    assert code == 0, node.output
    assert "Traceback" not in node.output and "KeyboardInterrupt" not in node.output, node.output


def test_sigterm_during_inference_stops_the_worker_before_the_context(graph, checkpoint):
    """The frame in inference is finished and published, then the node stops: no error about an invalid
    context, no log line lost on its way to /rosout."""
    node = NodeProcess(checkpoint, "-p", "input_height:=1024", "-p", "input_width:=1024", "-p", "input_qos:=default")
    try:
        node.wait_for_line("Segmenting")
        masks = Probe(graph, Image, f"{node.namespace}/semantic_mask")
        publisher = graph.tester.create_publisher(Image, f"{node.namespace}/image", QoSProfile(depth=10))
        connected(publisher)
        wait_for(lambda: masks.subscription.get_publisher_count() > 0, 10.0, "the mask publisher")
        publisher.publish(image_msg(scene(), stamp_ns=7 * 10**9))
        time.sleep(0.5)  # a 1024 x 1024 frame takes seconds: the worker is in it
        node.signal(signal.SIGTERM)
        code = node.finish(120.0)
    finally:
        if node.process.poll() is None:
            node.process.kill()
    assert code == 0, node.output
    assert "Stopping (SIGTERM)" in node.output, node.output
    for words in ("ERROR", "context is invalid", "Failed to publish log message", "Traceback"):
        assert words not in node.output, node.output
    assert [stamp_ns(m.header) for m in masks.wait(1, 10.0)] == [7 * 10**9]


def test_a_second_sigint_during_shutdown_does_not_crash_the_node(graph, checkpoint):
    """launch forwards Ctrl-C while the terminal sends its own: the second SIGINT arrives during the stop."""
    node = NodeProcess(checkpoint, entry="lifecycle_main")
    node.wait_for_line("Unconfigured")
    node.signal(signal.SIGINT)
    time.sleep(0.1)
    if node.process.poll() is None:
        node.signal(signal.SIGINT)
    code = node.finish()
    assert code == 0, node.output
    assert "Traceback" not in node.output and "KeyboardInterrupt" not in node.output, node.output
