"""``sdcpc-synth``: procedural driving videos (:mod:`sdcpc_core.data.synthetic`) written in the VSPW layout.

Example::

    sdcpc-synth OUT_DIR --train-seeds 0-39 --val-seeds 1000-1004 [--test-seeds 2000-2004]
                [--frames N] [--size HxW] [--config synth.yaml] [--workers 2] [--jpeg-quality 95]
                [--overwrite]

One video per seed, named ``synthetic_<seed:05d>``; seeds are given as ranges and lists, e.g.
``0-39``, ``0,3,5`` or ``0-3,10``, and no seed may appear in two splits. ``--config`` reads the
generator's knobs from YAML (a mapping of :class:`~sdcpc_core.data.synthetic.SyntheticConfig`
fields, or the ``synthetic.yaml`` an earlier run wrote); ``--frames`` and ``--size`` override its
``num_frames`` and ``height``/``width``. The output is what ``VSPWDataset(OUT_DIR, split)`` reads,
plus ``classes.yaml`` and ``synthetic.yaml`` (see :func:`~sdcpc_core.data.synthetic.write_vspw`).
A progress bar runs on stderr and a summary line ends the run. Bad options, a bad config file or a
non-empty ``OUT_DIR`` without ``--overwrite`` are one sentence on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from .cli import ToolParser, at_least, image_size

PROG = "sdcpc-synth"
MAX_VIDEOS = 100_000  # videos of one run, all splits together: 300 frames each at 240x480 is about 2 TB
_SEED_ITEM = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_seeds(text: str) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``; raises ``ValueError`` with a one-sentence message."""
    seeds: list[int] = []
    for item in text.split(","):
        match = _SEED_ITEM.match(item)
        if not match or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
            raise ValueError(f"seeds must be integers >= 0 or ranges LOW-HIGH (LOW <= HIGH) separated by commas, "
                             f"e.g. 0-39 or 0,3,5; got {text!r}")
        first = int(match.group(1))
        seeds_here = range(first, int(match.group(2) or first) + 1)
        if len(seeds) + len(seeds_here) > MAX_VIDEOS:  # counted before the list is built
            raise ValueError(f"{text!r} gives more than {MAX_VIDEOS} seeds; at most {MAX_VIDEOS} videos are written "
                             f"in one run")
        seeds.extend(seeds_here)
    if len(set(seeds)) != len(seeds):
        seen: set[int] = set()
        twice = next(seed for seed in seeds if seed in seen or seen.add(seed))
        raise ValueError(f"seed {twice} appears twice in {text!r}")
    return seeds


def seed_list(text: str) -> list[int]:
    """argparse type for a seed list."""
    try:
        return parse_seeds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog=PROG, description="Write procedural driving videos with Cityscapes labels in the VSPW "
                                            "layout (one video per seed).")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="output folder (created; must be empty)")
    for split in ("train", "val", "test"):
        parser.add_argument(f"--{split}-seeds", type=seed_list, default=[], metavar="SEEDS",
                            help=f"seeds of the {split} videos, e.g. 0-39 or 0,3,5")
    parser.add_argument("--frames", type=at_least(1), default=None,
                        help="frames per video (default: the config's, 300)")
    parser.add_argument("--size", type=image_size, default=None,
                        help="image size HEIGHTxWIDTH (default: the config's, 240x480)")
    parser.add_argument("--config", type=Path, default=None, help="YAML file of SyntheticConfig fields")
    parser.add_argument("--workers", type=at_least(1), default=1, help="processes generating videos (default 1)")
    parser.add_argument("--jpeg-quality", type=at_least(1), default=95, help="JPEG quality 1..100 (default 95)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR, replacing its videos")
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..data.synthetic import SyntheticConfig, keep_heap, write_vspw

    args = build_parser().parse_args(argv)
    videos = {split: getattr(args, f"{split}_seeds") for split in ("train", "val", "test")
              if getattr(args, f"{split}_seeds")}

    def fail(message: str) -> int:
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2

    if not videos:
        return fail("give the seeds of at least one split: --train-seeds, --val-seeds or --test-seeds")
    total = sum(map(len, videos.values()))
    if total > MAX_VIDEOS:
        return fail(f"the splits ask for {total} videos in all; at most {MAX_VIDEOS} are written in one run")
    if args.jpeg_quality > 100:
        return fail(f"--jpeg-quality must be in 1..100, got {args.jpeg_quality}")
    try:
        config = SyntheticConfig.from_yaml(args.config) if args.config else SyntheticConfig()
        overrides = {}
        if args.frames is not None:
            overrides["num_frames"] = args.frames
        if args.size is not None:
            overrides["height"], overrides["width"] = args.size
        config = dataclasses.replace(config, **overrides)
    except (FileNotFoundError, ValueError) as error:
        return fail(str(error))
    if args.out_dir.is_dir() and any(args.out_dir.iterdir()) and not args.overwrite:
        return fail(f"output folder {args.out_dir} is not empty; choose an empty folder or pass --overwrite")
    keep_heap()  # with --workers 1 this process renders the frames itself: twice as fast
    try:
        summary = write_vspw(args.out_dir, videos=videos, config=config, workers=args.workers,
                             overwrite=args.overwrite, jpeg_quality=args.jpeg_quality)
    except (ValueError, OSError) as error:
        return fail(str(error))
    frames = summary["frames"]
    per_split = ", ".join(f"{split} {count}" for split, count in frames.items())
    print(f"{PROG}: wrote {sum(frames.values())} frames ({per_split}; {sum(summary['dropped'].values())} dropped) "
          f"of {sum(summary['videos'].values())} videos to {args.out_dir} in {summary['seconds']:.1f} s "
          f"({summary['frames_per_second']:.1f} frames/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
