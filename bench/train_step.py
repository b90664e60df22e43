"""Benchmark: training speed (clips/s) and the share of it spent waiting for data, 0 vs 2 loader workers.

Run with::

    python bench/train_step.py                                  # synthetic_b0, crops 128x128 and 128x256
    python bench/train_step.py --crops 96x96 128x128 --steps 12 --workers 0 2 4
    python bench/train_step.py --data out/synthetic             # an existing VSPW-layout tree

What it measures: ``sdcpc_core.train.Trainer.fit`` itself (the real loader, augmentation, forward,
backward, AdamW and prototype update) with ``config/train/synthetic_b0.yaml`` on the CPU, for each
crop size and each worker count, one after the other in this process:

* ``clips/s``: clips of the timed steps / their wall time;
* ``data``: the time the training process waited for the loader / the wall time (goal: under 10%
  with 2 workers). With 0 workers every clip is read and augmented in the training process, so
  this is the whole data cost; with workers it is what prefetching did not hide.

The first ``--warmup`` steps of every case (worker start-up, first allocations) are left out: the
trainer logs every ``--warmup`` steps and only the records after the first are used.

Data: ``--data`` or, by default, a temporary synthetic set (``sdcpc_core.data.synthetic``, two
40-frame videos at 240x480, Cityscapes classes).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sdcpc_core.tools.cli import at_least, image_size  # noqa: E402
from sdcpc_core.train.config import apply_overrides, config_from_dict  # noqa: E402
from sdcpc_core.train.logs import read_log  # noqa: E402

GOAL = 0.10  # data-wait share with 2 workers
FRAMES = 40


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "config" / "train" / "synthetic_b0.yaml",
                   help="training configuration to time (default: synthetic_b0)")
    p.add_argument("--data", type=Path, default=None, help="VSPW-layout data root (default: a temporary synthetic set)")
    p.add_argument("--crops", nargs="+", type=image_size, default=[(128, 128), (128, 256)], help="crop sizes HxW")
    p.add_argument("--workers", nargs="+", type=at_least(0), default=[0, 2], help="loader worker counts (default 0 2)")
    p.add_argument("--batch", type=at_least(1), default=None, help="clips per step (default: the config's)")
    p.add_argument("--steps", type=at_least(1), default=8, help="timed steps per case (default 8)")
    p.add_argument("--warmup", type=at_least(1), default=2, help="untimed steps first (default 2)")
    p.add_argument("--threads", type=at_least(0), default=0, help="torch threads (default: the config's)")
    return p.parse_args(argv)


def _write_data(root: Path) -> str:
    """A small training set in the VSPW layout; returns what it is."""
    from sdcpc_core.data.synthetic import SyntheticConfig, write_vspw

    write_vspw(root, videos={"train": [0, 1], "val": [1000]}, config=SyntheticConfig(num_frames=FRAMES),
               progress=False)
    return f"synthetic (2 videos of {FRAMES} frames, 240x480)"


def run_case(base: dict, data_root: Path, out: Path, crop, workers: int, args) -> tuple[float, float]:
    """(clips/s, data-wait share) of the timed steps of one case."""
    from sdcpc_core.train.trainer import DistEnv, Trainer

    iterations = args.warmup * (1 + -(-args.steps // args.warmup))
    overrides = [f"data.root={data_root}", f"data.crop_size=[{crop[0]}, {crop[1]}]", f"data.num_workers={workers}",
                 f"schedule.iterations={iterations}", "schedule.warmup_iters=0", f"runtime.out_dir={out}",
                 f"runtime.log_every={args.warmup}", f"runtime.checkpoint_every={iterations}", "val.at_end=false",
                 "val.every=0", "runtime.device=cpu"]
    if args.batch:
        overrides.append(f"data.batch_size={args.batch}")
    if args.threads:
        overrides.append(f"runtime.threads={args.threads}")
    if not (data_root / "classes.yaml").is_file():
        overrides.append("data.classes=cityscapes")
    config = config_from_dict(apply_overrides(base, overrides), str(args.config))
    trainer = Trainer(config, env=DistEnv(), progress=False)
    try:
        trainer.fit()
    finally:
        trainer.close()
    records = [r for r in read_log(out / "log.jsonl") if r["kind"] == "train"][1:]
    seconds = [args.warmup * config.data.batch_size / r["clips_per_s"] for r in records]
    clips = len(records) * args.warmup * config.data.batch_size
    waited = sum(r["data_fraction"] * s for r, s in zip(records, seconds))
    return clips / sum(seconds), waited / sum(seconds)


def main(argv=None) -> int:
    import yaml

    args = _parse_args(argv)
    base = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="sdcpc-train-bench-") as tmp:
        tmp = Path(tmp)
        if args.data is None:
            data_root, what = tmp / "data", _write_data(tmp / "data")
        else:
            data_root, what = args.data, f"{args.data}"
        print(f"data: {what}; config {args.config.name}; {args.steps} timed steps after {args.warmup} per case; "
              f"torch threads {args.threads or 'config'}; {os.cpu_count()} CPUs")
        print(f"{'crop':>9} | " + " | ".join(f"{w} workers: clips/s  data" for w in args.workers))
        for crop in args.crops:
            cells = []
            for workers in args.workers:
                rate, share = run_case(base, data_root, tmp / f"run-{crop[0]}x{crop[1]}-{workers}", crop, workers, args)
                mark = "" if workers != 2 else (" ok" if share < GOAL else " (goal < 10%)")
                cells.append(f"{rate:9.2f}        {100 * share:4.1f}%{mark}")
            print(f"{crop[0]:>4}x{crop[1]:<4} | " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
