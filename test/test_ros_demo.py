"""The end-to-end demo, short: a synthetic bag played at real time into the real segment node (a subprocess),
its masks recorded and scored, the node stopped cleanly; and the node process's start-up failure.
"""
import json
import os
import random
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed: pip install -e '.[ros]'")

from sdcpc_core.data.synthetic import SYNTHETIC_CLASSES
from sdcpc_core.models import build_model
from sdcpc_core.weights import save_weights
from sdcpc_ros import demo
from sdcpc_ros.bag.bagfiles import BagReader
from sdcpc_ros.image_codec import image_to_array
from sdcpc_ros.pipeline import stamp_to_ns

pytestmark = pytest.mark.ros  # every test here needs ROS 2 (rclpy and the message packages)

FRAMES = 20
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("sdcpc_b0", len(SYNTHETIC_CLASSES), coarse_tokens=4, window=3)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_weights(model, path, metadata={"classes": SYNTHETIC_CLASSES.to_json()})
    return path


@pytest.fixture
def demo_env(monkeypatch):
    """The node subprocess finds this checkout, uses one thread and discovers on this machine only."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))))


def _stamps(path: Path, topic: str) -> list[int]:
    with BagReader(path) as reader:
        return [stamp_to_ns(reader.deserialize(m).header.stamp) for m in reader.messages([topic])]


@pytest.mark.slow
def test_demo_plays_into_the_node_and_scores_its_masks(tmp_path, checkpoint, demo_env, monkeypatch, capsys):
    nodes = []

    class Recorded(demo.NodeProcess):
        def __enter__(self):
            nodes.append(self)
            return super().__enter__()

    monkeypatch.setattr(demo, "NodeProcess", Recorded)
    out = tmp_path / "demo"
    code = demo.main(["--model", str(checkpoint), "--frames", str(FRAMES), "--size", "48x96", "--input-size", "64x96",
                      "--out", str(out), "--consistency-mode", "corrected", "--no-progress",
                      "--seed", "0"])  # a drive whose first FRAMES frames the camera does not drop
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr[-2000:]
    assert f"demo summary: {FRAMES} frames played at rate 1 (real time)" in stdout
    assert "dropped by the node" in stdout and "mVC8" in stdout and "latency p50" in stdout
    assert len(nodes) == 1 and nodes[0].process.returncode == 0  # the node was stopped by SIGINT, cleanly
    report = json.loads((out / "report" / "report.json").read_text())
    info = report["info"]
    assert info["frames_played"] == FRAMES and info["frames_segmented"] + info["frames_dropped"] == FRAMES
    assert info["frames_segmented"] >= 3 and report["frames_scored"] == info["frames_segmented"]
    assert report["latency_ms"]["end_to_end"]["count"] == info["frames_segmented"]
    assert info["overlays"].startswith(f"{min(8, info['frames_segmented'])} frames")  # chosen among answered frames
    masks = _stamps(out / "semantic_mask.mcap", "/semantic_mask")
    played = _stamps(out / "drive.mcap", "/camera/image_raw")
    assert len(masks) == info["frames_segmented"] and set(masks) <= set(played)
    with BagReader(out / "semantic_mask.mcap") as reader:
        mask = reader.deserialize(next(reader.messages(["/semantic_mask"])))
        assert image_to_array(mask)[0].shape == (48, 96) and mask.encoding == "mono8"
    dropped = [i for i, stamp in enumerate(played) if stamp not in set(masks)]
    assert info["frames_without_mask"] == len(dropped)
    assert {"report.md", "overlays.png", "per_frame.png", "latency.png"} <= {p.name for p in (out / "report").iterdir()}
    assert "Segmenting /camera/image_raw" in (out / "node.log").read_text()


def test_demo_without_its_model_says_so(tmp_path, capsys):
    code = demo.main(["--model", "no_such_model", "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown checkpoint name 'no_such_model'" in err
    assert not (tmp_path / "demo").exists()


def _wait_exit(process, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)


def test_node_process_reports_a_failed_start(tmp_path, demo_env):
    domain = random.SystemRandom().randint(1, 200)
    with pytest.raises(demo.NodeExitedError, match=r"segment_node exited with status 2.*parameter 'model'"), \
            demo.NodeProcess(tmp_path / "missing.safetensors", (64, 96), domain, tmp_path / "node.log") as node:
        deadline = time.monotonic() + 60.0
        while node.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        node.check()


def test_demo_summary_names_absent_and_weak_classes_and_what_mvc_covers():
    from types import SimpleNamespace

    import numpy as np

    from sdcpc_core.eval.metrics import ConfusionMatrix
    from sdcpc_core.eval.report import EvaluationReport

    confusion = ConfusionMatrix(len(SYNTHETIC_CLASSES))
    road, car, person = (SYNTHETIC_CLASSES.names.index(n) for n in ("road", "car", "person"))
    # road right 9 of 10 times (once called car), car right 1 of 2, person never: IoU car 1/3, person 0
    confusion.update(np.array([road] * 10 + [car] * 2 + [person]), np.array([road] * 9 + [car, car, road, road]))
    report = EvaluationReport("demo", SYNTHETIC_CLASSES, confusion,
                              {"mVC8": 0.9, "mVC16": 0.8, "mVC8_correct": 0.7, "mVC16_correct": 0.6}, "corrected",
                              [], latency_ms={"end_to_end": [40.0, 60.0]},
                              info={"frames_segmented": 12, "frames_dropped": 8, "frames_scored": 12})
    lines = demo.summary_lines(SimpleNamespace(frames=20, report=report), rate=1.0, weakest=2)
    text = "\n".join(lines)
    assert lines[0] == ("demo summary: 20 frames played at rate 1 (real time), 12 segmented, 8 dropped by the node, "
                        "12 scored")
    assert "mVC8 90.0  mVC8_correct 70.0 (corrected)" in text
    assert "over the 12 frames the node answered, in order, not over consecutive camera frames" in text
    absent = [n for n in SYNTHETIC_CLASSES.names if n not in ("road", "car", "person")]
    assert f"the ground truth never contains {', '.join(absent)} (left out of mIoU)" in text
    assert "weakest IoU: person 0.0, car 33.3" in text
