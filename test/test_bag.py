"""The rosbag tools without a ROS graph: bag reading / atomic writing, ``sdcpc-bag synth``, offline ``eval``.

Bags are tiny (48x96 images, about a dozen frames); the model is a tiny SD-CPC checkpoint (19
Cityscapes classes, 64x96 network input) written by the tests.
"""
import json
import os
import re
import stat
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed: pip install -e '.[ros]'")

from sdcpc_core.data.synthetic import SYNTHETIC_CLASSES, SyntheticConfig, SyntheticDrive
from sdcpc_core.eval.metrics import ConfusionMatrix
from sdcpc_core.models import build_model
from sdcpc_core.runtime.streaming import StreamingSegmenter
from sdcpc_core.weights import save_weights
from sdcpc_ros.bag import cli
from sdcpc_ros.bag.bagfiles import BagError, BagReader, BagWriter
from sdcpc_ros.bag.offline import evaluate_offline
from sdcpc_ros.bag.scoring import EvalOutputs, FrameMatcher, frame_ranges
from sdcpc_ros.bag.synth import DEFAULT_START_NS, write_synthetic_bag
from sdcpc_ros.image_codec import compressed_to_array, image_to_array
from sdcpc_ros.parameters import NodeConfig
from sdcpc_ros.pipeline import stamp_to_ns

pytestmark = pytest.mark.ros  # every test here needs ROS 2 (rclpy and the message packages)

SIZE = (48, 96)
INPUT = (64, 96)
FRAMES = 12


def _config(frames: int = FRAMES, **changes) -> SyntheticConfig:
    return SyntheticConfig(height=SIZE[0], width=SIZE[1], num_frames=frames, p_drop=0.0, **changes)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("sdcpc_b0", len(SYNTHETIC_CLASSES), coarse_tokens=4, window=3)
    with torch.no_grad():
        for parameter in model.zero_initialised_scales():
            parameter.normal_()  # the temporal step changes the output: references matter
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_weights(model, path, metadata={"classes": SYNTHETIC_CLASSES.to_json()})
    return path


@pytest.fixture(scope="module")
def drive_bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bags") / "drive.mcap"
    write_synthetic_bag(path, _config(), seed=3, progress=False)
    return path


def _read(path: Path, topic: str) -> list:
    with BagReader(path) as reader:
        return [(message.log_time_ns, reader.deserialize(message)) for message in reader.messages([topic])]


# ------------------------------------------------------------------------------------------------ synth
@pytest.mark.parametrize("name, image_format, distro", [("a.mcap", "rgb8", "humble"), ("b.db3", "bgr8", "jazzy"),
                                                        ("folder", "jpeg", "kilted")])
def test_synth_writes_images_labels_and_camera_info(tmp_path, name, image_format, distro):
    result = write_synthetic_bag(tmp_path / name, _config(6), seed=1, image_format=image_format, distro=distro,
                                 progress=False)
    drive = SyntheticDrive(_config(6), seed=1)
    image_topic = "/camera/image_raw/compressed" if image_format == "jpeg" else "/camera/image_raw"
    assert result.frames == 6 and result.image_topic == image_topic
    with BagReader(tmp_path / name, distro="humble") as reader:  # the bag carries its own definitions
        assert set(reader.topics) == {image_topic, "/camera/labels", "/camera/camera_info"}
        assert all(count == 6 for _, count in reader.topics.values())
    images, labels, infos = _read(tmp_path / name, image_topic), _read(tmp_path / name, "/camera/labels"), \
        _read(tmp_path / name, "/camera/camera_info")
    for index, ((log_time, image), (_, label), (_, info)) in enumerate(zip(images, labels, infos)):
        frame = drive.frame(index)
        stamp = DEFAULT_START_NS + frame.stamp_ns
        assert log_time == stamp == stamp_to_ns(image.header.stamp) == stamp_to_ns(label.header.stamp)
        assert image.header.frame_id == "camera" and info.header.frame_id == "camera"
        if image_format == "jpeg":
            pixels, encoding = compressed_to_array(image)
            _, jpeg = cv2.imencode(".jpg", frame.image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            expected = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)  # BGR
            np.testing.assert_array_equal(pixels, expected[:, :, ::-1] if encoding == "rgb8" else expected)
        else:
            pixels, encoding = image_to_array(image)
            assert encoding == image_format
            np.testing.assert_array_equal(pixels if encoding == "rgb8" else pixels[:, :, ::-1], frame.image)
        np.testing.assert_array_equal(image_to_array(label, ("mono8",))[0], frame.labels)
        assert (info.height, info.width) == SIZE and info.k[0] == pytest.approx(drive.focal)
        assert info.k[2] == pytest.approx(SIZE[1] / 2 - 0.5) and info.k[5] == pytest.approx(SIZE[0] / 2 - 0.5)


def test_synth_skips_the_frames_the_camera_dropped(tmp_path):
    config = SyntheticConfig(height=SIZE[0], width=SIZE[1], num_frames=30, p_drop=0.3, drop_frames=(1, 2))
    drive = SyntheticDrive(config, seed=5)
    delivered = [i for i in range(30) if not drive.is_dropped(i)]
    assert 0 < len(delivered) < 30  # the seed drops some frames
    result = write_synthetic_bag(tmp_path / "drops.mcap", config, seed=5, progress=False)
    assert (result.frames, result.dropped) == (len(delivered), 30 - len(delivered))
    stamps = [stamp_to_ns(m.header.stamp) - DEFAULT_START_NS for _, m in _read(tmp_path / "drops.mcap",
                                                                                "/camera/labels")]
    assert stamps == [drive.stamp_ns(i) for i in delivered]


def test_synth_refuses_an_existing_output_unless_overwrite(tmp_path):
    write_synthetic_bag(tmp_path / "x.mcap", _config(2), progress=False)
    before = (tmp_path / "x.mcap").read_bytes()
    with pytest.raises(BagError, match="already exists; pass --overwrite"):
        write_synthetic_bag(tmp_path / "x.mcap", _config(3), progress=False)
    assert (tmp_path / "x.mcap").read_bytes() == before
    write_synthetic_bag(tmp_path / "x.mcap", _config(3), overwrite=True, progress=False)
    with BagReader(tmp_path / "x.mcap") as reader:
        assert reader.count("/camera/labels") == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mcap"]  # no temporary leftovers


# ------------------------------------------------------------------------------------------ reading, writing
def test_writer_leaves_nothing_when_interrupted(tmp_path):
    with pytest.raises(RuntimeError, match="disk full"), BagWriter(tmp_path / "half.mcap") as bag:
        connection = bag.add_topic("/camera/labels", "sensor_msgs/msg/Image")
        bag.write(connection, 1, b"\x00" * 8)
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_writer_storage_must_match_the_suffix(tmp_path):
    with pytest.raises(BagError, match=r"suffix \.mcap of mcap storage but sqlite3"):
        BagWriter(tmp_path / "x.mcap", storage="sqlite3")


def test_damaged_bags_give_one_sentence_naming_the_file(tmp_path, drive_bag):
    truncated = tmp_path / "truncated.mcap"
    truncated.write_bytes(drive_bag.read_bytes()[: drive_bag.stat().st_size // 2])
    garbage = tmp_path / "garbage.db3"
    garbage.write_bytes(b"not a database" * 100)
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    cases = [(truncated, "cannot read bag .*truncated.mcap.*truncated, corrupt"),
             (garbage, "cannot read bag .*garbage.db3"),
             (tmp_path / "folder", "folder without metadata.yaml"),
             (tmp_path / "notes.txt", "not a rosbag2 bag"),
             (tmp_path / "missing.mcap", "missing.mcap does not exist")]
    for path, pattern in cases:
        with pytest.raises(BagError, match=pattern), BagReader(path) as reader:
            list(reader.messages())


def test_missing_topic_lists_the_topics_of_the_bag(drive_bag):
    with BagReader(drive_bag) as reader:
        with pytest.raises(BagError, match=r"image topic /front/image is not in bag .*drive.mcap; its topics: "
                                           r"/camera/camera_info \(sensor_msgs/msg/CameraInfo, 12 messages\)"):
            reader.require_topic("/front/image", ("sensor_msgs/msg/Image",), "image topic")
        with pytest.raises(BagError, match="carries sensor_msgs/msg/CameraInfo; supported: sensor_msgs/msg/Image"):
            reader.require_topic("/camera/camera_info", ("sensor_msgs/msg/Image",), "image topic")


# --------------------------------------------------------------------------------------------- matching
def test_matcher_pairs_by_stamp_in_any_storage_order():
    classes = SYNTHETIC_CLASSES
    matcher = FrameMatcher(classes, "v", "corrected", labelled=True)
    label = np.zeros((2, 3), np.uint8)
    matcher.add_label(10, label)  # before its frame
    matcher.add_frame(0, 10, label.copy())
    matcher.add_frame(1, 20, None)  # no prediction (dropped)
    matcher.add_frame(2, 30, label + 1)  # its label comes later
    assert matcher.scored == 1
    matcher.add_label(30, label)
    matcher.add_frame(3, 40, label.copy())  # never labelled: the label stream passes it
    matcher.add_label(50, label)
    matcher.add_frame(4, 50, label.copy())
    report = matcher.finish("t", {}, {})
    assert [r["index"] for r in report.frames] == [0, 2, 4]
    assert [r["accuracy"] for r in report.frames] == [1.0, 0.0, 1.0]
    assert report.info["frames_without_label_list"] == "3" and report.info["frames_without_mask_list"] == "1"
    assert frame_ranges([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10"


def test_matcher_names_the_frame_and_topic_of_unusable_labels():
    matcher = FrameMatcher(SYNTHETIC_CLASSES, "v", "corrected", True, "/camera/labels in bag d.mcap")
    matcher.add_label(10, np.full((2, 3), 40, np.uint8))  # 40: neither a class id (0..18) nor ignore (255)
    with pytest.raises(BagError, match=r"frame 0 \(stamp 10 ns, /camera/labels in bag d.mcap\): ground truth value 40"):
        matcher.add_frame(0, 10, np.zeros((2, 3), np.uint8))
    matcher.add_label(20, np.zeros((4, 6), np.uint8))
    with pytest.raises(BagError, match="the label is 4x6 but the mask is 2x3; the labels must have the camera"):
        matcher.add_frame(1, 20, np.zeros((2, 3), np.uint8))


# ----------------------------------------------------------------------------------------------- offline
@pytest.fixture(scope="module")
def offline_run(tmp_path_factory, checkpoint, drive_bag):
    outputs = EvalOutputs.under(tmp_path_factory.mktemp("eval") / "out")
    config = NodeConfig(model=str(checkpoint), input_height=INPUT[0], input_width=INPUT[1])
    result = evaluate_offline(drive_bag, config, outputs, consistency_mode="corrected", num_overlays=3,
                              progress=False)
    return result, outputs


def test_offline_eval_runs_every_frame_like_the_streaming_segmenter(offline_run, checkpoint, drive_bag):
    result, outputs = offline_run
    segmenter = StreamingSegmenter.from_checkpoint(checkpoint, input_size=INPUT, reference_offsets=(9, 6, 3),
                                                   frame_period_s=0.0333, max_gap_s=1.0)
    images = _read(drive_bag, "/camera/image_raw")
    masks = _read(outputs.bag, "/semantic_mask")
    colors = _read(outputs.bag, "/semantic_mask/color")
    assert len(images) == len(masks) == len(colors) == FRAMES
    labels = [image_to_array(m, ("mono8",))[0] for _, m in _read(drive_bag, "/camera/labels")]
    confusion = ConfusionMatrix(len(SYNTHETIC_CLASSES))
    for (log_time, image), (mask_time, mask), (_, color), label in zip(images, masks, colors, labels):
        assert mask_time == log_time and mask.header.stamp == image.header.stamp
        assert mask.header.frame_id == image.header.frame_id == "camera" and mask.encoding == "mono8"
        expected = segmenter.step(image_to_array(image)[0].copy(), stamp_to_ns(image.header.stamp), "camera").labels
        predicted = image_to_array(mask)[0]
        np.testing.assert_array_equal(predicted, expected)
        np.testing.assert_array_equal(image_to_array(color)[0], SYNTHETIC_CLASSES.colorize(predicted))
        confusion.update(label, predicted)
    assert len(_read(outputs.bag, "/semantic_mask/camera_info")) == FRAMES
    report = json.loads((outputs.report / "report.json").read_text())
    assert report["mIoU"] == pytest.approx(100 * confusion.miou())
    assert report["frames_scored"] == FRAMES and report["consistency_mode"] == "corrected"
    assert report["info"]["frames_processed"] == FRAMES and report["info"]["buffer_resets"] == 0
    assert {"read", "decode", "encode", "temporal", "write", "total"} <= set(report["latency_ms"])
    assert report["latency_ms"]["total"]["count"] == FRAMES
    assert 0 < report["info"]["bag_io_fraction"] < 1
    assert {"report.md", "per_class_iou.png", "per_frame.png", "latency.png", "overlays.png"} <= {
        p.name for p in outputs.report.iterdir()}
    assert "mVC8" in (outputs.report / "report.md").read_text()
    assert result.processed == FRAMES and "12 of 12 frames segmented" in result.summary_line()


def test_offline_eval_counts_and_shows_frames_without_labels(tmp_path, checkpoint, drive_bag):
    """A copy of the drive without the labels of frames 2, 3 and 7: the other frames are scored."""
    gappy = tmp_path / "gappy.mcap"
    with BagReader(drive_bag) as reader, BagWriter(gappy) as bag:
        connections = {topic: bag.add_topic(topic, msgtype) for topic, (msgtype, _) in reader.topics.items()}
        label_index = 0
        for message in reader.messages():
            if message.topic == "/camera/labels":
                label_index += 1
                if label_index - 1 in (2, 3, 7):
                    continue
            bag.write(connections[message.topic], message.log_time_ns, message.raw)
    outputs = EvalOutputs.under(tmp_path / "out")
    config = NodeConfig(model=str(checkpoint), input_height=INPUT[0], input_width=INPUT[1])
    result = evaluate_offline(gappy, config, outputs, consistency_mode="corrected", num_overlays=0, progress=False)
    info = result.report.info
    assert (info["frames_processed"], info["frames_scored"], info["frames_without_label"]) == (FRAMES, FRAMES - 3, 3)
    assert info["frames_without_label_list"] == "2-3, 7"
    assert [r["index"] for r in result.report.frames] == [i for i in range(FRAMES) if i not in (2, 3, 7)]
    assert len(_read(outputs.bag, "/semantic_mask")) == FRAMES  # masks for every frame all the same
    assert "frames_without_label_list | 2-3, 7" in (outputs.report / "report.md").read_text()


def _image_bag(path: Path, frame_id: str, height: int, width: int, encoding: str, step: int) -> Path:
    """A bag of three zero images on /camera/image_raw with these fields."""
    with BagWriter(path) as bag:
        store = bag.store
        connection = bag.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
        Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
        for i in range(3):
            message = store.types["sensor_msgs/msg/Image"](
                header=Header(stamp=Time(sec=1, nanosec=i), frame_id=frame_id), height=height, width=width,
                encoding=encoding, is_bigendian=0, step=step, data=np.zeros(height * step, np.uint8))
            bag.write_message(connection, i, message)
    return path


def test_offline_eval_refuses_an_unsupported_encoding(tmp_path, checkpoint):
    bag_path = _image_bag(tmp_path / "depth.mcap", "depth", 4, 4, "32FC1", 16)
    config = NodeConfig(model=str(checkpoint), input_height=INPUT[0], input_width=INPUT[1])
    with pytest.raises(BagError, match=r"/camera/image_raw in bag .*depth\.mcap: .*image encoding '32FC1' is not "
                                       r"supported; accepted encodings: rgb8"):
        evaluate_offline(bag_path, config, EvalOutputs.under(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out" / "semantic_mask.mcap").exists() and not (tmp_path / "out" / "report").exists()


# --------------------------------------------------------------------------------------------------- CLI
def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_synth_then_eval(tmp_path, capsys, checkpoint):
    code, out, _ = _cli(capsys, "synth", tmp_path / "d.db3", "--frames", 4, "--size", "48x96", "--format", "jpeg",
                        "--no-progress")
    assert code == 0 and "4 frames on /camera/image_raw/compressed" in out
    code, out, err = _cli(capsys, "eval", tmp_path / "d.db3", "--model", checkpoint, "--input-size", "64x96",
                          "--consistency-mode", "corrected", "--storage", "sqlite3", "--overlays", 0, "--no-progress")
    assert code == 0, err
    assert "4 of 4 frames segmented, 4 scored: mIoU" in out
    assert (tmp_path / "d_eval" / "report" / "report.json").is_file()
    assert len(_read(tmp_path / "d_eval" / "semantic_mask.db3", "/semantic_mask")) == 4
    # the same again: the outputs exist
    code, _, err = _cli(capsys, "eval", tmp_path / "d.db3", "--model", checkpoint, "--input-size", "64x96",
                        "--storage", "sqlite3", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "already exists; pass --overwrite" in err
    stale = tmp_path / "d_eval" / "report" / "stale.txt"
    stale.write_text("from an earlier run")
    code, out, err = _cli(capsys, "eval", tmp_path / "d.db3", "--model", checkpoint, "--input-size", "64x96",
                          "--storage", "sqlite3", "--overlays", 0, "--no-progress", "--overwrite")
    assert code == 0, err
    assert not stale.exists() and (tmp_path / "d_eval" / "report" / "report.json").is_file()
    assert sorted(p.name for p in (tmp_path / "d_eval").iterdir()) == [".sdcpc.lock", "report", "semantic_mask.db3"]


def test_cli_user_errors_are_one_sentence(tmp_path, capsys, drive_bag, checkpoint):
    truncated = tmp_path / "cut.mcap"
    truncated.write_bytes(drive_bag.read_bytes()[:1000])
    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    model: x.safetensors\n    colour: red\n")
    cases = [
        (("eval", drive_bag, "--image-topic", "/front/image"), "its topics: /camera/camera_info"),
        (("eval", drive_bag, "--image-topic", "/camera/camera_info"), "carries sensor_msgs/msg/CameraInfo"),
        (("eval", truncated), "cannot read bag .*cut.mcap"),
        (("eval", drive_bag, "--rate", "2"), "--rate applies to live evaluation only; add --live"),
        (("eval", drive_bag, "--live", "--model", "m"), "--model applies to offline evaluation"),
        (("eval", drive_bag, "--params-file", params, "--out", tmp_path / "p"), "unknown parameter.s. colour"),
        (("eval", drive_bag, "--model", tmp_path / "none.safetensors", "--out", tmp_path / "n"),
         "parameter 'model'.*none.safetensors"),
        (("synth", tmp_path / "s.mcap", "--storage", "sqlite3"), "suffix .mcap of mcap storage"),
        (("play", drive_bag, "--remap", "/a"), "remap rule '/a' must look like"),
        (("play", drive_bag, "--remap", "/camera/image_raw:=bad name"),
         "remap rule '/camera/image_raw:=bad name': 'bad name' is not a valid topic name \\(topic name must not "
         "contain characters other than alphanumerics"),
        (("play", drive_bag, "--domain-id", "999"), "argument --domain-id: must be an integer in 0..232, got '999'"),
        (("eval", drive_bag, "--live", "--domain-id", "233"), "argument --domain-id: must be an integer in 0..232"),
    ]
    for argv, pattern in cases:
        code, _, err = _cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert re.search(pattern, err), (argv, err)
    assert not (tmp_path / "p").exists() and not (tmp_path / "n" / "report").exists()


def test_cli_without_ros_says_how_to_install_it(capsys, monkeypatch, drive_bag):
    monkeypatch.setitem(sys.modules, "rclpy", None)  # as if rclpy were not installed
    code, _, err = _cli(capsys, "play", drive_bag)
    assert code == 2 and "sdcpc-bag play needs the ROS 2 Python packages" in err and "pip install -e '.[ros]'" in err


def test_params_file_sets_the_node_parameters(tmp_path, checkpoint):
    params = tmp_path / "segment.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    model: {checkpoint}\n    input_height: 96\n"
                      "    reference_offsets: [4, 2]\n")
    args = cli.build_parser().parse_args(["eval", "b.mcap", "--params-file", str(params), "--input-size", "64x96"])
    config = cli.node_config(args)
    assert (config.model, config.input_size, config.reference_offsets) == (str(checkpoint), (64, 96), (4, 2))
    shipped = Path(__file__).resolve().parent.parent / "config" / "segment.yaml"  # the node's own file reads as is
    args = cli.build_parser().parse_args(["eval", "b.mcap", "--params-file", str(shipped)])
    assert cli.node_config(args).input_size == (0, 0)  # the checkpoint's recommended size


def test_eval_input_size_is_the_checkpoints_unless_given(tmp_path, capsys, checkpoint, drive_bag):
    """Without --input-size (nor input_height / input_width in --params-file) the checkpoint's recommended size."""
    from sdcpc_core.weights.resolve import open_model

    sized = tmp_path / "sized.safetensors"
    save_weights(open_model(checkpoint).model, sized,
                 metadata={"classes": SYNTHETIC_CLASSES.to_json(), "input_size": [64, 96]})
    for extra, size, source in (((), "64x96", "the checkpoint's recommended size"),
                                (("--input-size", "32x64"), "32x64", "the input_height and input_width parameters")):
        out = tmp_path / f"out_{size}"
        code, stdout, err = _cli(capsys, "eval", drive_bag, "--model", sized, *extra, "--out", out, "--overlays", 0,
                                 "--no-progress")
        assert code == 0, err
        assert f"network input {size} ({source}" in stdout + err
        assert json.loads((out / "report" / "report.json").read_text())["info"]["input_size"] == size
    params = tmp_path / "half.yaml"
    params.write_text("/**:\n  ros__parameters:\n    input_height: 64\n")
    code, _, err = _cli(capsys, "eval", drive_bag, "--model", sized, "--params-file", params, "--out",
                        tmp_path / "half", "--no-progress")
    assert code == 2 and "parameters 'input_height' and 'input_width' must both be 0" in err, err


def test_smoothing_option_reaches_the_node_pipeline(tmp_path, capsys, checkpoint, drive_bag):
    """``--smoothing`` is the node's ``smoothing`` parameter: the masks are the smoothing segmenter's."""
    from sdcpc_ros.parameters import ParameterError

    out = tmp_path / "smoothed"
    code, stdout, err = _cli(capsys, "eval", drive_bag, "--model", checkpoint, "--input-size", "64x96",
                             "--smoothing", "window", "--out", out, "--overlays", 0, "--no-progress")
    assert code == 0, err
    assert "mVC8_correct" in stdout
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["info"]["smoothing"] == "window" and " + window on drive.mcap" in report["title"]
    segmenter = StreamingSegmenter.from_checkpoint(checkpoint, input_size=INPUT, frame_period_s=0.0333,
                                                   smoothing="window")
    plain = StreamingSegmenter.from_checkpoint(checkpoint, input_size=INPUT, frame_period_s=0.0333)
    changed = 0
    for (_, image), (_, mask) in zip(_read(drive_bag, "/camera/image_raw"), _read(out / "semantic_mask.mcap",
                                                                                 "/semantic_mask")):
        rgb, stamp = image_to_array(image)[0].copy(), stamp_to_ns(image.header.stamp)
        expected = segmenter.step(rgb, stamp, "camera").labels
        np.testing.assert_array_equal(image_to_array(mask)[0], expected)
        changed += int((expected != plain.step(rgb, stamp, "camera").labels).sum())
    assert changed > 0  # the window changed some labels of this drive

    code, _, err = _cli(capsys, "eval", drive_bag, "--live", "--smoothing", "ema:0.5")
    assert code == 2 and "--smoothing applies to offline evaluation" in err
    code, _, err = _cli(capsys, "eval", drive_bag, "--smoothing", "ema")
    assert code == 2 and "smoothing 'ema' needs its factor (e.g. ema:0.5)" in err and err.count("\n") == 1
    with pytest.raises(ParameterError, match=r"parameter 'smoothing' must be none, ema:A .*; got 'median'"):
        NodeConfig(smoothing="median")
    assert NodeConfig(smoothing="ema:0.3").smoothing == "ema:0.3"



# ------------------------------------------------------------------------------ outputs: all or nothing
def _unsegmentable_bag(path: Path) -> Path:
    """A bag whose every image is empty: "no frame ... could be segmented", after the run has started."""
    return _image_bag(path, "camera", 0, 0, "rgb8", 0)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_overwrite_keeps_the_previous_outputs(tmp_path, capsys, checkpoint, drive_bag):
    out = tmp_path / "out"
    options = ("--model", checkpoint, "--input-size", "64x96", "--overlays", 0, "--no-progress", "--out", out)
    code, _, err = _cli(capsys, "eval", drive_bag, *options)
    assert code == 0, err
    before = _tree(out)
    empty = _unsegmentable_bag(tmp_path / "empty.mcap")
    code, _, err = _cli(capsys, "eval", empty, *options, "--overwrite")
    assert code == 2 and "could be segmented" in err.splitlines()[-1] and "Traceback" not in err, err
    assert _tree(out) == before  # the old bag beside its own report, byte for byte; no staging left
    assert sorted(p.name for p in out.iterdir()) == [".sdcpc.lock", "report", "semantic_mask.mcap"]


def test_a_failed_run_into_a_new_folder_leaves_nothing(tmp_path, capsys, checkpoint):
    empty = _unsegmentable_bag(tmp_path / "empty.mcap")
    out = tmp_path / "new" / "out"
    code, _, err = _cli(capsys, "eval", empty, "--model", checkpoint, "--input-size", "64x96", "--no-progress",
                        "--out", out)
    assert code == 2 and "could be segmented" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.mcap"]


def test_a_second_eval_on_a_locked_folder_is_refused(tmp_path, capsys, checkpoint, drive_bag):
    from sdcpc_core.atomic_files import lock_folder

    out = tmp_path / "out"
    with lock_folder(out, "sdcpc-bag eval (test)"):
        code, _, err = _cli(capsys, "eval", drive_bag, "--model", checkpoint, "--input-size", "64x96",
                            "--no-progress", "--out", out)
    assert code == 2 and err.count("\n") == 1, err
    assert f"--out {out} is in use by another run (pid {os.getpid()}: sdcpc-bag eval (test)); wait for it to " \
           "finish or choose another --out" in err, err
    assert not (out / "report").exists() and not (out / "semantic_mask.mcap").exists()


def test_leftovers_of_killed_runs_are_removed_at_the_next_run(tmp_path, capsys, checkpoint, drive_bag):
    out = tmp_path / "out"
    out.mkdir()
    leftovers = [out / ".semantic_mask.mcap.4194304-0a1b2c3d4e5f.tmp", out / ".report.k2j3h4g5", out / ".eval.1-ab.tmp",
                 out / ".semantic_mask.mcap.old-77"]
    for path in leftovers:
        path.mkdir() if "report" in path.name or "eval" in path.name else path.write_bytes(b"half")
        os.utime(path, (1e9, 1e9))  # long before this run
    keep = out / "notes.txt"
    keep.write_text("the user's")
    code, _, err = _cli(capsys, "eval", drive_bag, "--model", checkpoint, "--input-size", "64x96", "--overlays", 0,
                        "--no-progress", "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [".sdcpc.lock", "notes.txt", "report", "semantic_mask.mcap"]


@pytest.mark.skipif(not hasattr(os, "umask"), reason="needs POSIX permissions")
def test_outputs_have_the_permissions_of_the_umask(tmp_path, capsys, checkpoint, drive_bag):
    previous = os.umask(0o022)
    try:
        code, _, err = _cli(capsys, "eval", drive_bag, "--model", checkpoint, "--input-size", "64x96",
                            "--overlays", 1, "--no-progress", "--out", tmp_path / "out")
    finally:
        os.umask(previous)
    assert code == 0, err
    for path in [tmp_path / "out", *(tmp_path / "out").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_domain_id_from_the_environment_is_checked(capsys, monkeypatch, drive_bag):
    monkeypatch.setenv("ROS_DOMAIN_ID", "999")
    code, _, err = _cli(capsys, "play", drive_bag)
    assert code == 2 and "ROS_DOMAIN_ID must be a ROS domain id in 0..232" in err and "999" in err, err
