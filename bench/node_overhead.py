"""Benchmark: the segment node's own cost per frame (everything but the model) against the model's time.

Run with::

    python bench/node_overhead.py                          # 480x640 and 1080x1920, 30 frames each
    python bench/node_overhead.py --sizes 480x640 --frames 50 --confidence

Per camera size, one frame at a time through the node's real code path (``SegmentPipeline.process``,
the function the node's worker calls) with real rclpy publishers on real topics, each with a
subscriber (raw, in this process) so that every output is built, serialised and sent:

* ``receive``: rclpy deserialising the incoming ``sensor_msgs/Image`` (the copy rclpy makes before
  the subscription callback sees the message; measured on the serialised frame);
* ``decode``: ``image_codec.image_to_array`` (a strided view of ``msg.data``, no copy);
* ``encode``: the output messages: mask (mono8), colour (rgb8), dynamic mask (mono8), scaled
  camera_info, and with ``--confidence`` the 32FC1 confidence;
* ``publish``: ``publish()`` of all of them;
* ``model``: ``StreamingSegmenter.step`` (``preprocess``: colour conversion, letterbox resize and
  normalisation; ``network``: static branch + temporal step; ``postprocess``: argmax and
  nearest-neighbour upsampling to the camera size).

Node overhead = receive + decode + encode + publish. The model is ``sdcpc_b0`` with random weights
(seed 0) and 19 classes at ``--input-size`` (default 256x448, small so the run is quick); the
overhead does not depend on the model. Medians over ``--frames`` frames after ``--warmup`` frames.
Goal (tracker): node overhead under 3 ms at 640x480, no more than one copy of the image on the way in.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time

import numpy as np

GOAL_MS = 3.0
GOAL_SIZE = (480, 640)
NODE_PARTS = ("receive", "decode", "encode", "publish")
MODEL_PARTS = ("preprocess", "network", "postprocess")


def _size(text: str) -> tuple[int, int]:
    from sdcpc_core.tools.cli import image_size

    return image_size(text)


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", type=_size, default=[(480, 640), (1080, 1920)],
                   help="camera sizes HEIGHTxWIDTH (default: 480x640 1080x1920)")
    p.add_argument("--input-size", type=_size, default=(256, 448), help="network input size (default: 256x448)")
    p.add_argument("--frames", type=int, default=30, help="timed frames per size (default: 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed frames first (default: 3)")
    p.add_argument("--confidence", action="store_true", help="also publish the 32FC1 confidence")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.frames < 1 or args.warmup < 0:
        p.error("--frames must be >= 1 and --warmup >= 0")
    return args


class _Graph:
    """A context, the publishing node, and raw subscribers spun in a thread (so publish really sends)."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 200))
        self.context = Context()
        rclpy.init(context=self.context)
        namespace = f"/node_overhead_{os.getpid()}"
        self.node = rclpy.create_node("segment_node", namespace=namespace, context=self.context)
        self.listener = rclpy.create_node("listener", namespace=namespace, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.listener)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def publisher(self, message_type, topic: str):
        """A publisher with one raw subscriber, once they have matched."""
        publisher = self.node.create_publisher(message_type, topic, 5)
        self.listener.create_subscription(message_type, topic, lambda _: None, 5, raw=True)
        deadline = time.monotonic() + 10
        while publisher.get_subscription_count() < 1:
            if time.monotonic() > deadline:
                raise SystemExit(f"no subscriber matched {topic} within 10 s")
            time.sleep(0.01)
        return publisher

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        self.listener.destroy_node()
        rclpy.shutdown(context=self.context)


def _camera_info(height: int, width: int):
    from sensor_msgs.msg import CameraInfo

    f = 0.8 * width
    return CameraInfo(height=height, width=width, distortion_model="plumb_bob", d=[0.0] * 5,
                      k=np.array([f, 0, width / 2, 0, f, height / 2, 0, 0, 1], np.float64),
                      p=np.array([f, 0, width / 2, 0, 0, f, height / 2, 0, 0, 0, 1, 0], np.float64))


def _copies_on_the_way_in(msg, image) -> int:
    """Copies of the pixels between ``msg.data`` and the array the model resizes (0 or 1)."""
    from sdcpc_core.runtime.image import to_rgb

    source = np.frombuffer(msg.data, np.uint8)
    return int(not np.shares_memory(image, source)) + int(not np.shares_memory(to_rgb(image, msg.encoding), image))


def _run_size(graph, pipeline, outputs, size, args):
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    from sdcpc_ros.image_codec import array_to_image_fields

    height, width = size
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
    wires = []
    for pixels in frames:  # what arrives from the network: serialised messages
        msg = Image(**array_to_image_fields(pixels, "rgb8"))
        msg.header.frame_id = "camera"
        wires.append(serialize_message(msg))
    pipeline.set_camera_info(_camera_info(height, width))
    samples = []
    period_ns = 33_333_333
    for index in range(args.warmup + args.frames):
        start = time.perf_counter()
        msg = deserialize_message(wires[index % len(wires)], Image)
        received = time.perf_counter()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(10**9 + index * period_ns, 10**9)
        frame = pipeline.process(msg)
        if frame is None:
            raise SystemExit("the pipeline skipped a benchmark frame; see the log above")
        if index >= args.warmup:
            timings = frame.result.timings_ms
            samples.append({"receive": 1e3 * (received - start), **frame.node_ms,
                            "preprocess": timings["preprocess"], "network": timings["encode"] + timings["temporal"],
                            "postprocess": timings["postprocess"], "model": timings["total"]})
    msg = deserialize_message(wires[0], Image)
    copies = _copies_on_the_way_in(msg, pipeline.decode(msg)[0])
    published = sum(1 for publisher in vars(outputs).values() if publisher is not None)
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}, copies, published


def main(argv=None):
    args = _parse_args(argv)
    import torch
    from rclpy.logging import LoggingSeverity
    from sensor_msgs.msg import CameraInfo, Image

    from sdcpc_core.classes import ClassList
    from sdcpc_core.models import build_model
    from sdcpc_core.runtime.streaming import StreamingSegmenter
    from sdcpc_ros.diagnostics import NodeStats
    from sdcpc_ros.pipeline import Outputs, SegmentPipeline

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    classes = ClassList.shipped("cityscapes")
    model = build_model("sdcpc_b0", len(classes)).eval()
    segmenter = StreamingSegmenter(model, input_size=args.input_size)
    graph = _Graph()
    try:
        outputs = Outputs(mask=graph.publisher(Image, "semantic_mask"),
                          color=graph.publisher(Image, "semantic_mask/color"),
                          confidence=graph.publisher(Image, "semantic_mask/confidence") if args.confidence else None,
                          dynamic=graph.publisher(Image, "semantic_mask/dynamic"),
                          camera_info=graph.publisher(CameraInfo, "semantic_mask/camera_info"))
        dynamic_ids = [classes.index(name) for name in ("person", "rider", "car", "truck", "bus", "train",
                                                        "motorcycle", "bicycle")]
        logger = graph.node.get_logger()
        logger.set_level(LoggingSeverity.WARN)  # not the buffer reset when the camera size changes
        pipeline = SegmentPipeline(segmenter, classes, outputs, NodeStats(), logger,
                                   lambda: graph.node.get_clock().now().nanoseconds, dynamic_ids=dynamic_ids)
        print(f"node overhead benchmark: SegmentPipeline.process (decode, StreamingSegmenter.step, encode, publish) "
              f"with real rclpy publishers and subscribers; torch {torch.__version__}, {torch.get_num_threads()} "
              f"thread(s), cpu ({os.cpu_count()} cores); model sdcpc_b0, 19 classes, RANDOM weights, input "
              f"{args.input_size[0]}x{args.input_size[1]}; rgb8 frames; median of {args.frames} frames after "
              f"{args.warmup} warm-up frames")
        header = (f"{'camera':>10} {'outputs':>7} " + " ".join(f"{k:>8}" for k in NODE_PARTS) +
                  f" {'node ms':>8} | " + " ".join(f"{k[:7]:>8}" for k in MODEL_PARTS) +
                  f" {'model ms':>9} | {'node/model':>10} {'copies in':>9}")
        print(header)
        summary = []
        for size in args.sizes:
            median, copies, published = _run_size(graph, pipeline, outputs, size, args)
            node_ms = sum(median[k] for k in NODE_PARTS)
            print(f"{size[0]:>4}x{size[1]:<5} {published:>7} " + " ".join(f"{median[k]:>8.2f}" for k in NODE_PARTS) +
                  f" {node_ms:>8.2f} | " + " ".join(f"{median[k]:>8.2f}" for k in MODEL_PARTS) +
                  f" {median['model']:>9.2f} | {node_ms / median['model']:>9.2f}x {copies:>9}")
            if tuple(size) == GOAL_SIZE:
                verdict = "met" if node_ms < GOAL_MS and copies <= 1 else "NOT met"
                summary.append(f"goal at 640x480: node overhead {node_ms:.3f} ms < {GOAL_MS:.0f} ms and <= 1 copy "
                               f"in ({copies}): {verdict}")
        print("outputs: mask, colour, dynamic, camera_info" + (", confidence" if args.confidence else "") +
              "; copies in: pixel copies from msg.data to the array the model resizes")
        for line in summary:
            print(line)
    finally:
        graph.close()


if __name__ == "__main__":
    sys.exit(main())
