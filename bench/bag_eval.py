"""Benchmark: offline bag evaluation throughput, and how much of it is bag reading and writing.

Run with::

    python bench/bag_eval.py                         # 150 frames of 240x480, network input 128x256
    python bench/bag_eval.py --frames 60 --input-size 480x864

What it measures: ``sdcpc-bag eval`` (``sdcpc_ros.bag.offline.evaluate_offline``) on synthetic
drives written by ``sdcpc-bag synth`` in three forms: rgb8 images in MCAP, rgb8 in SQLite 3, JPEG
(``CompressedImage``) in MCAP. Each run is one fresh Python process (this script with ``--worker``)
running ``sdcpc_b0`` (19 classes, random weights with a fixed seed: timing does not depend on
training) on the CPU, eager, fp32, at ``--input-size``.

Reported per case: frames per second over the whole evaluation loop (reading, the node's per-frame
pipeline, writing the mask bag); the bag I/O share ``(read + write) / loop time``, where *read* is
reading the image, label and camera_info messages and turning them into messages, and *write* is
serialising and writing ``/semantic_mask``, ``/semantic_mask/color`` and
``/semantic_mask/camera_info`` plus closing the bag; and the median per-frame stage times. Loading
the model before the loop and writing the report (mVC, plots) after it are not part of the loop and
are shown together separately.

Goal (tracker): bag reading and writing under 10% of the evaluation time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from worker import run_worker  # bench/worker.py: this folder is on sys.path when run as a script

CASES = {  # name -> (bag file name, image format)
    "rgb8 mcap": ("rgb8.mcap", "rgb8"),
    "rgb8 sqlite3": ("rgb8.db3", "rgb8"),
    "jpeg mcap": ("jpeg.mcap", "jpeg"),
}
STAGES = ("read", "decode", "encode", "temporal", "write", "total")
GOAL = 0.10


def _parse_args(argv=None):
    from sdcpc_core.tools.cli import at_least, image_size

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=at_least(10), default=150, help="frames per bag (default 150)")
    p.add_argument("--size", type=image_size, default=(240, 480), help="camera HEIGHTxWIDTH (default 240x480)")
    p.add_argument("--input-size", type=image_size, default=(128, 256),
                   help="network input HEIGHTxWIDTH (default 128x256, the demo's)")
    p.add_argument("--threads", type=at_least(1), default=1, help="torch threads in each worker (default 1)")
    p.add_argument("--worker", nargs=3, metavar=("BAG", "CHECKPOINT", "OUT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _worker(args) -> dict:
    import torch

    from sdcpc_ros.bag.offline import evaluate_offline
    from sdcpc_ros.bag.scoring import EvalOutputs
    from sdcpc_ros.parameters import NodeConfig

    torch.set_num_threads(args.threads)
    bag, checkpoint, out = args.worker
    config = NodeConfig(model=checkpoint, input_height=args.input_size[0], input_width=args.input_size[1])
    began = time.perf_counter()
    result = evaluate_offline(bag, config, EvalOutputs.under(out), num_overlays=4, progress=False, echo=lambda _: None)
    info = result.report.info
    return {"frames": info["frames_processed"], "fps": info["frames_per_second"], "loop_s": info["seconds"],
            "io_s": info["bag_io_seconds"], "io_fraction": info["bag_io_fraction"],
            "outside_s": time.perf_counter() - began - info["seconds"],
            "stages_ms": {stage: statistics.median(result.report.latency_ms[stage]) for stage in STAGES}}


def _prepare(folder: Path, args) -> Path:
    """Writes the three bags and a random-weight ``sdcpc_b0`` checkpoint into ``folder``."""
    import torch

    from sdcpc_core.data.synthetic import SYNTHETIC_CLASSES, SyntheticConfig
    from sdcpc_core.models import build_model
    from sdcpc_core.weights import save_weights
    from sdcpc_ros.bag.synth import write_synthetic_bag

    config = SyntheticConfig(height=args.size[0], width=args.size[1], num_frames=args.frames)
    for name, image_format in CASES.values():
        write_synthetic_bag(folder / name, config, seed=0, image_format=image_format, progress=False)
    torch.manual_seed(0)
    checkpoint = folder / "sdcpc_b0.safetensors"
    save_weights(build_model("sdcpc_b0", len(SYNTHETIC_CLASSES)), checkpoint,
                 metadata={"classes": SYNTHETIC_CLASSES.to_json()})
    return checkpoint


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    passthrough = ["--size", "x".join(map(str, args.size)), "--input-size", "x".join(map(str, args.input_size)),
                   "--threads", str(args.threads), "--frames", str(args.frames)]
    print(f"bag evaluation: {args.frames} frames {args.size[0]}x{args.size[1]}, sdcpc_b0 at "
          f"{args.input_size[0]}x{args.input_size[1]}, CPU eager fp32, {args.threads} torch thread(s), "
          f"{os.cpu_count()} cores")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sdcpc-bag-bench-") as tmp:
        folder = Path(tmp)
        checkpoint = _prepare(folder, args)
        for case, (name, _) in CASES.items():
            result = run_worker(__file__, [*passthrough, "--worker", str(folder / name), str(checkpoint),
                                           str(folder / f"{name}.eval")],
                                {"OMP_NUM_THREADS": str(args.threads)})
            rows.append((case, result))
    header = ["case", "frames/s", "bag I/O share", "I/O s / loop s", "model load + report s",
              *(f"{stage} ms" for stage in STAGES)]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for case, r in rows:
        if "error" in r:
            print(f"| {case} | error: {r['error']} |")
            continue
        print(f"| {case} | {r['fps']:.1f} | {100 * r['io_fraction']:.1f}% | {r['io_s']:.2f} / {r['loop_s']:.2f} | "
              f"{r['outside_s']:.1f} | " + " | ".join(f"{r['stages_ms'][s]:.2f}" for s in STAGES) + " |")
    worst = max((r["io_fraction"] for _, r in rows if "error" not in r), default=float("nan"))
    print(f"goal: bag I/O under {100 * GOAL:.0f}% of the evaluation time; worst case {100 * worst:.1f}% -> "
          f"{'met' if worst < GOAL else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
