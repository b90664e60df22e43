"""``sdcpc-bag play`` and the live evaluation's connection checks, over real rclpy messaging in this process.

Every rclpy context here uses one random ROS_DOMAIN_ID (1..200) with discovery kept on this machine,
so that other test runs on the machine are not heard.
"""
import os
import random
import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed: pip install -e '.[ros]'")

from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from sdcpc_core.data.synthetic import SyntheticConfig  # noqa: E402
from sdcpc_ros.bag.bagfiles import BagError, BagReader  # noqa: E402
from sdcpc_ros.bag.live import evaluate_live  # noqa: E402
from sdcpc_ros.bag.play import BagPlayer, RosSession, message_class  # noqa: E402
from sdcpc_ros.bag.scoring import EvalOutputs  # noqa: E402
from sdcpc_ros.bag.synth import write_synthetic_bag  # noqa: E402
from sdcpc_ros.pipeline import stamp_to_ns  # noqa: E402

pytestmark = pytest.mark.ros  # every test here needs ROS 2 (rclpy and the message packages)

DOMAIN = random.SystemRandom().randint(1, 200)
FRAMES = 10
PERIOD_S = 1 / 30


@pytest.fixture(scope="module", autouse=True)
def local_discovery():
    previous = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    yield
    if previous is None:
        del os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"]
    else:
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = previous


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("play") / "drive.mcap"
    write_synthetic_bag(path, SyntheticConfig(height=32, width=48, num_frames=FRAMES, p_drop=0.0), progress=False)
    return path


def _until(condition, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_play_keeps_the_recorded_timing_and_remaps(bag, monkeypatch):
    # the program's command line is not parsed for ROS arguments (rcl would warn about "--remap A:=B" and
    # apply this rule to the listener's subscription, which then hears nothing)
    monkeypatch.setattr("sys.argv", ["sdcpc-bag", "--ros-args", "-r", "listener:/front/image:=/elsewhere"])
    arrivals = []
    with BagReader(bag) as reader, RosSession("listener", DOMAIN) as listener, RosSession("player", DOMAIN) as session:
        expected = [stamp_to_ns(reader.deserialize(m).header.stamp) for m in reader.messages(["/camera/image_raw"])]
        listener.node.create_subscription(
            Image, "/front/image", lambda m: arrivals.append((time.perf_counter(), stamp_to_ns(m.header.stamp))),
            QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        player = BagPlayer(session.node, reader, ["/camera/image_raw", "/camera/labels"],
                           {"/camera/image_raw": "/front/image"})
        assert player.published_names == {"/camera/image_raw": "/front/image", "/camera/labels": "/camera/labels"}
        assert _until(lambda: player.subscribers("/camera/image_raw") > 0)
        result = player.play(rate=2.0, progress=False)
        assert _until(lambda: len(arrivals) == FRAMES)
    assert [stamp for _, stamp in arrivals] == expected
    assert (result.messages, result.topics, result.loops) == (2 * FRAMES, 2, 1)
    span = (FRAMES - 1) * PERIOD_S / 2.0  # recorded span at rate 2
    assert result.bag_seconds == pytest.approx((FRAMES - 1) * PERIOD_S, abs=1e-3)
    assert span * 0.95 <= result.seconds < span + 1.0
    # not all at once (the player's own pace is checked above; on a busy machine the listener's
    # executor may take several messages in one go, so only a loose bound on the arrivals)
    assert arrivals[-1][0] - arrivals[0][0] >= span * 0.4


def test_play_loops_until_stopped(bag):
    stop = threading.Event()
    published = []

    def on_publish(message, when):
        published.append(message.topic)
        if len(published) == 3 * FRAMES // 2:
            stop.set()

    with BagReader(bag) as reader, RosSession("looper", DOMAIN) as session:
        player = BagPlayer(session.node, reader, ["/camera/labels"])
        result = player.play(rate=5.0, loop=True, stop=stop, on_publish=on_publish, progress=False)
    assert (result.messages, result.loops) == (3 * FRAMES // 2, 1)


def test_play_refuses_unknown_topics_and_types(bag):
    with BagReader(bag) as reader, RosSession("refuser", DOMAIN) as session:
        with pytest.raises(BagError, match=r"topic /nope is not in bag .*drive\.mcap; its topics: /camera/camera_info"):
            BagPlayer(session.node, reader, ["/nope"])
        with pytest.raises(BagError, match=r"remapped topic\(s\) /camera/labels are not played"):
            BagPlayer(session.node, reader, ["/camera/image_raw"], {"/camera/labels": "/x"})
    with pytest.raises(BagError, match="message type acme_msgs/msg/Thing is not installed"):
        message_class("acme_msgs/msg/Thing", "/thing")


def test_live_eval_without_a_node_says_what_is_missing(bag, tmp_path):
    outputs = EvalOutputs.under(tmp_path / "live")
    with pytest.raises(BagError, match=r"no running segment node found after 1 s: nothing subscribes to "
                                       r"/camera/image_raw \(start segment_node with -r image:=/camera/image_raw, on "
                                       r"the same ROS_DOMAIN_ID\); nothing publishes /semantic_mask.*; no class list"):
        evaluate_live(bag, outputs, wait_s=1.0, domain_id=DOMAIN, progress=False)
    assert not (tmp_path / "live").exists()
