"""The end-to-end ROS 2 demo: a synthetic drive played into the real segment node, its output scored.

``python -m sdcpc_ros.demo`` (what ``make demo`` runs after installing):

1. writes a synthetic drive (``sdcpc_core.data.synthetic``) as a bag, ``OUT/drive.mcap``: rgb8
   images on ``/camera/image_raw``, ``/camera/camera_info`` and ground-truth labels on
   ``/camera/labels`` (``sdcpc_ros.bag.synth``);
2. starts the real ``segment_node`` as a subprocess (rclpy, CPU, the ``--model`` checkpoint, network
   input ``--input-size``) on a random ``ROS_DOMAIN_ID`` in 1..200 with discovery limited to this
   machine, so that concurrent runs do not hear each other;
3. plays the bag into it **at real time** (``--rate 1``; 30 frames/s for the default drive) and
   records what it publishes on ``/semantic_mask``, matches masks to frames by stamp and scores them
   (``sdcpc_ros.bag.live``);
4. stops the node (SIGINT, a wait, then SIGKILL if it hangs; in every case, errors included) and
   leaves in ``OUT``: ``report/`` (``report.md``, ``report.json``, per-class IoU, latency and
   per-frame plots, ``overlays.png``: ground truth | prediction | errors with a legend of the class
   colours), ``semantic_mask.mcap`` (the node's masks as recorded), ``drive.mcap`` and ``node.log``;
5. prints a short summary (``summary_lines``): frames, frames dropped, mIoU, mVC8 and mVC8_correct
   (over the frames the node answered, in order: not consecutive camera frames when it dropped
   some), latency p50 / p95, the classes the drive's ground truth never contains (left out of mIoU)
   and the weakest classes.

Real time is the point: the node runs as on a robot, with ``process_every_frame`` false, so while it
is busy with a frame the newer ones replace each other in its one-slot queue and only the newest is
processed. On a CPU that is slower than the camera, the node therefore *drops* frames; the summary and
the report count and list them (they are not scored, and never filled in). ``--rate 0.25`` plays
four times slower to see the model with (almost) no drops. Outputs of an earlier demo run in ``OUT``
are replaced (each is written under a temporary name and renamed when complete).

The default model is the shipped ``sdcpc_b0_synthetic``; without it the demo stops with the message
of ``resolve_checkpoint`` (pass ``--model PATH`` of another checkpoint).
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from .bag.bagfiles import CAMERA_INFO_TOPIC, IMAGE_TOPIC

NODE_STOP_TIMEOUT_S = 15.0
DEMO_SEED = 2000
LOG_TAIL_LINES = 5


def build_parser() -> argparse.ArgumentParser:
    from sdcpc_core.eval.metrics import VC_MODES
    from sdcpc_core.tools.cli import ToolParser, at_least, image_size

    from .bag.cli import positive_number

    parser = ToolParser(prog="python -m sdcpc_ros.demo",
                        description="Play a synthetic drive into the real segment node and score its output.")
    parser.add_argument("--frames", type=at_least(1), default=300, help="frames of the drive (default 300: 10 s)")
    parser.add_argument("--size", type=image_size, default=(240, 480), help="camera HEIGHTxWIDTH (default 240x480)")
    parser.add_argument("--input-size", type=image_size, default=(128, 256),
                        help="network input HEIGHTxWIDTH, multiples of 32 (default 128x256)")
    parser.add_argument("--model", default="sdcpc_b0_synthetic",
                        help="shipped model name or checkpoint path (default sdcpc_b0_synthetic)")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    parser.add_argument("--rate", type=positive_number, default=1.0, help="playback rate (default 1: real time)")
    parser.add_argument("--seed", type=at_least(0), default=DEMO_SEED,
                        help=f"seed of the drive (default {DEMO_SEED}: a drive the shipped model never saw; it was "
                             f"trained on seeds 0-39 and validated on 1000-1004)")
    parser.add_argument("--consistency-mode", choices=VC_MODES, default="vspw",
                        help="mVC definition (default vspw: the public script's; it needs more than 16 frames)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return parser


class NodeExitedError(RuntimeError):
    """The segment node process ended while the demo needed it."""


class NodeProcess:
    """``segment_node`` as a subprocess on ``domain_id``; a context manager that always stops it.

    ``check()`` raises ``NodeExitedError`` with the end of its log when it has exited.
    """

    def __init__(self, checkpoint: Path, input_size: tuple[int, int], domain_id: int, log_path: Path) -> None:
        self.command = [sys.executable, "-m", "sdcpc_ros.segment_node", "--ros-args",
                        "-p", f"model:={checkpoint}", "-p", f"input_height:={input_size[0]}",
                        "-p", f"input_width:={input_size[1]}", "-p", "process_every_frame:=false",
                        "-p", "publish_dynamic:=false", "-r", f"image:={IMAGE_TOPIC}",
                        "-r", f"camera_info:={CAMERA_INFO_TOPIC}"]
        self.env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id))
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> NodeProcess:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=self.env)
        return self

    def check(self) -> None:
        if self.process.poll() is not None:
            raise NodeExitedError(f"segment_node exited with status {self.process.returncode}; the end of its log "
                               f"({self.log_path}): {self.log_tail()}")

    def log_tail(self) -> str:
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return " | ".join(lines[-LOG_TAIL_LINES:]) or "(empty)"

    def __exit__(self, *exc) -> None:
        """SIGINT (the node shuts down cleanly), wait, then SIGKILL if it does not end."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(NODE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run(args) -> int:
    from sdcpc_core.data.synthetic import SyntheticConfig
    from sdcpc_core.weights.shipped import resolve_checkpoint

    from .bag.cli import require_ros

    require_ros("the demo")
    from .bag.live import evaluate_live
    from .bag.scoring import EvalOutputs
    from .bag.synth import write_synthetic_bag

    began = time.perf_counter()
    checkpoint = resolve_checkpoint(args.model).resolve()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    height, width = args.size
    config = SyntheticConfig(height=height, width=width, num_frames=args.frames)
    drive = write_synthetic_bag(out / "drive.mcap", config, args.seed, overwrite=True, progress=args.progress)
    print(drive.summary_line())
    domain_id = random.SystemRandom().randint(1, 200)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # this process and the node
    print(f"starting segment_node ({args.model}, CPU, input {args.input_size[0]}x{args.input_size[1]}) on "
          f"ROS_DOMAIN_ID {domain_id}; its log: {out / 'node.log'}")
    with NodeProcess(checkpoint, args.input_size, domain_id, out / "node.log") as node:
        result = evaluate_live(drive.path, EvalOutputs.under(out), rate=args.rate, wait_s=120.0,
                               consistency_mode=args.consistency_mode, overwrite=True, domain_id=domain_id,
                               alive=node.check, progress=args.progress)
    for line in summary_lines(result, args.rate):
        print(line)
    files = [result.report_dir / "report.md", result.report_dir / "overlays.png", result.output_bag, drive.path]
    print(f"  outputs: {', '.join(str(f) for f in files if f.exists())}; {time.perf_counter() - began:.0f} s in all")
    return 0


def summary_lines(result, rate: float, weakest: int = 3) -> list[str]:
    """The demo's summary of a live evaluation (``sdcpc_ros.bag.scoring.BagEvaluation``) played at ``rate``."""
    from .bag.scoring import summary_numbers

    report, info = result.report, result.report.info
    numbers = summary_numbers(report)
    latency = report.latency_summary().get("end_to_end", {})
    pace = "real time" if rate == 1 else "slower than real time" if rate < 1 else "faster than real time"
    absent = report.absent_classes()
    low = ", ".join(f"{name} {iou:.1f}" for name, iou in report.weakest_classes(weakest)) or "none (nothing scored)"
    return [
        f"demo summary: {result.frames} frames played at rate {rate:g} ({pace}), {info['frames_segmented']} segmented, "
        f"{info['frames_dropped']} dropped by the node, {info['frames_scored']} scored",
        f"  mIoU {numbers['mIoU']:.1f}  mVC8 {numbers['mVC8']:.1f}  mVC8_correct {numbers['mVC8_correct']:.1f} "
        f"({report.consistency_mode}); mVC is over the {info['frames_scored']} frames the node answered, in order, "
        f"not over consecutive camera frames (the {info['frames_dropped']} it dropped are skipped)",
        f"  latency p50 {latency.get('p50', float('nan')):.0f} ms  p95 {latency.get('p95', float('nan')):.0f} ms "
        "(frame published -> mask received)",
        "  classes: " + (f"the ground truth never contains {', '.join(absent)} (left out of mIoU)" if absent
                         else "every class occurs in the ground truth") + f"; weakest IoU: {low}",
    ]


def main(argv: list[str] | None = None) -> int:
    """Runs the demo; exit status 2 for a user error (missing model, bad option, node failure), 130 on Ctrl-C."""
    from sdcpc_core.tools.cli import run_tool

    from .bag.cli import user_errors

    return run_tool(build_parser(), user_errors(run, (ValueError, OSError, NodeExitedError)), argv)


if __name__ == "__main__":
    sys.exit(main())
